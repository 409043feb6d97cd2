"""What every transport does around a request, for HTTP and gRPC alike: the one request-id rule, the request's
record (app.record) begun at its start, and at its end the request metrics by model, answering version, status,
protocol and route, its duration and its trace, and the answered request offered to the prediction log
(app.prediction_log: sampled and queued, written off the request's path). A request cancelled under it is counted
as 499 (the client left, nginx's status: only ever seen in metrics) or, while the server drains, 503 (the drain
bound passed)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Histogram

from app import metrics, prediction_log, tracing
from app.logs import request_id
from app.record import RequestRecord, current

if TYPE_CHECKING:
    from app.service import Service

CLIENT_CLOSED = 499
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # echoed into headers and logs: nothing else gets through


def request_id_for(given: str | None) -> str:
    """The caller's request id when it is safe to echo and log, else a new one (128 random bits, a uuid4's)."""
    return given if given is not None and _SAFE_ID.fullmatch(given) else os.urandom(16).hex()


def start(protocol: str, route: str, model: str | None, method: str = "",
          headers: Sequence[tuple[Any, Any]] = ()) -> RequestRecord:
    """Begin a request's record and make it the current one (the core fills it from the same task)."""
    record = RequestRecord(protocol, route, model, request_id.get(), time.perf_counter(), method, headers)
    current.set(record)
    return record


def cancelled(service: Service) -> tuple[int, str]:
    """How a request cancelled under the transport ends, as (HTTP status, gRPC status code name): the client
    left, or the drain bound passed while the server drains."""
    return (503, "UNAVAILABLE") if service.draining else (CLIENT_CLOSED, "CANCELLED")


def finish(service: Service, record: RequestRecord, status: int, grpc_code: Any = None,
           counter: Counter = metrics.REQUESTS, duration: Histogram = metrics.REQUEST_DURATION) -> None:
    """Count and time the request under its model label and answering version ("" when it ended before a
    version was chosen), with `status` (the HTTP status of its outcome, for gRPC too, so one error-rate query
    covers both protocols), and record its trace. `grpc_code`: a gRPC call's own status (grpc.StatusCode)."""
    label, version = service.metric_label(record.model), record.version
    counter.labels(label, version, str(status), record.protocol, record.route).inc()
    duration.labels(label, version).observe(time.perf_counter() - record.started)
    if tracing.tracer is not None:  # off: this check is all a request pays
        tracing.record_request(record, label, status, grpc_code)
    prediction_log.offer(service, record, label, status)  # sampled and queued, never written here
