"""The Open Inference Protocol (KServe V2) without a transport: server and model readiness, metadata and version
rules, the checks on a decoded inference request, and inference itself, as plain data or app.errors. The HTTP
routes (app.api.v2) and the gRPC servicer decode their wire format, call these and encode what comes back.

Each model has the input `text` (BYTES, shape [n] or [n, 1]) and, optionally, `text_pair` (as many texts: row k is
the pair (text[k], text_pair[k])), and two outputs: `label` (BYTES [n]) and `scores` (FP32 [n, labels], in the order
of the model metadata's `parameters.labels`).

Zero-shot classification (app.zeroshot; a model with an entailment label, whose metadata lists the input): the
BYTES input `candidate_labels` ([k]: the labels every text is scored against; not with `text_pair`), the request
parameters `hypothesis_template` (string) and `multi_label` (bool); outputs, each row a text's labels best first:
`label` (BYTES [n], the best), `labels` (BYTES [n, k]) and `scores` (FP32 [n, k], the labels' scores in that order;
with the classification extension, "score:index:label", index into `candidate_labels`).

Token classification (app.tokens; a model whose task is token-classification, as its metadata says): the input
`text` only; one output `entities` (BYTES [n]: per text, its entities as one JSON array, the shape /predict answers:
per token `entity, score, index, word, start, end` with aggregation_strategy none, else `entity_group, score,
word, start, end`); request parameters `aggregation_strategy` (string, default simple), `ignore_labels` (string,
comma-separated, default "O"), `stride` (int, default the model metadata's `default_stride`) and `truncate` (bool,
default false for a token model: a long text is read in windows)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from app import __version__, tokens, zeroshot
from app.errors import InvalidInput, ModelNotFound
from app.record import current
from app.scores import ScoreFunction, WindowAggregation
from app.tokenizer import TextInput

if TYPE_CHECKING:
    from app.served import ServedModel
    from app.service import Service

INPUT = "text"
PAIR_INPUT = "text_pair"  # optional: a second text per row makes each row a pair (text[k], text_pair[k])
LABELS_INPUT = "candidate_labels"  # zero-shot: the labels each text is scored against (app.zeroshot)
INPUTS = (INPUT, PAIR_INPUT, LABELS_INPUT)
OUTPUTS = ("label", "scores")
ZERO_SHOT_OUTPUTS = ("label", "labels", "scores")  # `labels`: each text's candidate labels, best first
TOKEN_OUTPUTS = ("entities",)  # a token model's: per text, its entities as a JSON array (app.tokens)
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification"]
SCORE_FUNCTIONS = frozenset(get_args(ScoreFunction))
WINDOW_AGGREGATIONS = frozenset(get_args(WindowAggregation))


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
    if model.token_model:  # entities out, one JSON array per text (app.tokens)
        return {
            "name": model.name, "versions": [str(v) for v in versions], "platform": PLATFORM,
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "entities", "datatype": "BYTES", "shape": [-1]}],
            "parameters": {"task": model.config.task, "labels": labels, "max_length": model.max_length,
                           "default_stride": model.tokenizer.default_stride(),
                           "default_aggregation_strategy": tokens.DEFAULT_STRATEGY, "truncate_default": False},
        }
    nli = zeroshot.takes_candidate_labels(labels)  # zero-shot classification: its input and output are listed
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": PAIR_INPUT, "datatype": "BYTES", "shape": [-1]}]
        + ([{"name": LABELS_INPUT, "datatype": "BYTES", "shape": [-1]}] if nli else []),
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
        ] + ([{"name": "labels", "datatype": "BYTES", "shape": [-1, -1]}] if nli else []),
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
    truncate: bool  # true when not given, except for a token model (truncate_given)
    function: str | None  # None: the model head's own
    timeout_us: int | None
    stride: int | None = None  # truncate false: tokens consecutive windows share (None: the model's default)
    window_aggregation: str = "mean"  # truncate false: a long text's answer from its windows' scores
    candidate_labels: list[str] | None = None  # zero-shot classification (app.zeroshot); None: classification
    hypothesis_template: str | None = None  # zero-shot: None is the pipeline's default
    multi_label: bool = False  # zero-shot
    aggregation_strategy: str | None = None  # token classification (app.tokens); None: simple
    ignore_labels: list[str] | None = None  # token classification; None: ["O"]
    # How the request was given, for a token model's defaults (not part of what it asks: not compared)
    outputs_given: bool = field(default=False, compare=False)  # it named its outputs (else the model's own)
    binary_default: bool = field(default=False, compare=False)  # parameters.binary_data_output
    truncate_given: bool = field(default=False, compare=False)  # parameters.truncate (a token model: false)


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
                           f"(and {PAIR_INPUT!r} for text pairs, or {LABELS_INPUT!r} for zero-shot classification)")
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
    labels = columns.get(LABELS_INPUT)  # zero-shot classification (app.zeroshot)
    if labels is not None and PAIR_INPUT in columns:
        raise InvalidInput(f"input {LABELS_INPUT!r}: zero-shot classification takes texts, not pairs (each text is "
                           f"paired with each label's hypothesis): leave out {PAIR_INPUT!r}")
    if PAIR_INPUT in columns:  # row k is the pair (text[k], text_pair[k])
        second = columns[PAIR_INPUT]
        if len(second) != len(texts):
            raise InvalidInput(f"input {PAIR_INPUT!r} has {len(second)} elements and {INPUT!r} {len(texts)}: "
                               "pairs need as many of each")
        texts = list(zip(texts, second))

    params = parameters or {}
    binary_default = _flag(params, "binary_data_output", False, "")
    wanted: list[Wanted] = []
    names = OUTPUTS if labels is None else ZERO_SHOT_OUTPUTS
    token_names = names + TOKEN_OUTPUTS if labels is None else names  # a token model's (checked at infer)
    for name, out_params in outputs if outputs is not None else [(name, {}) for name in names]:
        if name in ZERO_SHOT_OUTPUTS and name not in token_names:
            raise InvalidInput(f"output {name!r} comes with {LABELS_INPUT!r} only (zero-shot classification)")
        if name in TOKEN_OUTPUTS and name in token_names:
            if name in (w.name for w in wanted):
                raise InvalidInput(f"output {name!r} is asked for twice")
            wanted.append(Wanted(name, _flag(out_params, "binary_data", binary_default, f"output {name!r}: ")))
            continue
        if name not in names:
            raise InvalidInput(f"unexpected output {name!r} for model {model!r}: it has {', '.join(names)}")
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
    stride = params.get("stride")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 0):
        raise InvalidInput("parameters.stride must be a number of tokens (0 or more)")
    aggregation = params.get("window_aggregation", "mean")
    if aggregation not in WINDOW_AGGREGATIONS:
        raise InvalidInput(f"parameters.window_aggregation must be one of {sorted(WINDOW_AGGREGATIONS)}")
    strategy = params.get("aggregation_strategy")
    if strategy is not None:
        tokens.check_strategy(strategy)  # a 422 naming the strategies (a list or number is not one)
    ignore = params.get("ignore_labels")
    if ignore is not None and not isinstance(ignore, str):
        raise InvalidInput("parameters.ignore_labels must be a string: labels separated by commas")
    found = Infer(id, texts, wanted, _flag(params, "truncate", True, ""), function, timeout_us, stride, aggregation,
                  *_zero_shot(params, labels))
    found.aggregation_strategy = strategy
    found.ignore_labels = None if ignore is None else [label.strip() for label in ignore.split(",") if label.strip()]
    found.outputs_given = outputs is not None
    found.binary_default = binary_default
    found.truncate_given = "truncate" in params
    return found


def _zero_shot(params: dict[str, Any], labels: list[str] | None) -> tuple[list[str] | None, str | None, bool]:
    """A zero-shot request's candidate labels, hypothesis template and multi_label (None, None, False: none)."""
    if labels is None:
        if "hypothesis_template" in params or "multi_label" in params:
            raise InvalidInput("parameters.hypothesis_template and parameters.multi_label apply to zero-shot "
                               f"classification only: send the input {LABELS_INPUT!r} too")
        return None, None, False
    template = params.get("hypothesis_template")
    if template is not None and not isinstance(template, str):
        raise InvalidInput("parameters.hypothesis_template must be a string, the label in place of {}")
    if "function_to_apply" in params:
        raise InvalidInput(f"parameters.function_to_apply: not taken with {LABELS_INPUT!r} (zero-shot scores are "
                           "the pipeline's)")
    return labels, template, _flag(params, "multi_label", False, "")


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
    truncated: int = 0  # texts the model read only in part: the response's `truncated` parameter


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


def zero_shot_outputs(found: zeroshot.ZeroShot, wanted: list[Wanted]) -> list[Output]:
    """The outputs asked for of a zero-shot answer: per text, its labels best first (the pipeline's order) and
    their scores in that order."""
    n, k = found.scores.shape
    ranked = [zeroshot.ranked(found.labels, row) for row in found.scores]
    scores = np.ascontiguousarray([values for _, _, values in ranked], dtype=np.float32).reshape(n, k)
    result = []
    for want in wanted:
        if want.name == "label":
            result.append(Output("label", "BYTES", [n], [labels[0] for _, labels, _ in ranked], want.binary))
        elif want.name == "labels":
            result.append(Output("labels", "BYTES", [n, k], [label for _, labels, _ in ranked for label in labels],
                                 want.binary))
        elif want.classification is not None:  # Triton's classification extension: k best, "score:index:label"
            top = min(want.classification, k)
            values = [f"{score:f}:{i}:{label}" for order, labels, row in ranked
                      for i, label, score in list(zip(order, labels, row))[:top]]
            result.append(Output(want.name, "BYTES", [n, top], values, want.binary))
        else:
            result.append(Output(want.name, "FP32", [n, k], scores, want.binary))
    return result


async def infer(service: Service, name: str, version: int | None, req: Infer, routing_key: str | None = None,
                timeout_ms: float | None = None) -> Inferred:
    """Classify the request's texts with the model (version); `timeout_ms` (a transport's own deadline, as gRPC's)
    bounds the request's `timeout` further. Awaited in the caller's task, so the caller may cancel it."""
    asked_ms = None if req.timeout_us is None else req.timeout_us / 1000
    if timeout_ms is not None:
        asked_ms = timeout_ms if asked_ms is None else min(asked_ms, timeout_ms)
    timeout_s = service.timeout_s(asked_ms)
    if req.candidate_labels is None and (
            req.aggregation_strategy is not None or req.ignore_labels is not None
            or await service.inference.task_of(name, version, routing_key, timeout_s) == tokens.TASK):
        return await _entities(service, name, version, req, routing_key, timeout_s)
    if any(w.name in TOKEN_OUTPUTS for w in req.outputs):
        raise InvalidInput(f"output 'entities' comes from a token-classification model; model {name!r} answers "
                           f"{', '.join(OUTPUTS)}")
    truncate = req.truncate
    if req.candidate_labels is not None:  # zero-shot classification (app.zeroshot)
        found = await zeroshot.classify(
            service, req.texts, req.candidate_labels, hypothesis_template=req.hypothesis_template,  # type: ignore[arg-type]
            multi_label=req.multi_label, model=name, version=version, truncate=truncate,
            timeout_s=timeout_s, routing_key=routing_key,
        )
        record = current.get()
        return Inferred(found.served, req.id, zero_shot_outputs(found, req.outputs), record.truncated if record else 0)
    model, scores = await service.classify(
        req.texts, model=name, version=version, truncate=truncate, function=req.function,  # type: ignore[arg-type]
        stride=req.stride, window_aggregation=req.window_aggregation,  # type: ignore[arg-type]
        timeout_s=timeout_s, routing_key=routing_key,
    )
    record = current.get()
    return Inferred(model, req.id, outputs(model, scores, req.outputs), record.truncated if record else 0)


async def _entities(service: Service, name: str, version: int | None, req: Infer, routing_key: str | None,
                    timeout_s: float) -> Inferred:
    """A token model's answer: the output `entities`, per text its entities as one JSON array (app.tokens)."""
    if req.function is not None or req.window_aggregation != "mean":
        raise InvalidInput("parameters.function_to_apply and window_aggregation: not taken by a token-classification "
                           "model (it answers entities: aggregation_strategy, ignore_labels, stride)")
    if req.outputs_given and any(w.name not in TOKEN_OUTPUTS for w in req.outputs):
        raise InvalidInput(f"model {name!r} is a token-classification model: its one output is 'entities'")
    if any(type(text) is not str for text in req.texts):
        raise InvalidInput(f"input {PAIR_INPUT!r}: a token-classification model labels texts, not pairs")
    wanted = req.outputs if req.outputs_given else [Wanted("entities", req.binary_default)]
    found = await tokens.label_tokens(
        service, req.texts, aggregation_strategy=req.aggregation_strategy, ignore_labels=req.ignore_labels,  # type: ignore
        stride=req.stride, truncate=req.truncate if req.truncate_given else None, model=name, version=version, timeout_s=timeout_s,
        routing_key=routing_key)
    values = [json.dumps(one, ensure_ascii=False) for one in found.entities]
    record = current.get()
    return Inferred(found.served, req.id, [Output(w.name, "BYTES", [len(values)], values, w.binary) for w in wanted],
                    record.truncated if record else 0)
