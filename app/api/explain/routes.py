"""Explanation routes: /explain and KServe V1's :explain. Parsing and shaping in the codec, every decision in
app.service; counted apart from predictions (bertserve_explanations_total)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import metrics
from app.api.explain.codec import encode_explanation, encode_prediction, parse
from app.api.explain.schemas import ExplainOptions, ExplainRequest, ExplainResponse, V1ExplainRequest, V1ExplainResponse
from app.api.schemas import error_responses, inline_schema
from app.api.transport import Tracked, json_response, model_headers, read_body, tracked, until_disconnect
from app.errors import InvalidInput
from app.service import Service

router = APIRouter(tags=["explanations"])
_ERRORS = error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504)


def _body(schema) -> dict:
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": inline_schema(schema.model_json_schema())}}}}


@router.post("/explain", summary="Explain one prediction: each word's weight for a label, by occlusion",
             response_model=ExplainResponse, responses=_ERRORS, openapi_extra=_body(ExplainRequest))
async def explain(request: Request) -> Response:
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _explain(request, service, t), metrics.EXPLANATIONS,
                         metrics.EXPLANATION_DURATION)


async def _explain(request: Request, service: Service, tracking: Tracked) -> Response:
    req = parse(ExplainRequest, await read_body(request, service.settings.max_body_bytes))
    tracking.model = req.model
    explanation = await until_disconnect(request, service.explain(
        req.inputs, model=req.model, version=req.version, truncate=req.truncate, target=req.target,
        max_features=req.max_features, timeout_s=service.timeout_s(req.timeout_ms),
        routing_key=request.headers.get("x-routing-key"),
    ))
    served = explanation.served
    return json_response({"prediction": encode_prediction(explanation), **encode_explanation(req.inputs, explanation)},
                         headers=model_headers(served))


@router.post("/v1/models/{name}:explain", summary="Explain (KServe V1 protocol): instances in, predictions and "
             "explanations out", response_model=V1ExplainResponse, responses=_ERRORS,
             openapi_extra=_body(V1ExplainRequest))
async def v1_explain(name: str, request: Request) -> Response:
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _v1_explain(request, service, t, name), metrics.EXPLANATIONS,
                         metrics.EXPLANATION_DURATION)


async def _v1_explain(request: Request, service: Service, tracking: Tracked, name: str) -> Response:
    tracking.model = name
    req = parse(V1ExplainRequest, await read_body(request, service.settings.max_body_bytes))
    if len(req.instances) > service.settings.max_client_batch_size:
        raise InvalidInput(f"{len(req.instances)} instances in one request; the limit is "
                           f"{service.settings.max_client_batch_size}")
    options = req.parameters or ExplainOptions()
    timeout_s = service.timeout_s(None)
    key = request.headers.get("x-routing-key")

    # One submission for all the instances: batched together, and refused (422) when it could never fit the queue.
    explanations = await until_disconnect(request, service.explain_many(
        req.instances, model=name, target=options.target, max_features=options.max_features, timeout_s=timeout_s,
        routing_key=key))
    served = explanations[0].served
    return json_response({
        "predictions": [e.served.config.labels[int(e.probabilities.argmax())] for e in explanations],
        "explanations": [encode_explanation(text, e) for text, e in zip(req.instances, explanations)],
    }, headers=model_headers(served))
