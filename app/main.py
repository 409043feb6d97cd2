"""App factory and lifespan: load models in the background, serve, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__, metrics
from app.api import errors
from app.api.routes import router
from app.api.schemas import PredictRequest
from app.service import Service
from app.settings import Settings

log = logging.getLogger("bertserve")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Models load after start-up so liveness answers at once and readiness says "loading" meanwhile.
        loading = asyncio.create_task(service.load_all())
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await service.shutdown(settings.drain_timeout_s)
            metrics.mark_worker_dead(os.getpid())

    app = FastAPI(
        title="bertserve",
        version=__version__,
        description="Serves BERT-family text classifiers from ONNX models with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.settings = settings
    errors.install(app)
    app.include_router(router)
    _add_request_schema(app)
    return app


def _add_request_schema(app: FastAPI) -> None:
    """/predict reads its body itself (one-pass validation from bytes); publish that body's schema."""
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default_openapi()
            request_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["PredictRequest"] = request_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
