"""Open Inference Protocol (KServe V2) routes: server and model metadata, readiness, inference. Parsing and shaping
in the codec, every decision in app.service."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from app import __version__
from app.api.errors import error_response
from app.api.schemas import error_responses
from app.api.transport import Tracked, json_response, read_body, tracked, until_disconnect
from app.api.v2.codec import CONTENT_TYPES, encode_response, parse_infer
from app.api.v2.schemas import (
    HEADER_LENGTH, INFER_DESCRIPTION, INFER_OPENAPI, INPUT, InferResponse, ModelMetadata, ModelReady,
    ServerLive, ServerMetadata, ServerReady,
)
from app.errors import ModelNotFound
from app.served import ServedModel
from app.service import Service

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification"]
_ERRORS = error_responses(401, 404, 422, 500)
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504),
    200: {
        "description": "JSON, or (binary outputs) the JSON header then the binary outputs",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}
Version = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$", description="Model version (a positive integer).")]


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
    elif version is None and name not in service.router.served and "ready" in chosen.values():
        problem = f"no traffic table in force, so requests naming no version are refused (see GET /models/{name})"
    elif "ready" in chosen.values():
        return json_response({"name": name, "version": version, "ready": True})
    else:
        problem = "; ".join(
            f"version {v} " + ("failed to load" if state == "failed" else f"is {state}") for v, state in chosen.items()
        )
    return error_response(400, f"model {name!r} is not ready: {problem}", "unhealthy")


@router.get("/models/{name}/ready", summary="Model ready: 200 if it can infer now, else 400 (404: unknown)",
            response_model=ModelReady, responses=error_responses(400, 401, 404, 422, 500))
async def model_ready(name: str, request: Request) -> Response:
    return _model_ready(request.app.state.service, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready (400: not ready, 404: unknown)",
            response_model=ModelReady, responses=error_responses(400, 401, 404, 422, 500))
async def model_version_ready(name: str, version: Version, request: Request) -> Response:
    return _model_ready(request.app.state.service, name, version)


# ---- inference ----

async def _infer(request: Request, name: str, version: int | None) -> Response:
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _infer_tracked(request, service, t, name, version))


async def _infer_tracked(request: Request, service: Service, tracking: Tracked, name: str, version: int | None):
    tracking.model = name
    body = await read_body(request, service.settings.max_body_bytes, CONTENT_TYPES)
    if not service.loading:  # an unknown model is 404 before its request is looked at (while loading: wait)
        service.resolve(name, version)
    parsed = parse_infer(body, request.headers.get(HEADER_LENGTH), name)
    asked_ms = None if parsed.timeout_us is None else parsed.timeout_us / 1000
    model, scores = await until_disconnect(
        request,
        service.classify(parsed.texts, model=name, version=version, truncate=parsed.truncate,
                         function=parsed.function, timeout_s=service.timeout_s(asked_ms),  # type: ignore[arg-type]
                         routing_key=request.headers.get("x-routing-key")),
    )
    return encode_response(model, scores, parsed)


@router.post("/models/{name}/infer", summary="Inference (the highest ready version)", response_model=InferResponse,
             responses=_INFER_RESPONSES, openapi_extra=INFER_OPENAPI,
             description=INFER_DESCRIPTION)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference with one model version",
             response_model=InferResponse, responses=_INFER_RESPONSES,
             openapi_extra=INFER_OPENAPI, description=INFER_DESCRIPTION)
async def infer_version(name: str, version: Version, request: Request) -> Response:
    return await _infer(request, name, int(version))
