"""App factory and lifespan: load models in the background, serve, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import __version__, audit, metrics, prediction_log, shutdown, tracing
from app.api import errors, explain, feedback, http_limits, operations, predict, rerank, v2, vllm
from app.api.middleware import RequestContextMiddleware
from app.api.predict.schemas import PredictRequest
from app.api.security import SCHEMES, AuthMiddleware, Keys, route_group
from app.logs import log_config
from app.service import Service
from app.settings import Settings

log = logging.getLogger("bertserve")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    service = Service(settings)
    audit_log = audit.open_log(settings)  # this worker's audit chain, start record written (AuditError: required)
    predictions = prediction_log.open_log(settings, service)  # None unless a sink is set; its writer thread runs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        metrics.forget_dead_workers()
        tracing.setup()  # from the OTEL_* variables; with none, nothing is set up
        servers = []
        if settings.grpc_port:  # imported only here: its stubs cannot share a process with tritonclient.grpc's
            from app.api.grpc import server as grpc_server

            servers.append(await grpc_server.start(service, settings, keys))
        shutdown.install(service, settings.drain_timeout_s, servers)  # SIGTERM: stop listening, answer all, close
        # Models load after start-up so liveness answers at once and readiness says "loading" meanwhile.
        background = [asyncio.create_task(service.load_all())]
        if settings.poll_interval_s:
            background.append(asyncio.create_task(service.poll()))
        if audit_log is not None:  # authentication refusals, counted in memory, written once a minute
            background.append(asyncio.create_task(audit_log.flush_every_minute()))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for server in servers:  # already stopped after a drain; else its calls are cancelled now
                await server.stop(None)
            served = service.list_models()
            await service.close()
            audit.close_log(served)  # the refusals still counted, then the stop record
            if predictions is not None:  # what is queued is written (bounded), then the sinks close
                await asyncio.to_thread(predictions.close)
            await asyncio.to_thread(tracing.shutdown)  # exports the spans still buffered
            metrics.mark_worker_dead(os.getpid())

    app = FastAPI(
        title="bertserve",
        version=__version__,
        description="Serves BERT-family text classifiers from ONNX models with dynamic batching.",
        lifespan=lifespan,
        # Metrics are Prometheus (app.metrics); FastAPI's native OpenTelemetry would otherwise look up the global
        # OTel providers on every request, ~6 % of the event loop's work per prediction (measured).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    keys = app.state.keys = Keys(settings)  # who may call what, and who is told failure reasons in full
    errors.install(app)
    # Each protocol's routes go straight into the app's table, /predict's first: Starlette tries routes in order,
    # and FastAPI resolves an included router's routes per request through its include layers (measured: 6 % of
    # the event loop's CPU per prediction). Their prefixes and tags are already in their routes; none has dependencies.
    routers = [predict.router, v2.router, explain.router, rerank.router, vllm.router, feedback.router,
               operations.router]
    if keys.admin_served:
        routers.append(operations.admin_router)
    app.router.routes[:0] = [route for router in routers for route in router.routes]
    _log_access_policy(settings, keys)
    http_limits.configure(settings)  # this worker's transport limits (the protocol class reads them), logged
    if keys.enforced:  # innermost of the layers: CORS preflights and request ids come before it
        app.add_middleware(AuthMiddleware, keys=keys)
    if settings.cors_origins:
        # Every request header the API reads, and every response header it documents, so browsers may use them.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "Content-Encoding", "X-Request-ID",
                                          "X-Routing-Key", "Inference-Header-Content-Length"],
                           expose_headers=["X-Model-Name", "X-Model-Version", "X-Request-ID", "X-Truncated-Texts",
                                           "Retry-After", "Inference-Header-Content-Length", "WWW-Authenticate"])
    app.add_middleware(RequestContextMiddleware, log_access=settings.access_log, service=service)
    _add_request_schema(app, keys)
    return app


def _log_access_policy(settings: Settings, keys: Keys) -> None:
    """One start-up line on who may call what (counts, never keys); a warning when admin routes are open."""
    admin = "admin key" if keys.admin else "OPEN (BERTSERVE_ADMIN_WITHOUT_KEY)" if keys.admin_served else "not served"
    log.info("access: %d client key(s) and %d admin key(s) loaded; prediction and model routes: %s; /admin: %s; "
             "/metrics: %s", len(keys.client), len(keys.admin), "client key" if keys.client else "open", admin,
             "key" if keys.needs("metrics") else "open")
    if settings.admin_without_key:
        log.warning("BERTSERVE_ADMIN_WITHOUT_KEY is set: anyone who reaches this port can load and unload models; "
                    "use it only on a trusted network, or set BERTSERVE_ADMIN_API_KEYS")
    if settings.protect_metrics and not keys.enforced:
        log.warning("BERTSERVE_PROTECT_METRICS is set but no key is configured: /metrics stays open")


def _add_request_schema(app: FastAPI, keys: Keys) -> None:
    """/predict reads its body itself (one-pass validation from bytes); publish that body's schema. And the two
    security schemes, on each operation as app.api.security decides them (one source for the rule and its doc)."""
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default_openapi()
            request_schema = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(request_schema.pop("$defs", {}))
            components["PredictRequest"] = request_schema
            schema["components"]["securitySchemes"] = SCHEMES
            for path, operations in schema.get("paths", {}).items():
                security = keys.openapi_security(route_group(path))
                for operation in operations.values():
                    operation.pop("security", None)
                    if security:
                        operation["security"] = security
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
