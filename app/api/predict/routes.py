"""/predict's route, declared once: documented by FastAPI, served lean (app.api.transport.LeanRoute) through the
request skeleton (app.api.transport.handle). Parsing and shaping in the codec; the service classifies."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from starlette.responses import Response

from app import tokens, zeroshot
from app.api.predict.codec import (
    encode_entities,
    encode_predict,
    encode_zero_shot,
    parse_predict,
    token_options_given,
    token_request,
    zero_shot,
)
from app.api.predict.schemas import PredictRequest, PredictResponse
from app.api.schemas import error_responses
from app.api.transport import Call, LeanRoute, handle
from app.served import ServedModel

router = APIRouter(route_class=LeanRoute)


@router.post(
    "/predict",
    summary="Classify one text or pair, or a batch of them",
    response_model=PredictResponse,
    responses=error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504),
    openapi_extra={  # the body is read and validated by the handler; its schema is published by app.main
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
)
async def predict(request: Request) -> Response:
    return await handle(request, _parse, _classify, _encode)


def _parse(call: Call) -> PredictRequest:
    req = parse_predict(call.body)
    call.model = req.model
    zero_shot(req)  # its options checked before anything runs
    return req


async def _classify(call: Call, req: PredictRequest):
    """Dispatched by the served model's task: a token model answers entities (app.tokens), as does any request
    with token options (a sequence model then refuses it, naming its task)."""
    service = call.service
    timeout_s = service.timeout_s(req.timeout_ms)
    if token_options_given(req) or await service.inference.task_of(req.model, req.version, call.routing_key,
                                                                   timeout_s) == tokens.TASK:
        return await tokens.label_tokens(service, **token_request(req), model=req.model, version=req.version,
                                         timeout_s=timeout_s, routing_key=call.routing_key)
    truncate = True if req.truncate is None else req.truncate
    if zero_shot(req):  # parameters.candidate_labels: app.zeroshot
        params = req.parameters
        assert params is not None and params.candidate_labels is not None
        return await zeroshot.classify(
            service, [req.inputs] if isinstance(req.inputs, str) else req.inputs,  # type: ignore[list-item]
            params.candidate_labels, hypothesis_template=params.hypothesis_template,
            multi_label=bool(params.multi_label), model=req.model, version=req.version, truncate=truncate,
            timeout_s=timeout_s, routing_key=call.routing_key,
        )
    return await service.classify(
        [req.inputs] if isinstance(req.inputs, (str, tuple)) else req.inputs,  # one text or pair, or a list
        model=req.model,
        version=req.version,
        truncate=truncate,
        stride=req.stride,
        window_aggregation=req.window_aggregation,
        # None: the model head's function (softmax, sigmoid or none, by the text-classification pipeline's rule)
        function="none" if req.raw_scores else (req.parameters and req.parameters.function_to_apply) or None,
        timeout_s=timeout_s,
        routing_key=call.routing_key,
    )


def _encode(req: PredictRequest, answer: tuple[ServedModel, np.ndarray] | zeroshot.ZeroShot | tokens.Entities
            ) -> tuple[ServedModel, Any]:
    if isinstance(answer, tokens.Entities):
        return answer.served, encode_entities(req, answer)
    if isinstance(answer, zeroshot.ZeroShot):
        return answer.served, encode_zero_shot(req, answer.labels, answer.scores)
    model, scores = answer
    return model, encode_predict(req, model.config.labels, scores)
