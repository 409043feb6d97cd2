"""Open Inference Protocol (KServe V2) codec, HTTP's JSON form: a request body (JSON, or JSON then binary tensors)
decoded into app.protocol.v2's request (whose rules check it), and an answer encoded as the outputs asked for, as
bytes. No HTTP here: the route builds the response."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from app.api.v2.schemas import HEADER_LENGTH, InferRequest, RequestInput
from app.errors import InvalidInput, validation_message
from app.protocol import v2

CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})


def _header_length(value: str | None, size: int) -> int | None:
    if value is None:
        return None
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > size:  # str.isdigit() alone takes "²"
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count within the body ({size} bytes)")
    return int(digits)


def _flatten(data: list[Any], name: str) -> list[Any]:
    """Row-major elements of flat data, or of data nested one level (shape [n, 1]); deeper nesting is refused."""
    flat: list[Any] = []
    for i, item in enumerate(data):
        if not isinstance(item, list):
            flat.append(item)
        elif any(isinstance(inner, list) for inner in item):
            raise InvalidInput(f"input {name!r} data[{i}]: nested deeper than the shape [n, 1] allows")
        else:
            flat.extend(item)
    return flat


def _column(tensor: RequestInput, binary: bytes, offset: int, split: int | None, size_json: int
            ) -> tuple[list[str], int]:
    """One BYTES input's texts, and where the next input's binary data starts (binary inputs take consecutive
    parts of the binary data, in the order of `inputs`)."""
    name = tensor.name
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"input {name!r} has datatype {tensor.datatype}; it takes BYTES (UTF-8 texts)")
    tensor_params = tensor.parameters or {}
    if "shared_memory_region" in tensor_params:
        raise InvalidInput("shared memory is not supported: send the data in the request")
    size = tensor_params.get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise InvalidInput(f"input {name!r} has both data and parameters.binary_data_size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: parameters.binary_data_size must be a byte count")
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r} declares {size} bytes of binary data; the body has {len(binary) - offset} "
                f"{'left ' if offset else ''}after the {split if split is not None else size_json}-byte JSON header"
                + ("" if split is not None else f" (send {HEADER_LENGTH})")
            )
        texts = v2.decode_bytes(binary[offset:offset + size], name)
        offset += size
    else:
        if tensor.data is None:
            raise InvalidInput(f"input {name!r} has no data (nor parameters.binary_data_size)")
        texts = _flatten(tensor.data, name)
    return v2.check_texts(name, tensor.datatype, tensor.shape, texts), offset


def _check_names(req: InferRequest, model: str, version: int | None) -> None:
    """`model_name` and `model_version` in the body (the kserve SDK sends `model_name`): accepted when absent or
    equal to the path's, refused (422) when they would change what the path asks for."""
    if req.model_name and req.model_name != model:
        raise InvalidInput(f"model_name {req.model_name!r} in the body differs from the model of the path "
                           f"({model!r}): leave it out or make it the same")
    if req.model_version:
        named = v2.version_of(req.model_version)  # a positive integer, as the path's
        if version is None:
            raise InvalidInput(f"model_version {req.model_version!r} in the body names a version the path does not: "
                               f"send it to /v2/models/{model}/versions/{named}/infer")
        if named != version:
            raise InvalidInput(f"model_version {req.model_version!r} in the body differs from the version of the "
                               f"path ({version}): leave it out or make it the same")


def parse_infer(body: bytes, header_length: str | None, model: str, version: int | None = None) -> v2.Infer:
    """The request, checked against the model's inputs (`text`, and `text_pair` for pairs) and two outputs, and
    against the path's model and `version` (None: the path names none) when the body names them too."""
    split = _header_length(header_length, len(body))
    header, binary = (body, b"") if split is None else (body[:split], body[split:])
    try:
        req = InferRequest.model_validate(orjson.loads(header))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request JSON is malformed: {exc}") from None
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors())) from None
    _check_names(req, model, version)

    columns: dict[str, list[str]] = {}
    offset = 0
    for tensor in req.inputs:
        v2.check_input_name(tensor.name, model, columns)
        columns[tensor.name], offset = _column(tensor, binary, offset, split, len(body))
    if offset < len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the JSON header but no input "
                           "claims them")
    outputs = None if req.outputs is None else [(out.name, out.parameters or {}) for out in req.outputs]
    return v2.request(columns, req.parameters, outputs, req.id, model)


def encode_response(inferred: v2.Inferred) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON part when binary outputs follow it (None: JSON only)."""
    outputs, buffers = [], []
    for out in inferred.outputs:
        output: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            raw = v2.encode_bytes(out.values) if isinstance(out.values, list) else out.values.astype("<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        else:
            output["data"] = out.values if isinstance(out.values, list) else out.values.ravel().tolist()
        outputs.append(output)
    payload: dict[str, Any] = {"model_name": inferred.model.name, "model_version": str(inferred.model.version)}
    if inferred.id is not None:
        payload["id"] = inferred.id
    payload["parameters"] = {"truncated": inferred.truncated}  # texts the model read only in part
    payload["outputs"] = outputs
    header = orjson.dumps(payload)
    return (header, None) if not buffers else (header + b"".join(buffers), len(header))
