"""The routes that run the server rather than predict: health probes, model listing and model cards, admin load
and unload (mounted only when admin keys are set, or BERTSERVE_ADMIN_WITHOUT_KEY), and Prometheus metrics. Who may
call which is decided for every route in one place: app.api.security."""

from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

from app import audit, metrics, prediction_log
from app.api.errors import STATUSES
from app.api.schemas import ModelInfo, Readiness, error_responses
from app.api.security import Keys, bearer_token
from app.api.transport import json_response
from app.errors import ModelLoadError, ModelNotFound, ServiceError
from app.repository import CARD_FILE, CONFIG_FILE, inside
from app.service import Service

router = APIRouter()
admin_router = APIRouter(tags=["admin"])
_ADMIN_ERRORS = error_responses(401, 403, 404)


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> Response:
    return json_response({"status": "alive"})


@router.get("/health/ready", summary="Readiness: every model loaded and warmed", response_model=Readiness,
            responses={503: {"model": Readiness}})
async def ready(request: Request) -> Response:
    is_ready, detail = request.app.state.service.readiness()
    return json_response(detail, status_code=200 if is_ready else 503)


def full_reasons(request: Request) -> bool:
    """Whether the caller is told failure reasons in full (paths, text quoted from repository files): whoever may
    call /admin does (an admin key; anyone when BERTSERVE_ADMIN_WITHOUT_KEY serves it open), and anyone when no
    key is configured at all (a trusted network); other callers get each cause's fixed wording."""
    keys: Keys = request.app.state.keys  # app.main's
    if not keys.enforced:
        return True
    return keys.admin_served and keys.refusal("admin", bearer_token(request.scope["headers"])) is None


@router.get("/models", summary="Models being served", response_model=list[ModelInfo],
            responses=error_responses(401))
async def list_models(request: Request) -> Response:
    return json_response(request.app.state.service.list_models(full_reasons(request)))


@router.get("/models/{name}", summary="Every version of one model, with quality reports",
            response_model=list[ModelInfo],
            responses=error_responses(401, 404))
async def get_model(name: str, request: Request) -> Response:
    service = request.app.state.service
    versions = [m for m in service.list_models(full_reasons(request)) if m["name"] == name]
    if not versions:
        raise ModelNotFound(f"model {name!r} is not served")
    log = prediction_log.of(service)
    if log is not None and log.index is not None:  # joined feedback of every worker of this replica (the index)
        quality = await asyncio.to_thread(log.index.quality, name)
        for entry in versions:
            if "version" in entry:
                entry["live_quality"] = quality.get(str(entry["version"]),
                                                    {"feedback": 0, "correct": 0, "accuracy": None})
    return json_response(versions)




def published_card(root: Path, name: str, version: str) -> bytes:
    """The model card of a version as the repository counts them (app.repository.version_dirs: not a dot-folder,
    a number, a bertserve.json) whose real place is inside the repository; else ModelNotFound, never naming a path."""
    missing = ModelNotFound(f"model {name!r} has no published version {version!r}")
    if name.startswith(".") or not (version.isascii() and version.isdigit()):
        raise missing
    folder = root / name / version
    try:
        card = inside(root, inside(root, folder) / CARD_FILE)  # before anything there is looked at
        if not (folder / CONFIG_FILE).is_file():
            raise missing
        if not card.is_file():
            raise ModelNotFound(f"model {name!r} version {version} has no model card (published before cards were)")
        return card.read_bytes()
    except ModelLoadError:  # its message names paths
        raise ModelNotFound(f"model {name!r} version {version}: outside the model repository (refused)") from None
    except (OSError, ValueError):  # a name no file system holds (a NUL byte, too long), or unreadable
        raise missing from None


@router.get("/models/{name}/versions/{version}/card", summary="The model card (README.md, Hugging Face format) of "
            "a published version of the repository, loaded or not", response_class=Response,
            responses={200: {"content": {"text/markdown": {}}}, **error_responses(401, 404)})
async def model_card(name: str, version: str, request: Request) -> Response:
    card = published_card(request.app.state.service.settings.model_repository, name, version)
    return Response(card, media_type="text/markdown; charset=utf-8")


@asynccontextmanager
async def _audited(request: Request, action: str, name: str):
    """An admin call in the audit log (app.audit): a record before it runs (with BERTSERVE_AUDIT_REQUIRED, one
    that cannot be written refuses the call: 503), one with its outcome after. Callers by key fingerprint only."""
    route, token = f"/admin/models/{{name}}/{action}", bearer_token(request.scope["headers"])
    address = (request.scope.get("client") or ("unknown",))[0]
    audit.admin_call(route, token, address, name)
    status, reason = 200, None
    try:
        yield
    except ServiceError as exc:
        status, reason = STATUSES[exc.kind][0], exc.message
        raise
    except Exception:
        status, reason = 500, "internal error"
        raise
    finally:
        audit.event("admin", "ok" if status == 200 else "failed", route=route, status=status,
                    caller=audit.caller(token), client=address, model=name, reason=reason)


@admin_router.post("/admin/models/{name}/load", summary="Load (or reload) a model's versions from the repository, "
                   "in the worker that receives the call", response_model=list[ModelInfo], responses=_ADMIN_ERRORS)
async def admin_load(name: str, request: Request) -> Response:
    """Acts on this worker only, as unload does; a name the repository does not have is 404 and leaves nothing."""
    service: Service = request.app.state.service
    async with _audited(request, "load", name):
        await service.admin_load(name)
    return json_response([m for m in service.list_models() if m["name"] == name])


@admin_router.post("/admin/models/{name}/unload", summary="Drain and unload every version of a model, in the "
                   "worker that receives the call", responses=_ADMIN_ERRORS)
async def admin_unload(name: str, request: Request) -> Response:
    """Acts on this worker only: with several workers (BERTSERVE_WORKERS) the others keep serving the model, so
    the answer says which worker it was. To take a model out of every worker and replica, change the repository
    (serving.json, or remove the model's folder): every worker follows it on its next scan."""
    async with _audited(request, "unload", name):
        await request.app.state.service.admin_unload(name)
    return json_response({"name": name, "state": "unloaded", "scope": f"this worker (pid {os.getpid()}); with "
                          "several workers or replicas, use the repository (serving.json, or remove the folder)"})


@router.get("/metrics", summary="Prometheus metrics (all workers)", response_class=Response,
            responses=error_responses(401))
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
