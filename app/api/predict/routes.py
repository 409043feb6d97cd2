"""/predict's route, declared once: documented by FastAPI, served lean (app.api.transport.LeanRoute). Parsing and
shaping in the codec, every decision in app.service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.predict.codec import encode_predict, parse_predict
from app.api.predict.schemas import PredictResponse
from app.api.schemas import error_responses
from app.api.transport import LeanRoute, Tracked, json_response, model_headers, read_body, tracked, until_disconnect
from app.service import Service

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
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _predict(request, service, t))


async def _predict(request: Request, service: Service, tracking: Tracked) -> Response:
    req = parse_predict(await read_body(request, service.settings.max_body_bytes))
    tracking.model = req.model
    model, scores = await until_disconnect(
        request,
        service.classify(
            [req.inputs] if isinstance(req.inputs, (str, tuple)) else req.inputs,  # one text or pair, or a list
            model=req.model,
            version=req.version,
            truncate=req.truncate,
            # None: the model head's function (softmax, sigmoid or none, by the text-classification pipeline's rule)
            function="none" if req.raw_scores else (req.parameters and req.parameters.function_to_apply) or None,
            timeout_s=service.timeout_s(req.timeout_ms),
            routing_key=request.headers.get("x-routing-key"),
        ),
    )
    return json_response(encode_predict(req, model.config.labels, scores),
                         headers=model_headers(model))
