"""HTTP routes: transport only. Parsing and shaping here, every decision in app.service."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import Route

from app import metrics
from app.api.errors import validation_message
from app.api.schemas import ErrorResponse, ModelInfo, PredictRequest, PredictResponse, Readiness
from app.api.transport import Tracked, json_response, read_body, tracked, until_disconnect
from app.errors import InvalidInput, ModelNotFound
from app.service import Service, ranked

router = APIRouter()
# Mounted only when admin keys are set (or BERTSERVE_ADMIN_WITHOUT_KEY): otherwise these routes do not exist.
admin_router = APIRouter(tags=["admin"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 415, 422, 429, 500, 503, 504)
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 403, 404)}
# Who may call which route is decided in one place for all of them: app.api.security.AuthMiddleware.


def parse_predict(body: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc)) from None


@router.post(
    "/predict",
    summary="Classify one text or a batch of texts",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
        }
    },
)
async def predict(request: Request) -> Response:
    service: Service = request.app.state.service
    return await tracked(service, lambda t: _predict(request, service, t))


# The hot path as a plain Starlette route, mounted ahead of its FastAPI declaration above (which stays for the
# OpenAPI schema and docs): FastAPI's per-request dependency solving and wrappers cost about 0.16 ms of
# event-loop CPU per request here, a fifth of the loop's work per prediction (measured at concurrency 32).
LEAN_ROUTES = [Route("/predict", predict, methods=["POST"])]


async def _predict(request: Request, service: Service, tracking: Tracked) -> Response:
    settings = service.settings
    req = parse_predict(await read_body(request, settings.max_body_bytes))
    tracking.model = req.model
    params = req.parameters
    single = isinstance(req.inputs, str)
    timeout_ms = min(req.timeout_ms or settings.request_timeout_ms, settings.max_request_timeout_ms)
    model, scores = await until_disconnect(
        request,
        service.classify(
            [req.inputs] if single else req.inputs,
            model=req.model,
            version=req.version,
            truncate=req.truncate,
            function="none" if req.raw_scores else (params and params.function_to_apply) or "softmax",
            timeout_s=timeout_ms / 1000,
        ),
    )
    top_k = params.top_k if params else None
    answers = [ranked(model.config.labels, row, top_k) for row in scores]
    payload = answers[0] if single and params is None else answers
    return json_response(payload, headers={"X-Model-Name": model.name, "X-Model-Version": str(model.version)})


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"status": "alive"})


@router.get("/health/ready", summary="Readiness: every model loaded and warmed", response_model=Readiness,
            responses={503: {"model": Readiness}})
async def ready(request: Request) -> Response:
    is_ready, detail = request.app.state.service.readiness()
    return json_response(detail, status_code=200 if is_ready else 503)


@router.get("/models", summary="Models being served", response_model=list[ModelInfo],
            responses={401: {"model": ErrorResponse}})
async def list_models(request: Request) -> Response:
    return json_response(request.app.state.service.list_models())


@router.get("/models/{name}", summary="Every version of one model, with quality reports",
            response_model=list[ModelInfo],
            responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
async def get_model(name: str, request: Request) -> Response:
    versions = [m for m in request.app.state.service.list_models() if m["name"] == name]
    if not versions:
        raise ModelNotFound(f"model {name!r} is not served")
    return json_response(versions)


@admin_router.post("/admin/models/{name}/load", summary="Load (or reload) a model's versions from the repository",
                   response_model=list[ModelInfo], responses=_ADMIN_ERRORS)
async def admin_load(name: str, request: Request) -> Response:
    service: Service = request.app.state.service
    await service.admin_load(name)
    return json_response([m for m in service.list_models() if m["name"] == name])


@admin_router.post("/admin/models/{name}/unload", summary="Drain and unload every version of a model",
                   responses=_ADMIN_ERRORS)
async def admin_unload(name: str, request: Request) -> Response:
    await request.app.state.service.admin_unload(name)
    return json_response({"name": name, "state": "unloaded"})


@router.get("/metrics", summary="Prometheus metrics (all workers)", response_class=Response,
            responses={401: {"model": ErrorResponse}})
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
