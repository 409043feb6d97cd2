"""The Open Inference Protocol (KServe V2) without a transport: server and model readiness, metadata and version
rules, the checks on a decoded inference request, and inference itself, as plain data or app.errors. The HTTP
routes (app.api.v2) and the gRPC servicer decode their wire format, call these and encode what comes back.

Each model has the input `text` (BYTES, shape [n] or [n, 1]) and, optionally, `text_pair` (as many texts: row k is
the pair (text[k], text_pair[k])), and two outputs: `label` (BYTES [n]) and `scores` (FP32 [n, labels], in the order
of the model metadata's `parameters.labels`)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from app import __version__
from app.errors import InvalidInput, ModelNotFound
from app.scores import ScoreFunction
from app.tokenizer import TextInput

if TYPE_CHECKING:
    from app.served import ServedModel
    from app.service import Service

INPUT = "text"
PAIR_INPUT = "text_pair"  # optional: a second text per row makes each row a pair (text[k], text_pair[k])
INPUTS = (INPUT, PAIR_INPUT)
OUTPUTS = ("label", "scores")
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification"]
SCORE_FUNCTIONS = frozenset(get_args(ScoreFunction))


# ---- server and models ----

def version_of(text: str | None) -> int | None:
    """A version as the protocol sends it (a string; empty or absent: none named) as the service takes it."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > 18:
        raise InvalidInput("the model version must be a positive integer")
    return int(text)


def server_live() -> dict[str, Any]:
    return {"live": True}


def server_ready(service: Service) -> tuple[bool, dict[str, Any]]:
    """Ready when every model has a serving version and the server is not draining; the detail says why not."""
    is_ready, detail = service.readiness()
    return is_ready, {"ready": is_ready, **detail}


def server_metadata() -> dict[str, Any]:
    return {"name": "bertserve", "version": __version__, "extensions": EXTENSIONS}


def model_ready(service: Service, name: str, version: int | None) -> dict[str, Any]:
    """`ready` True when the model (version) can infer now, else False with the `reason`; ModelNotFound when the
    server does not know the model or that version."""
    states = service.version_states(name)
    if version is not None and version not in states:
        raise ModelNotFound(f"model {name!r} version {version} is not served; versions: {sorted(states)}")
    answer: dict[str, Any] = {"name": name, "version": None if version is None else str(version), "ready": True}
    chosen = {version: states[version]} if version is not None else states
    if service.draining:
        reason = "the server is draining"
    elif version is None and not service.answers_unnamed(name) and "ready" in chosen.values():
        reason = f"no traffic table in force, so requests naming no version are refused (see GET /models/{name})"
    elif "ready" in chosen.values():
        return answer
    else:
        reason = "; ".join(
            f"version {v} " + ("failed to load" if state == "failed" else f"is {state}") for v, state in chosen.items()
        )
    return answer | {"ready": False, "reason": f"model {name!r} is not ready: {reason}"}


def model_metadata(service: Service, name: str, version: int | None) -> dict[str, Any]:
    """The model's inputs, outputs, labels and ready versions (the one named, else all); ModelNotFound when none."""
    if version is None:
        versions = [v for v, state in service.version_states(name).items() if state == "ready"]
        if not versions:
            raise ModelNotFound(f"model {name!r} has no ready version")
        model = service.resolve(name, None)
    else:
        model = service.resolve(name, version)
        versions = [model.version]
    labels = model.config.labels
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": PAIR_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
        ],
        "parameters": {"labels": labels, "max_length": model.max_length},
    }


def require_model(service: Service, name: str, version: int | None) -> None:
    """ModelNotFound for a model (version) the server does not serve, before its request is looked at; while the
    server is still loading this says nothing (the request waits for the load)."""
    if not service.loading:
        service.resolve(name, version)


# ---- an inference request, decoded by the transport ----

@dataclass
class Wanted:
    """One output to return and how."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass
class Infer:
    id: str | None
    texts: list[TextInput]  # texts, or (text, text_pair) pairs
    outputs: list[Wanted]
    truncate: bool
    function: str | None  # None: the model head's own
    timeout_us: int | None


def decode_bytes(raw: bytes, name: str) -> list[str]:
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


def encode_bytes(values: list[str]) -> bytes:
    """The reverse of decode_bytes."""
    parts = []
    for value in values:
        raw = value.encode()
        parts += (struct.pack("<I", len(raw)), raw)
    return b"".join(parts)


def check_texts(name: str, datatype: str, shape: list[int], texts: list[Any]) -> list[str]:
    """One input's texts, checked against its datatype and shape ([n] or [n, 1]): strings, none empty."""
    if datatype != "BYTES":
        raise InvalidInput(f"input {name!r} has datatype {datatype}; it takes BYTES (UTF-8 texts)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"input {name!r} data[{i}]: BYTES elements are sent as JSON strings")
    if len(shape) == 2 and shape[1] != 1:
        raise InvalidInput(f"input {name!r} has shape {shape}; send [n] or [n, 1] texts")
    if math.prod(shape) != len(texts):
        raise InvalidInput(f"input {name!r} has shape {shape} ({math.prod(shape)} elements) but {len(texts)} given")
    if not texts:
        raise InvalidInput(f"input {name!r} holds no text")
    for i, text in enumerate(texts):
        if not text:
            raise InvalidInput(f"input {name!r} element {i} is an empty text")
    return texts


def check_input_name(name: str, model: str, seen: dict[str, Any]) -> None:
    """An input the model takes, given once."""
    if name not in INPUTS:
        raise InvalidInput(f"unexpected input {name!r} for model {model!r}: it takes {INPUT!r} "
                           f"(and {PAIR_INPUT!r} for text pairs)")
    if name in seen:
        raise InvalidInput(f"input {name!r} is given twice")


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}parameters.{key} must be true or false")
    return value


def request(columns: dict[str, list[str]], parameters: dict[str, Any] | None,
            outputs: list[tuple[str, dict[str, Any]]] | None, id: str | None, model: str) -> Infer:
    """The request from its decoded inputs (name -> texts, each checked with check_texts), its parameters and the
    outputs asked for (name and parameters; None: both), as plain Python values."""
    for name in columns:
        check_input_name(name, model, {})
    if INPUT not in columns:
        raise InvalidInput(f"input {INPUT!r} is missing ({PAIR_INPUT!r} only pairs its texts)")
    texts: list[TextInput] = columns[INPUT]  # type: ignore[assignment]
    if PAIR_INPUT in columns:  # row k is the pair (text[k], text_pair[k])
        second = columns[PAIR_INPUT]
        if len(second) != len(texts):
            raise InvalidInput(f"input {PAIR_INPUT!r} has {len(second)} elements and {INPUT!r} {len(texts)}: "
                               "pairs need as many of each")
        texts = list(zip(texts, second))

    params = parameters or {}
    binary_default = _flag(params, "binary_data_output", False, "")
    wanted: list[Wanted] = []
    for name, out_params in outputs if outputs is not None else [(name, {}) for name in OUTPUTS]:
        if name not in OUTPUTS:
            raise InvalidInput(f"unexpected output {name!r} for model {model!r}: it has {', '.join(OUTPUTS)}")
        if name in (w.name for w in wanted):
            raise InvalidInput(f"output {name!r} is asked for twice")
        where = f"output {name!r}: "
        if "shared_memory_region" in out_params:
            raise InvalidInput("shared memory is not supported: outputs come back in the response")
        classification = out_params.get("classification")
        if classification is not None:
            if name != "scores":
                raise InvalidInput(f"{where}classification applies to 'scores' only")
            if isinstance(classification, bool) or not isinstance(classification, int) or classification < 1:
                raise InvalidInput(f"{where}parameters.classification must be a positive integer")
        wanted.append(Wanted(name, _flag(out_params, "binary_data", binary_default, where), classification))

    # Absent: the model head's own function; null is no function (422), unlike /predict's null.
    function = params.get("function_to_apply")
    # (a list or object is not hashable: checked as a str first)
    if "function_to_apply" in params and (not isinstance(function, str) or function not in SCORE_FUNCTIONS):
        raise InvalidInput(f"parameters.function_to_apply must be one of {sorted(SCORE_FUNCTIONS)}")
    timeout_us = params.get("timeout")
    if timeout_us is not None and (isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 1):
        raise InvalidInput("parameters.timeout must be a positive number of microseconds")
    return Infer(id, texts, wanted, _flag(params, "truncate", True, ""), function, timeout_us)


# ---- inference ----

@dataclass
class Output:
    name: str
    datatype: str  # BYTES or FP32
    shape: list[int]
    values: list[str] | np.ndarray  # BYTES: the strings; FP32: a C-contiguous float32 array of that shape
    binary: bool  # asked for as binary data (HTTP's binary tensor extension)


@dataclass
class Inferred:
    model: ServedModel  # the version that answered
    id: str | None
    outputs: list[Output]  # encoded by each transport's codec (app.api.v2.codec, app.api.grpc.codec)


def outputs(model: ServedModel, scores: np.ndarray, wanted: list[Wanted]) -> list[Output]:
    """The outputs asked for, from the scores [n, labels]."""
    labels = model.config.labels
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    n = len(scores)
    result = []
    for want in wanted:
        if want.name == "label":
            result.append(Output("label", "BYTES", [n], [labels[i] for i in scores.argmax(axis=-1)], want.binary))
        elif want.classification is not None:  # Triton's classification extension: k best, "score:index:label"
            k = min(want.classification, len(labels))
            top = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
            values = [f"{row[i]:f}:{i}:{labels[i]}" for row, order in zip(scores, top) for i in order]
            result.append(Output(want.name, "BYTES", [n, k], values, want.binary))
        else:
            result.append(Output(want.name, "FP32", [n, len(labels)], scores, want.binary))
    return result


async def infer(service: Service, name: str, version: int | None, req: Infer, routing_key: str | None = None,
                timeout_ms: float | None = None) -> Inferred:
    """Classify the request's texts with the model (version); `timeout_ms` (a transport's own deadline, as gRPC's)
    bounds the request's `timeout` further. Awaited in the caller's task, so the caller may cancel it."""
    asked_ms = None if req.timeout_us is None else req.timeout_us / 1000
    if timeout_ms is not None:
        asked_ms = timeout_ms if asked_ms is None else min(asked_ms, timeout_ms)
    model, scores = await service.classify(
        req.texts, model=name, version=version, truncate=req.truncate, function=req.function,  # type: ignore[arg-type]
        timeout_s=service.timeout_s(asked_ms), routing_key=routing_key,
    )
    return Inferred(model, req.id, outputs(model, scores, req.outputs))
