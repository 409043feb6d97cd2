"""The six RPCs of `inference.GRPCInferenceService` over app.protocol.v2 (the same rules as the HTTP V2 routes), the
client and admin keys as `authorization: Bearer <key>` metadata (app.api.security decides who may call what, as
for the HTTP route each RPC mirrors), errors as gRPC status codes (app.api.errors.GRPC_STATUS), the client's
deadline as the request's, and ModelInfer counted in bertserve_requests_total (protocol "grpc")."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from app import metrics, tracing
from app.api.errors import GRPC_STATUS, STATUS
from app.api.grpc import codec
from app.api.grpc import grpc_predict_v2_pb2 as pb
from app.api.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from app.api.security import Keys, bearer_token, route_group
from app.errors import ServiceError
from app.inference import answered_by
from app.logs import exception_summary, request_id
from app.protocol import v2
from app.service import Service

log = logging.getLogger("bertserve.api")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # as app.api.middleware: echoed and logged, nothing else
CLIENT_CLOSED = 499
# The HTTP route each RPC mirrors: who may call it is decided for both alike (app.api.security.route_group).
_ROUTES = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready", "ServerMetadata": "/v2",
           "ModelReady": "/v2/models", "ModelMetadata": "/v2/models", "ModelInfer": "/v2/models"}


class Refused(Exception):
    """An answer refused before any work: a gRPC status and its message."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, message


class Servicer(GRPCInferenceServiceServicer):
    def __init__(self, service: Service, keys: Keys) -> None:
        self.service = service
        self.keys = keys
        self.release = asyncio.Event()  # set once the server's shutdown has begun (app.api.grpc.server)
        self.held = 0  # calls waiting for it

    async def _call(self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Any]],
                    model: str | None = None, counted: bool = False) -> Any:
        """Request id, key check, then the work; an error becomes its status code with its (client-safe) message.
        A counted call (inference) is counted and timed by model, answering version and the HTTP status of the
        same outcome, so one error-rate query covers both protocols."""
        metadata = context.invocation_metadata() or ()
        given = next((v for k, v in metadata if k == "x-request-id" and isinstance(v, str)), None)
        rid = given if given is not None and _SAFE_ID.match(given) else os.urandom(16).hex()
        request_id.set(rid)  # each RPC runs in its own task: the id stays with it
        context.set_trailing_metadata((("x-request-id", rid),))
        started = time.perf_counter()
        answered_by.set("")
        status, code = 500, "INTERNAL"
        try:
            if self.service.draining:  # held until GOAWAY is out, so the client's next call goes elsewhere
                self.held += 1
                try:
                    await self.release.wait()
                finally:
                    self.held -= 1
            self._authorize(rpc, metadata)
            answer = await work()
            status, code = 200, "OK"
            return answer
        except (ServiceError, Refused) as exc:
            status, code = STATUS[exc.kind], GRPC_STATUS[exc.kind]
            await self._abort(context, exc.kind, exc.message, getattr(exc, "retry_after_s", None))
        except asyncio.CancelledError:  # the client left or its deadline passed, or the drain bound passed
            status, code = (503, "UNAVAILABLE") if self.service.draining else (CLIENT_CLOSED, "CANCELLED")
            raise
        except Exception as exc:  # logged without its message (it may quote the client's text)
            log.error("unhandled in gRPC %s: %s", rpc, exception_summary(exc))
            await self._abort(context, "internal", "internal error")
        finally:
            if counted:
                label, version = self.service.metric_label(model or None), answered_by.get()
                metrics.REQUESTS.labels(label, version, str(status), "grpc", rpc).inc()
                metrics.REQUEST_DURATION.labels(label, version).observe(time.perf_counter() - started)
                if tracing.tracer is not None:  # off: this one check is all it costs
                    tracing.record_grpc("/inference.GRPCInferenceService/" + rpc, metadata, grpc.StatusCode[code],
                                        started, label, version)

    def _authorize(self, rpc: str, metadata: Any) -> None:
        needed = self.keys.needs(route_group(_ROUTES[rpc]))
        if needed is None:
            return
        headers = [(k.encode(), v.encode()) for k, v in metadata if k == "authorization" and isinstance(v, str)]
        role = self.keys.role(bearer_token(headers))
        if role is None:
            raise Refused("unauthorized", "a valid API key is required: metadata authorization: Bearer <key>")
        if needed == "admin" and role != "admin":
            raise Refused("forbidden", "this call needs an admin key (BERTSERVE_ADMIN_API_KEYS)")

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, kind: str, message: str, retry_after_s: int | None = None):
        log.debug("answered gRPC %s %s: %s", GRPC_STATUS[kind], kind, message)  # messages never quote client text
        trailers = tuple(context.trailing_metadata() or ())
        if retry_after_s is not None:
            trailers += (("retry-after", str(retry_after_s)),)
        await context.abort(grpc.StatusCode[GRPC_STATUS[kind]], message, trailers)

    # ---- health and metadata ----

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext):
        return await self._call("ServerLive", context, lambda: _value(pb.ServerLiveResponse(**v2.server_live())))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext):
        async def work():
            return pb.ServerReadyResponse(ready=v2.server_ready(self.service)[0])
        return await self._call("ServerReady", context, work)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext):
        return await self._call("ServerMetadata", context,
                                lambda: _value(pb.ServerMetadataResponse(**v2.server_metadata())))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext):
        async def work():  # not ready is an answer (ready=false), as KServe's; an unknown model is NOT_FOUND
            answer = v2.model_ready(self.service, request.name, v2.version_of(request.version))
            return pb.ModelReadyResponse(ready=answer["ready"])
        return await self._call("ModelReady", context, work)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext):
        async def work():
            data = v2.model_metadata(self.service, request.name, v2.version_of(request.version))
            tensors = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=data["name"], versions=data["versions"], platform=data["platform"],
                inputs=[tensors(**t) for t in data["inputs"]], outputs=[tensors(**t) for t in data["outputs"]])
        return await self._call("ModelMetadata", context, work)

    # ---- inference ----

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext):
        return await self._call("ModelInfer", context, lambda: self._infer(request, context), request.model_name,
                                counted=True)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        name, version = request.model_name, v2.version_of(request.model_version)
        v2.require_model(self.service, name, version)  # an unknown model is NOT_FOUND before its request is read
        parsed, raw = codec.parse_infer(request)
        left_s = context.time_remaining()  # the client's deadline bounds the request's
        routing_key = next((v for k, v in context.invocation_metadata() or () if k == "x-routing-key"), None)
        inferred = await v2.infer(self.service, name, version, parsed, routing_key=routing_key,
                                  timeout_ms=None if left_s is None else max(left_s, 0.001) * 1000)
        return codec.encode_response(inferred, raw)


async def _value(value: Any) -> Any:
    return value
