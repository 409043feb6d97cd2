"""Open Inference Protocol (KServe V2) codec: a request body (JSON, or JSON then binary tensors) checked against
the model's inputs (texts, and a second text per row for pairs) and two outputs, and scores encoded as the outputs
asked for. No routing here."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from app.api.transport import json_response, model_headers
from app.api.v2.schemas import (
    HEADER_LENGTH,
    INPUT,
    INPUTS,
    OUTPUTS,
    PAIR_INPUT,
    InferRequest,
    RequestInput,
    RequestOutput,
)
from app.errors import InvalidInput, validation_message
from app.scores import ScoreFunction
from app.served import ServedModel
from app.tokenizer import TextInput

CONTENT_TYPES = frozenset({"", "application/json", "application/octet-stream"})
SCORE_FUNCTIONS = frozenset(get_args(ScoreFunction))


@dataclass
class Wanted:
    """One output to return and how."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass
class Parsed:
    id: str | None
    texts: list[TextInput]  # texts, or (text, text_pair) pairs
    outputs: list[Wanted]
    truncate: bool
    function: str | None  # None: the model head's own
    timeout_us: int | None


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


def _decode_bytes_tensor(raw: bytes, name: str) -> list[str]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length then its bytes (UTF-8 here)."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: binary data ends inside the length of element {len(texts)}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"input {name!r}: element {len(texts)} claims {length} bytes, past the binary data")
        try:
            texts.append(raw[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"input {name!r}: element {len(texts)} is not valid UTF-8") from None
        offset += length
    return texts


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}parameters.{key} must be true or false")
    return value


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
        texts = _decode_bytes_tensor(binary[offset:offset + size], name)
        offset += size
    else:
        if tensor.data is None:
            raise InvalidInput(f"input {name!r} has no data (nor parameters.binary_data_size)")
        texts = _flatten(tensor.data, name)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidInput(f"input {name!r} data[{i}]: BYTES elements are sent as JSON strings")
    shape = tensor.shape
    if len(shape) == 2 and shape[1] != 1:
        raise InvalidInput(f"input {name!r} has shape {shape}; send [n] or [n, 1] texts")
    if math.prod(shape) != len(texts):
        raise InvalidInput(f"input {name!r} has shape {shape} ({math.prod(shape)} elements) but {len(texts)} given")
    if not texts:
        raise InvalidInput(f"input {name!r} holds no text")
    for i, text in enumerate(texts):
        if not text:
            raise InvalidInput(f"input {name!r} element {i} is an empty text")
    return texts, offset


def parse_infer(body: bytes, header_length: str | None, model: str) -> Parsed:
    """The request, checked against the model's inputs (`text`, and `text_pair` for pairs) and two outputs."""
    split = _header_length(header_length, len(body))
    header, binary = (body, b"") if split is None else (body[:split], body[split:])
    try:
        req = InferRequest.model_validate(orjson.loads(header))
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request JSON is malformed: {exc}") from None
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors())) from None
    params = req.parameters or {}

    columns: dict[str, list[str]] = {}
    offset = 0
    for tensor in req.inputs:
        if tensor.name not in INPUTS:
            raise InvalidInput(f"unexpected input {tensor.name!r} for model {model!r}: it takes {INPUT!r} "
                               f"(and {PAIR_INPUT!r} for text pairs)")
        if tensor.name in columns:
            raise InvalidInput(f"input {tensor.name!r} is given twice")
        columns[tensor.name], offset = _column(tensor, binary, offset, split, len(body))
    if offset < len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the JSON header but no input "
                           "claims them")
    if INPUT not in columns:
        raise InvalidInput(f"input {INPUT!r} is missing ({PAIR_INPUT!r} only pairs its texts)")
    texts: list[TextInput] = columns[INPUT]  # type: ignore[assignment]
    if PAIR_INPUT in columns:  # row k is the pair (text[k], text_pair[k])
        second = columns[PAIR_INPUT]
        if len(second) != len(texts):
            raise InvalidInput(f"input {PAIR_INPUT!r} has {len(second)} elements and {INPUT!r} {len(texts)}: "
                               "pairs need as many of each")
        texts = list(zip(texts, second))

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

    # Absent: the model head's own function; null is no function (422), unlike /predict's null.
    function = params.get("function_to_apply")
    # (a list or object is not hashable: checked as a str first)
    if "function_to_apply" in params and (not isinstance(function, str) or function not in SCORE_FUNCTIONS):
        raise InvalidInput(f"parameters.function_to_apply must be one of {sorted(SCORE_FUNCTIONS)}")
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
    headers = model_headers(model)
    if not buffers:
        return json_response(payload, headers=headers)
    header = orjson.dumps(payload)
    headers[HEADER_LENGTH] = str(len(header))
    return Response(header + b"".join(buffers), media_type="application/octet-stream", headers=headers)

