"""The record of the request being served: what it learned on its way down, in one object per request.

Made and set by the transport (app.api.accounting.start, for HTTP and gRPC alike), filled by the inference core
(the answering version, the texts and the rows it ran), and read at the request's end by its metrics and its
trace (app.tracing takes it as an argument). A ground floor: it imports nothing of the service, so every room
above may use it and none has to import another's context variable.

A field a later reader needs (the prediction log: the texts, labels and scores, how many were truncated) is one
more attribute with a default here, filled where it is learned. A slots class, made once per request: the hot
path pays one small object and no copies."""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, eq=False)
class RequestRecord:
    """What one request learned on its way down (see above); its fields in the order they are learned."""

    # Set by the transport at the start
    protocol: str  # "http" or "grpc": a metric label
    route: str  # the route's path template (/predict, /v2/models/{model_name}/infer) or the gRPC method (ModelInfer)
    model: str | None  # the model asked for (None: the default); HTTP routes may learn it from the body
    request_id: str | None
    started: float  # time.perf_counter() when the transport began the request
    # For the request's trace only (read when tracing is on): the method as its protocol names it (HTTP's "POST",
    # gRPC's "/inference.GRPCInferenceService/ModelInfer") and the headers or metadata carrying `traceparent`
    method: str = ""
    headers: Sequence[tuple[Any, Any]] = ()
    # Filled by the inference core (app.inference)
    version: str = ""  # the version that answered; "" until one is chosen (a metric label)
    text_count: int = 0  # texts (or pairs) the request asked about
    rows: Sequence[tuple[Any, Any]] = ()  # (row, app.batching.Timing) of each sequence its version's batcher ran
    truncated: int = 0  # texts the model read only in part (the answer's X-Truncated-Texts, V2's `truncated`)
    # The answer itself, for the prediction log (app.prediction_log), by reference: set only where an answer is
    # made (classify, label_tokens, zero-shot), so a record with neither `scores` nor `entities` is not logged
    task: str = ""  # "text-classification", "token-classification", "zero-shot-classification"
    head: Any = None  # how to read `scores`: the version's app.scores.Head (None: zero-shot, token models)
    texts: Sequence[Any] = ()  # the texts (str, or (text, text_pair) tuples) as the request gave them
    labels: Sequence[str] = ()  # names of the columns of `scores` (the version's labels; zero-shot: candidates)
    scores: Any = None  # numpy [len(texts), len(labels)]: the head's own scores, after windows
    entities: Any = None  # token models: per text, the list of entity dicts answered
    # Filled by app.tracing once the request's trace is recorded (for its access-log line)
    trace_id: str | None = None


# The record of the request this task serves; None outside one (a test calling the core, a shadow comparison).
current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("request_record", default=None)
