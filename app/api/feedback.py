"""POST /feedback: the true label of a logged prediction, joined to it through the prediction log's join index
(app.prediction_log), whichever worker answered it, recorded in the log (type "feedback") and counted in
bertserve_feedback_total; the client role, like /predict (app.api.security: every route not named open).

A body is one item or a list of them, {"id": <the answer's X-Request-ID>, "index": <the text's position in that
request, default 0>, "label": <the true label>}: a label of the model (a softmax head), a list of its labels (a
sigmoid head: multi-label or one logit; a single label is taken as a list of one), or a number (regression).
A list is recorded all or none. Answers: 404 for an id not in the index (never logged: not sampled, dropped, a
request that failed; or older than BERTSERVE_FEEDBACK_WINDOW_S), 409 for a second feedback on one item, 422 for
a label the model does not have or a model whose answers take none (token, zero-shot)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictFloat, StrictInt, StrictStr
from starlette.responses import Response

from app import audit, metrics, prediction_log
from app.api.schemas import error_responses, json_body
from app.api.security import bearer_token
from app.api.transport import json_response, read_body
from app.errors import Conflict, InvalidInput, NotFound, parse_json
from app.prediction_log import PredictionLog, iso_time

router = APIRouter(tags=["feedback"])
MAX_ITEMS = 1000  # feedback items in one request


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")] = Field(
        description="The X-Request-ID the answer carried.")
    index: StrictInt = Field(0, ge=0, description="Which text of that request (0: the first).")
    label: StrictStr | list[StrictStr] | StrictInt | StrictFloat = Field(
        description="The true label: one of the model's labels (softmax head), a list of them (sigmoid head: "
        "multi-label or one logit), or a number (regression).")


FeedbackList = RootModel[Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_ITEMS)]]
FeedbackBody = RootModel[FeedbackItem | Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_ITEMS)]]


@router.post("/feedback", summary="The true label of a logged prediction (one item or a list)",
             responses=error_responses(401, 404, 409, 413, 415, 422), openapi_extra=json_body(FeedbackBody))
async def feedback(request: Request) -> Response:
    service = request.app.state.service
    log = prediction_log.of(service)
    if log is None or log.index is None:
        raise NotFound("feedback is off on this server: it is joined to predictions through the prediction log's "
                       "index, kept in BERTSERVE_PREDICTION_LOG_DIR, which is not set"
                       + (" (only BERTSERVE_PREDICTION_LOG_URL is)" if log is not None else ""))
    body = await read_body(request, service.settings.max_body_bytes)
    # One schema or the other, so an error names the shape sent (not the first branch of a union)
    items = parse_json(FeedbackList, body).root if body.lstrip()[:1] == b"[" else [parse_json(FeedbackItem, body)]
    key = _fingerprint(log, bearer_token(request.scope["headers"]))
    now = time.time()
    rows, answers, counted, logged = [], [], [], []
    for item in items:
        found = await _logged(log, item.id)
        row = next((r for r in found if r[0] == item.index), None)
        if row is None:
            raise NotFound(f"request {item.id} logged {len(found)} text(s); index {item.index} is not one of them")
        _, model, version, task, head, labels, predicted = row[:7]
        label, correct, as_metric = _judge(item, model, version, task, head, orjson.loads(labels),
                                           orjson.loads(predicted), row[7])
        rows.append((item.id, item.index, model, version, orjson.dumps(label).decode(), predicted, int(correct),
                     key, now))
        counted.append((model, version, *as_metric))
        logged.append({"type": "feedback", "id": item.id, "index": item.index, "time": iso_time(now), "model": model,
                       "version": version, "label": label, "predicted": orjson.loads(predicted), "key": key})
        answers.append({"id": item.id, "index": item.index, "model": model, "version": version,
                        "predicted": orjson.loads(predicted), "correct": bool(correct)})
    taken = await asyncio.to_thread(log.index.record_feedback, rows)
    if taken is not None:
        raise Conflict(f"request {taken[0]} index {taken[1]} already has feedback (one per text; nothing of this "
                       "request was recorded)")
    for labels in counted:
        metrics.FEEDBACK.labels(*labels).inc()
    for one in logged:
        log.offer_feedback(one)
    return json_response({"accepted": len(answers), "feedback": answers})


async def _logged(log: PredictionLog, request_id: str) -> list[tuple]:
    """The request's rows in the join index; when there are none yet, this worker's queue is written first and
    the index read again for up to FEEDBACK_WAIT_S (another worker's writer may be a moment behind its answer)."""
    index = log.index
    assert index is not None
    found = await asyncio.to_thread(index.find, request_id)
    if found:
        return found
    wait_s = prediction_log.FEEDBACK_WAIT_S
    deadline = time.monotonic() + wait_s
    await log.flush(wait_s)
    while not (found := await asyncio.to_thread(index.find, request_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if not found:
        raise NotFound(f"no logged prediction has id {request_id}: only logged requests take feedback, and a "
                       "request not sampled (BERTSERVE_PREDICTION_LOG_SAMPLE, serving.json prediction_log.sample), "
                       "dropped from the log, or answered with an error never is; or it is older than "
                       f"BERTSERVE_FEEDBACK_WINDOW_S ({log.settings.feedback_window_s:g} s)")
    return found


def _judge(item: FeedbackItem, model: str, version: str, task: str, head: str, labels: list[str], predicted: Any,
           bound: float | None) -> tuple[Any, bool, tuple[str, str]]:
    """The label as recorded, whether the logged prediction had it right, and (label, predicted) for the metric;
    a label the model's head cannot have is a 422."""
    where = f"model {model} version {version}"
    if task in ("token-classification", "zero-shot-classification") or not head:
        raise InvalidInput(f"request {item.id} was answered by {where} as {task or 'another task'}: feedback takes "
                           "the true label of a sequence classifier's answer, which a " + (task or "such")
                           + " answer has not")
    label = item.label
    if head == "single-label":
        if not isinstance(label, str) or label not in labels:
            raise InvalidInput(f"label must be one of the labels of {where}: {labels}")
        return label, label == predicted, (label, predicted)
    if head == "regression":
        if isinstance(label, str | list) or not math.isfinite(label) or not isinstance(predicted, float | int):
            raise InvalidInput(f"label must be a finite number: {where} is a regression head")
        within = abs(label - predicted) <= (bound or 0)
        return label, within, ("value", "within_bound" if within else "outside_bound")
    chosen = [label] if isinstance(label, str) else label  # a sigmoid head: the set of labels over 0.5
    if not isinstance(chosen, list) or len(set(chosen)) != len(chosen) or any(c not in labels for c in chosen):
        raise InvalidInput(f"label must be a list of distinct labels of {where} (a {head} head): {labels}")
    return chosen, set(chosen) == set(predicted), (",".join(sorted(chosen)), ",".join(sorted(predicted)))


def _fingerprint(log: PredictionLog, token: bytes | None) -> str | None:
    """The sender's key by fingerprint, never the key: the audit log's (app.audit) when it is on, so the two
    name a caller alike; else HMAC-SHA256 under the prediction log's key (16 hex digits). None: no key sent."""
    if not token:
        return None
    if audit.current is not None:
        return audit.current.fingerprint(token)
    if log.key is None:
        return None
    return hmac.new(log.key, b"key-fingerprint\x00" + token, hashlib.sha256).hexdigest()[:audit.FINGERPRINT_CHARS]
