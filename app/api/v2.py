"""Open Inference Protocol (KServe V2 / Triton HTTP/REST): a second transport over the same service and batchers
as /predict. Parsing and shaping here, every decision in app.service.

Each model has one input, `text` (BYTES, shape [n] or [n, 1]), and two outputs: `label` (BYTES [n], the best
label) and `scores` (FP32 [n, labels], in the order of the model's labels, given in the model metadata).
Triton's extensions that `tritonclient` uses are supported:
- binary tensor data: `Inference-Header-Content-Length: N` (the first N bytes are the JSON header, then the
  binary inputs, each `parameters.binary_data_size` bytes; BYTES elements are a 4-byte little-endian length and
  the bytes); outputs asked for with `parameters.binary_data: true` (or request `parameters.binary_data_output`)
  come back the same way;
- classification: `parameters.classification: k` on `scores` returns the k best as "score:index:label" strings.
Request parameters: `timeout` (microseconds, as tritonclient sends it), `truncate` (bool, default true),
`function_to_apply` ("softmax", "sigmoid", "none": the `scores` function; the label is the same whatever).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.responses import Response

from app import __version__
from app.api.errors import error_response, validation_message
from app.api.schemas import ErrorResponse
from app.api.transport import Tracked, json_response, read_body, tracked, until_disconnect
from app.errors import InvalidInput, ModelNotFound
from app.served import ServedModel
from app.service import Service

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification"]
INPUT = "text"
OUTPUTS = ("label", "scores")
HEADER_LENGTH = "Inference-Header-Content-Length"
_CONTENT_TYPES = {"", "application/json", "application/octet-stream"}
_SCORE_FUNCTIONS = {"softmax", "sigmoid", "none"}

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 404, 422, 500)}
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 415, 422, 429, 500, 503, 504)
}
Version = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$", description="Model version (a positive integer).")]


# ---- wire schemas ----


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool
    status: str
    models: dict[str, Any]


class ModelReady(BaseModel):
    name: str
    version: str | None = None
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(description="labels: the order of the `scores` columns; max_length.")


class RequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(json_schema_extra={"enum": [INPUT]})
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(min_length=1, max_length=2)
    datatype: StrictStr = Field(json_schema_extra={"enum": ["BYTES"]})
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_size: bytes of this input in the binary part (binary tensor extension)."
    )
    data: list[Any] | None = Field(
        None, description="The texts, row-major (flat, or nested as the shape).",
        json_schema_extra={"items": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}},
    )


class RequestOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(json_schema_extra={"enum": list(OUTPUTS)})
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data (bool): return it in the binary part; classification (int, `scores` only)."
    )


class InferRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"id": "42", "inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES",
             "data": ["This medicine worked wonders.", "Terrible side effects."]}]}]},
    )

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(
        None, description="binary_data_output (bool), timeout (microseconds), truncate (bool), "
        "function_to_apply (softmax, sigmoid or none)."
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its $defs put in place (the request body's schema sits outside components)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


# The Inference-Header-Content-Length header is described in words, not as a parameter: whether a value is right
# depends on the body, which a schema cannot say (and a fuzzer would send any).
_INFER_DESCRIPTION = (
    "Classify the texts of the BYTES input `text` (shape [n] or [n, 1]); outputs `label` (BYTES [n]) and "
    "`scores` (FP32 [n, labels], labels in the order of the model metadata's `parameters.labels`).\n\n"
    f"Binary tensor extension (what tritonclient sends by default): with the header `{HEADER_LENGTH}: N` the "
    "first N bytes of the body are the JSON request and the rest the binary inputs, each "
    "`parameters.binary_data_size` bytes (BYTES elements: a 4-byte little-endian length, then UTF-8 bytes). "
    "Outputs asked for with `parameters.binary_data: true` (or request `parameters.binary_data_output: true`) "
    f"come back the same way, the JSON part's length in the answer's `{HEADER_LENGTH}` header."
)
_INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        # The binary form (application/octet-stream with the header above) is described in words only: any
        # bytes would match a binary schema, while only JSON + well-formed tensors are right.
        "content": {"application/json": {"schema": _inline(InferRequest.model_json_schema())}},
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_INFER_ERRORS,
    200: {
        "description": "JSON, or (binary outputs) the JSON header then the binary outputs",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}


# ---- health and metadata ----


@router.get("", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> Response:
    return json_response({"name": "bertserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/", include_in_schema=False)
async def server_metadata_slash() -> Response:
    return await server_metadata()


@router.get("/health/live", summary="Server live", response_model=ServerLive)
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="Server ready: every model loaded and warmed (503 otherwise)",
            response_model=ServerReady, responses={503: {"model": ServerReady}})
async def ready(request: Request) -> Response:
    is_ready, detail = request.app.state.service.readiness()
    return json_response({"ready": is_ready, **detail}, status_code=200 if is_ready else 503)


def _versions(service: Service, name: str) -> list[int]:
    """Ready versions of a model, or ModelNotFound."""
    versions = [v for v, state in service.version_states(name).items() if state == "ready"]
    if not versions:
        raise ModelNotFound(f"model {name!r} has no ready version")
    return versions


def _metadata(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    labels = model.config.labels
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
        ],
        "parameters": {"labels": labels, "max_length": model.max_length},
    }


@router.get("/models/{name}", summary="Model metadata (the highest ready version)", response_model=ModelMetadata,
            responses=_ERRORS)
async def model_metadata(name: str, request: Request) -> Response:
    service: Service = request.app.state.service
    versions = _versions(service, name)
    return json_response(_metadata(service.resolve(name, None), versions))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", response_model=ModelMetadata,
            responses=_ERRORS)
async def model_version_metadata(name: str, version: Version, request: Request) -> Response:
    model = request.app.state.service.resolve(name, int(version))
    return json_response(_metadata(model, [model.version]))


def _model_ready(service: Service, name: str, version: str | None) -> Response:
    """200 when ready; 404 when the server does not know the model (version); 400 when it is not ready."""
    states = service.version_states(name)
    if version is not None and int(version) not in states:
        raise ModelNotFound(f"model {name!r} version {version} is not served; versions: {sorted(states)}")
    chosen = {int(version): states[int(version)]} if version is not None else states
    if service.draining:
        problem = "the server is draining"
    elif "ready" in chosen.values():
        return json_response({"name": name, "version": version, "ready": True})
    else:
        problem = "; ".join(
            f"version {v} " + ("failed to load" if state == "failed" else f"is {state}") for v, state in chosen.items()
        )
    return error_response(400, f"model {name!r} is not ready: {problem}", "unhealthy")


@router.get("/models/{name}/ready", summary="Model ready: 200 if it can infer now, else 400 (404: unknown)",
            response_model=ModelReady, responses={**_ERRORS, 400: {"model": ErrorResponse}})
async def model_ready(name: str, request: Request) -> Response:
    return _model_ready(request.app.state.service, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready (400: not ready, 404: unknown)",
            response_model=ModelReady, responses={**_ERRORS, 400: {"model": ErrorResponse}})
async def model_version_ready(name: str, version: Version, request: Request) -> Response:
    return _model_ready(request.app.state.service, name, version)


# ---- inference ----


@dataclass
class Wanted:
    """One output to return and how."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass
class Parsed:
    id: str | None
    texts: list[str]
    outputs: list[Wanted]
    truncate: bool
    function: str
    timeout_us: int | None


def _header_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > size:
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count within the body ({size} bytes); got {value!r}")
    return int(value)


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major elements of flat data, or of data nested one level (shape [n, 1]); deeper nesting is refused."""
    flat: list[Any] = []
    for i, item in enumerate(data):
        if not isinstance(item, list):
            flat.append(item)
        elif any(isinstance(inner, list) for inner in item):
            raise InvalidInput(f"input {INPUT!r} data[{i}]: nested deeper than the shape [n, 1] allows")
        else:
            flat.extend(item)
    return flat


def _decode_bytes_tensor(raw: bytes) -> list[str]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length then its bytes (UTF-8 here)."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {INPUT!r}: binary data ends inside the length of element {len(texts)}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {INPUT!r}: element {len(texts)} claims {length} bytes, past the binary data")
        try:
            texts.append(raw[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {INPUT!r}: element {len(texts)} is not valid UTF-8") from None
        offset += length
    return texts


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}parameters.{key} must be true or false")
    return value


def parse_infer(body: bytes, header_length: str | None, model: str) -> Parsed:
    """The request, checked against the model's one input and two outputs."""
    split = _header_length(header_length, len(body))
    header, binary = (body, b"") if split is None else (body[:split], body[split:])
    try:
        req = InferRequest.model_validate(orjson.loads(header))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request JSON is malformed: {exc}") from None
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None
    params = req.parameters or {}

    [tensor] = req.inputs
    if tensor.name != INPUT:
        raise InvalidInput(f"unexpected input {tensor.name!r} for model {model!r}: it takes one input, {INPUT!r}")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {INPUT!r} has datatype {tensor.datatype}; it takes BYTES (UTF-8 texts)")
    tensor_params = tensor.parameters or {}
    if "shared_memory_region" in tensor_params:
        raise InvalidInput("shared memory is not supported: send the data in the request")
    size = tensor_params.get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise InvalidInput(f"input {INPUT!r} has both data and parameters.binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {INPUT!r}: parameters.binary_data_size must be a byte count")
        if size != len(binary):
            raise InvalidInput(
                f"input {INPUT!r} declares {size} bytes of binary data; the body has {len(binary)} after the "
                f"{split if split is not None else len(body)}-byte JSON header"
                + ("" if split is not None else f" (send {HEADER_LENGTH})")
            )
        texts = _decode_bytes_tensor(binary)
    else:
        if binary:
            raise InvalidInput(f"{len(binary)} bytes of binary data follow the JSON header but no input claims them")
        if tensor.data is None:
            raise InvalidInput(f"input {INPUT!r} has no data (nor parameters.binary_data_size)")
        texts = _flatten(tensor.data)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"input {INPUT!r} data[{i}]: BYTES elements are sent as JSON strings")
    shape = tensor.shape
    if len(shape) == 2 and shape[1] != 1:
        raise InvalidInput(f"input {INPUT!r} has shape {shape}; send [n] or [n, 1] texts")
    if math.prod(shape) != len(texts):
        raise InvalidInput(f"input {INPUT!r} has shape {shape} ({math.prod(shape)} elements) but {len(texts)} given")
    if not texts:
        raise InvalidInput(f"input {INPUT!r} holds no text")
    for i, text in enumerate(texts):
        if not text:
            raise InvalidInput(f"input {INPUT!r} element {i} is an empty text")

    binary_default = _flag(params, "binary_data_output", False, "")
    outputs = []
    for out in req.outputs or [RequestOutput(name=name) for name in OUTPUTS]:
        if out.name not in OUTPUTS:
            raise InvalidInput(f"unexpected output {out.name!r} for model {model!r}: it has {', '.join(OUTPUTS)}")
        if out.name in (w.name for w in outputs):
            raise InvalidInput(f"output {out.name!r} is asked for twice")
        out_params = out.parameters or {}
        where = f"output {out.name!r}: "
        if "shared_memory_region" in out_params:
            raise InvalidInput("shared memory is not supported: outputs come back in the response")
        classification = out_params.get("classification")
        if classification is not None:
            if out.name != "scores":
                raise InvalidInput(f"{where}classification applies to 'scores' only")
            if isinstance(classification, bool) or not isinstance(classification, int) or classification < 1:
                raise InvalidInput(f"{where}parameters.classification must be a positive integer")
        outputs.append(Wanted(out.name, _flag(out_params, "binary_data", binary_default, where), classification))

    function = params.get("function_to_apply", "softmax")
    if function not in _SCORE_FUNCTIONS:
        raise InvalidInput(f"parameters.function_to_apply must be one of {sorted(_SCORE_FUNCTIONS)}")
    timeout_us = params.get("timeout")
    if timeout_us is not None and (isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 1):
        raise InvalidInput("parameters.timeout must be a positive number of microseconds")
    return Parsed(req.id, texts, outputs, _flag(params, "truncate", True, ""), function, timeout_us)


def _bytes_tensor(values: list[str]) -> bytes:
    parts = []
    for value in values:
        raw = value.encode()
        parts += (struct.pack("<I", len(raw)), raw)
    return b"".join(parts)


def encode_response(model: ServedModel, scores: np.ndarray, parsed: Parsed) -> Response:
    labels = model.config.labels
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    n = len(scores)
    outputs, buffers = [], []
    for wanted in parsed.outputs:
        if wanted.name == "label":
            datatype, shape, values = "BYTES", [n], [labels[i] for i in scores.argmax(axis=-1)]
        elif wanted.classification is not None:  # Triton's classification extension: k best, "score:index:label"
            k = min(wanted.classification, len(labels))
            top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
            values = [f"{row[i]:f}:{i}:{labels[i]}" for row, order in zip(scores, top) for i in order]
            datatype, shape = "BYTES", [n, k]
        else:
            datatype, shape, values = "FP32", [n, len(labels)], None
        output: dict[str, Any] = {"name": wanted.name, "datatype": datatype, "shape": shape}
        if wanted.binary:
            raw = _bytes_tensor(values) if values is not None else scores.astype("<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            output["data"] = values if values is not None else scores.ravel().tolist()
        outputs.append(output)
    payload: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if parsed.id is not None:
        payload["id"] = parsed.id
    payload["outputs"] = outputs
    headers = {"X-Model-Name": model.name, "X-Model-Version": str(model.version)}
    if not buffers:
        return json_response(payload, headers=headers)
    header = orjson.dumps(payload)
    headers[HEADER_LENGTH] = str(len(header))
    return Response(header + b"".join(buffers), media_type="application/octet-stream", headers=headers)


async def _infer(request: Request, name: str, version: int | None) -> Response:
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _infer_tracked(request, service, t, name, version))


async def _infer_tracked(request: Request, service: Service, tracking: Tracked, name: str, version: int | None):
    settings = service.settings
    tracking.model = name
    body = await read_body(request, settings.max_body_bytes, _CONTENT_TYPES)
    if not service.loading:  # an unknown model is 404 before its request is looked at (while loading: wait)
        service.resolve(name, version)
    parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), name)
    timeout_ms = settings.request_timeout_ms if parsed.timeout_us is None else parsed.timeout_us / 1000
    timeout_ms = min(timeout_ms, settings.max_request_timeout_ms)
    model, scores = await until_disconnect(
        request,
        service.classify(parsed.texts, model=name, version=version, truncate=parsed.truncate,
                         function=parsed.function, timeout_s=timeout_ms / 1000),  # type: ignore[arg-type]
    )
    return encode_response(model, scores, parsed)


@router.post("/models/{name}/infer", summary="Inference (the highest ready version)", response_model=InferResponse,
             responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI,
             description=_INFER_DESCRIPTION)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference with one model version",
             response_model=InferResponse, responses=_INFER_RESPONSES,
             openapi_extra=_INFER_OPENAPI, description=_INFER_DESCRIPTION)
async def infer_version(name: str, version: Version, request: Request) -> Response:
    return await _infer(request, name, int(version))
