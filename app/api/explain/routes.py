"""Explanation routes: /explain and KServe V1's :explain, through the request skeleton (app.api.transport.handle).
Parsing and shaping in the codec; the service explains. Counted apart from predictions
(bertserve_explanations_total). Beside them, the rest of KServe V1's data plane: `:predict` (its schemas and codec
in app.api.v1; counted as a prediction)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import metrics
from app.api.explain.codec import encode_explanation, encode_prediction, parse
from app.api.explain.schemas import ExplainOptions, ExplainRequest, ExplainResponse, V1ExplainRequest, V1ExplainResponse
from app.api.schemas import error_responses, json_body
from app.api.transport import Call, handle
from app.api.v1.codec import check_head, parse_predict, predictions
from app.api.v1.schemas import V1PredictRequest, V1PredictResponse
from app.errors import InvalidInput
from app.inference import Explanation
from app.served import ServedModel
from app.tokenizer import TextInput

router = APIRouter(tags=["explanations"])
_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504)
_COUNTED = {"counter": metrics.EXPLANATIONS, "duration": metrics.EXPLANATION_DURATION}


@router.post("/explain", summary="Explain one prediction: each word's weight for a label, by occlusion",
             response_model=ExplainResponse, responses=_ERRORS, openapi_extra=json_body(ExplainRequest))
async def explain(request: Request) -> Response:
    return await handle(request, _parse, _explain, _encode, **_COUNTED)


def _parse(call: Call) -> ExplainRequest:
    req = parse(ExplainRequest, call.body)
    call.model = req.model
    return req


def _explain(call: Call, req: ExplainRequest):
    return call.service.explain(
        req.inputs, model=req.model, version=req.version, truncate=req.truncate, target=req.target,
        max_features=req.max_features, timeout_s=call.service.timeout_s(req.timeout_ms),
        routing_key=call.routing_key,
    )


def _encode(req: ExplainRequest, explanation: Explanation) -> tuple[ServedModel, Any]:
    return explanation.served, {"prediction": encode_prediction(explanation),
                                **encode_explanation(req.inputs, explanation)}


@router.post("/v1/models/{name}:explain", summary="Explain (KServe V1 protocol): instances in, predictions and "
             "explanations out", response_model=V1ExplainResponse, responses=_ERRORS,
             openapi_extra=json_body(V1ExplainRequest))
async def v1_explain(name: str, request: Request) -> Response:
    return await handle(request, _v1_parse, lambda call, req: _v1_explain(call, req, name), _v1_encode, model=name,
                        **_COUNTED)


def _v1_parse(call: Call) -> V1ExplainRequest:
    req = parse(V1ExplainRequest, call.body)
    limit = call.service.settings.max_client_batch_size
    if len(req.instances) > limit:
        raise InvalidInput(f"{len(req.instances)} instances in one request; the limit is {limit}")
    return req


def _v1_explain(call: Call, req: V1ExplainRequest, name: str):
    # One submission for all the instances: batched together, and refused (422) when it could never fit the queue.
    options = req.parameters or ExplainOptions()
    return call.service.explain_many(
        req.instances, model=name, target=options.target, max_features=options.max_features,
        timeout_s=call.service.timeout_s(None), routing_key=call.routing_key)


def _v1_encode(req: V1ExplainRequest, explanations: list[Explanation]) -> tuple[ServedModel, Any]:
    return explanations[0].served, {
        "predictions": [e.served.config.labels[int(e.probabilities.argmax())] for e in explanations],
        "explanations": [encode_explanation(text, e) for text, e in zip(req.instances, explanations)],
    }


# ---- KServe V1 :predict (huggingfaceserver's shape; app.api.v1) ----

@router.post("/v1/models/{name}:predict", summary="Predict (KServe V1 protocol): instances in, predictions out, "
             "as KServe's huggingfaceserver answers", response_model=V1PredictResponse, responses=_ERRORS,
             openapi_extra=json_body(V1PredictRequest), tags=["KServe V1"])
async def v1_predict(name: str, request: Request) -> Response:
    return await handle(request, lambda call: parse_predict(call.body, name),
                        lambda call, req: _v1_predict(call, req, name), _v1_predict_encode, model=name)


async def _v1_heads(served: ServedModel, texts: list[TextInput]) -> list[TextInput]:
    check_head(served)  # before anything is queued: a one-output head has no class id to answer
    return texts


async def _v1_predict(call: Call, req: V1PredictRequest, name: str) -> tuple[ServedModel, Any]:
    # Softmax whatever the head's own function, as huggingfaceserver: its class id is the argmax of the logits.
    served, scores = await call.service.classify(
        req.instances, model=name, function="softmax", timeout_s=call.service.timeout_s(None),
        routing_key=call.routing_key, prepare=_v1_heads)
    wanted = call.service.serving_of(served.name).v1_return_probabilities
    return served, {"predictions": predictions(scores, wanted)}


def _v1_predict_encode(_req: V1PredictRequest, answer: tuple[ServedModel, Any]) -> tuple[ServedModel, Any]:
    return answer
