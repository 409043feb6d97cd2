"""Open Inference Protocol (KServe V2) routes: server and model metadata, readiness, inference. The protocol's rules
are app.protocol.v2's (shared with gRPC), parsing and shaping the codec's; the routes only build the answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from app.api.errors import error_response
from app.api.schemas import error_responses
from app.api.transport import Call, handle, json_response
from app.api.v2.codec import CONTENT_TYPES, encode_response, parse_infer
from app.api.v2.schemas import (
    HEADER_LENGTH,
    INFER_DESCRIPTION,
    INFER_OPENAPI,
    InferResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from app.protocol import v2
from app.served import ServedModel

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (KServe V2)"])

_ERRORS = error_responses(401, 404, 422, 500)
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404, 413, 415, 422, 429, 500, 503, 504),
    200: {
        "description": "JSON, or (binary outputs) the JSON header then the binary outputs",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
}
Version = Annotated[str, Path(pattern=r"^[1-9][0-9]{0,17}$", description="Model version (a positive integer).")]


@router.get("", summary="Server metadata", response_model=ServerMetadata)
async def server_metadata() -> Response:
    return json_response(v2.server_metadata())


@router.get("/", include_in_schema=False)
async def server_metadata_slash() -> Response:
    return await server_metadata()


@router.get("/health/live", summary="Server live", response_model=ServerLive)
async def live() -> Response:
    return json_response(v2.server_live())


@router.get("/health/ready", summary="Server ready: every model loaded and warmed (503 otherwise)",
            response_model=ServerReady, responses={503: {"model": ServerReady}})
async def ready(request: Request) -> Response:
    is_ready, detail = v2.server_ready(request.app.state.service)
    return json_response(detail, status_code=200 if is_ready else 503)


@router.get("/models/{name}", summary="Model metadata (the highest ready version)", response_model=ModelMetadata,
            responses=_ERRORS)
async def model_metadata(name: str, request: Request) -> Response:
    return json_response(v2.model_metadata(request.app.state.service, name, None))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata", response_model=ModelMetadata,
            responses=_ERRORS)
async def model_version_metadata(name: str, version: Version, request: Request) -> Response:
    return json_response(v2.model_metadata(request.app.state.service, name, int(version)))


def _model_ready(request: Request, name: str, version: int | None) -> Response:
    """200 when ready; 404 when the server does not know the model (version); 400 when it is not ready."""
    answer = v2.model_ready(request.app.state.service, name, version)
    if answer["ready"]:
        return json_response(answer)
    return error_response(400, answer["reason"], "unhealthy")


@router.get("/models/{name}/ready", summary="Model ready: 200 if it can infer now, else 400 (404: unknown)",
            response_model=ModelReady, responses=error_responses(400, 401, 404, 422, 500))
async def model_ready(name: str, request: Request) -> Response:
    return _model_ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model version ready (400: not ready, 404: unknown)",
            response_model=ModelReady, responses=error_responses(400, 401, 404, 422, 500))
async def model_version_ready(name: str, version: Version, request: Request) -> Response:
    return _model_ready(request, name, int(version))


# ---- inference ----

async def _infer(request: Request, name: str, version: int | None) -> Response:
    def parse(call: Call) -> v2.Infer:
        v2.require_model(call.service, name, version)  # an unknown model is 404 before its request is looked at
        return parse_infer(call.body, request.headers.get(HEADER_LENGTH), name, version)

    def run(call: Call, parsed: v2.Infer):
        return v2.infer(call.service, name, version, parsed, call.routing_key)

    return await handle(request, parse, run, _encode, model=name, content_types=CONTENT_TYPES)


def _encode(_parsed: v2.Infer, inferred: v2.Inferred) -> tuple[ServedModel, Response]:
    body, json_length = encode_response(inferred)
    if json_length is None:
        return inferred.model, Response(body, media_type="application/json")
    return inferred.model, Response(body, media_type="application/octet-stream",
                                    headers={HEADER_LENGTH: str(json_length)})


@router.post("/models/{name}/infer", summary="Inference (the highest ready version)", response_model=InferResponse,
             responses=_INFER_RESPONSES, openapi_extra=INFER_OPENAPI,
             description=INFER_DESCRIPTION)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Inference with one model version",
             response_model=InferResponse, responses=_INFER_RESPONSES,
             openapi_extra=INFER_OPENAPI, description=INFER_DESCRIPTION)
async def infer_version(name: str, version: Version, request: Request) -> Response:
    return await _infer(request, name, int(version))
