"""The six RPCs of `inference.GRPCInferenceService` over app.protocol.v2 (the same rules as the HTTP V2 routes), the
client and admin keys as `authorization: Bearer <key>` metadata (app.api.security decides who may call what, as
for the HTTP route each RPC mirrors), errors as gRPC status codes (app.api.errors.STATUSES, the same kinds HTTP
answers), the client's deadline as the request's, and ModelInfer accounted for as an HTTP prediction is
(app.api.accounting: bertserve_requests_total with protocol "grpc", its duration and trace). ModelInfer's body is
decoded only once its key is checked (handlers()): one that is not protobuf is INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from app import audit
from app.api import accounting
from app.api.errors import STATUSES
from app.api.grpc import codec
from app.api.grpc import grpc_predict_v2_pb2 as pb
from app.api.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from app.api.security import Keys, bearer_token, refused, route_group
from app.errors import InvalidInput, ServiceError
from app.logs import exception_summary, request_id
from app.protocol import v2
from app.record import current
from app.service import Service

log = logging.getLogger("bertserve.api")
SERVICE = "inference.GRPCInferenceService"
# The HTTP route each RPC mirrors: who may call it is decided for both alike (app.api.security.route_group).
_ROUTES = {"ServerLive": "/v2/health/live", "ServerReady": "/v2/health/ready", "ServerMetadata": "/v2",
           "ModelReady": "/v2/models", "ModelMetadata": "/v2/models", "ModelInfer": "/v2/models"}


class Servicer(GRPCInferenceServiceServicer):
    def __init__(self, service: Service, keys: Keys) -> None:
        self.service = service
        self.keys = keys
        self.release = asyncio.Event()  # set once the server's shutdown has begun (app.api.grpc.server)
        self.held = 0  # calls waiting for it

    async def _call(self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Any]],
                    counted: bool = False) -> Any:
        """Request id, key check, then the work; an error becomes its status code with its (client-safe) message.
        A counted call (inference) has a record and is accounted for as an HTTP prediction is (app.api.accounting):
        by model, answering version and the HTTP status of the same outcome, so one error-rate query covers both
        protocols."""
        metadata = context.invocation_metadata() or ()
        rid = accounting.request_id_for(
            next((v for k, v in metadata if k == "x-request-id" and isinstance(v, str)), None))
        request_id.set(rid)  # each RPC runs in its own task: the id stays with it
        context.set_trailing_metadata((("x-request-id", rid),))
        record = accounting.start("grpc", rpc, None, f"/{SERVICE}/{rpc}", metadata) if counted else None
        status, code = 500, grpc.StatusCode.INTERNAL
        try:
            if self.service.draining:  # held until GOAWAY is out, so the client's next call goes elsewhere
                self.held += 1
                try:
                    await self.release.wait()
                finally:
                    self.held -= 1
            self._authorize(rpc, metadata, context)
            answer = await work()
            status, code = 200, grpc.StatusCode.OK
            return answer
        except ServiceError as exc:
            status, code = _codes(*STATUSES[exc.kind])
            await self._abort(context, exc.kind, exc.message, exc.retry_after_s)
        except asyncio.CancelledError:  # the client left or its deadline passed, or the drain bound passed
            status, code = _codes(*accounting.cancelled(self.service))
            raise
        except Exception as exc:  # logged without its message (it may quote the client's text)
            log.error("unhandled in gRPC %s: %s", rpc, exception_summary(exc))
            await self._abort(context, "internal", "internal error")
        finally:
            if record is not None:
                accounting.finish(self.service, record, status, code)

    def _authorize(self, rpc: str, metadata: Any, context: grpc.aio.ServicerContext) -> None:
        """The HTTP route's key check (app.api.security), on the call's `authorization` metadata; a refusal is
        counted in the audit log (app.audit) by key fingerprint and the peer's address."""
        if not self.keys.enforced:  # no key configured: every call is open
            return
        headers = [(k.encode(), v.encode()) for k, v in metadata if k == "authorization" and isinstance(v, str)]
        group, token = route_group(_ROUTES[rpc]), bearer_token(headers)
        refusal = self.keys.refusal(group, token)
        if refusal is not None:
            audit.refused(token, _peer_address(context.peer()), group, refusal)
            raise refused(refusal, "metadata authorization: Bearer <key>", "call")

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, kind: str, message: str, retry_after_s: int | None = None):
        code = STATUSES[kind][1]
        log.debug("answered gRPC %s %s: %s", code, kind, message)  # messages never quote client text
        trailers = tuple(context.trailing_metadata() or ())
        if retry_after_s is not None:
            trailers += (("retry-after", str(retry_after_s)),)
        await context.abort(grpc.StatusCode[code], message, trailers)

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

    async def ModelInfer(self, body: bytes, context: grpc.aio.ServicerContext):
        # The body arrives undecoded (handlers()): the key and draining are checked before a byte of it is parsed.
        return await self._call("ModelInfer", context, lambda: self._infer(body, context), counted=True)

    async def _infer(self, body: bytes, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        try:
            request = pb.ModelInferRequest.FromString(body)
        except DecodeError:  # protobuf's message quotes nothing of the body, but say it in our own words
            raise InvalidInput("the request is not a ModelInferRequest (protobuf) message") from None
        record = current.get()
        if record is not None:  # the model asked for, learned from the body (as HTTP routes learn it)
            record.model = request.model_name or None
        name, version = request.model_name, v2.version_of(request.model_version)
        v2.require_model(self.service, name, version)  # an unknown model is NOT_FOUND before its request is read
        parsed, raw = codec.parse_infer(request)
        left_s = context.time_remaining()  # the client's deadline bounds the request's
        routing_key = next((v for k, v in context.invocation_metadata() or () if k == "x-routing-key"), None)
        inferred = await v2.infer(self.service, name, version, parsed, routing_key=routing_key,
                                  timeout_ms=None if left_s is None else max(left_s, 0.001) * 1000)
        return codec.encode_response(inferred, raw)


def handlers(servicer: Servicer) -> dict[str, grpc.RpcMethodHandler]:
    """The six RPCs' handlers, as the generated add_GRPCInferenceServiceServicer_to_server makes them, except that
    ModelInfer gets its body as bytes: grpcio would decode it before the servicer runs, so a body that is not
    protobuf would be answered UNKNOWN, ahead of the key check."""
    def handler(rpc: str) -> grpc.RpcMethodHandler:
        request, response = getattr(pb, f"{rpc}Request"), getattr(pb, f"{rpc}Response")
        return grpc.unary_unary_rpc_method_handler(
            getattr(servicer, rpc), request_deserializer=None if rpc == "ModelInfer" else request.FromString,
            response_serializer=response.SerializeToString)

    return {rpc: handler(rpc) for rpc in _ROUTES}


def add_to_server(servicer: Servicer, server: grpc.aio.Server) -> None:
    """Register the servicer's handlers() as the generated add_GRPCInferenceServiceServicer_to_server does."""
    methods = handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)


def _peer_address(peer: str | None) -> str | None:
    """The client's address of a gRPC peer ("ipv4:127.0.0.1:5555", "ipv6:[::1]:5555"), without its port."""
    if not peer:
        return None
    address = peer.partition(":")[2] if peer.startswith(("ipv4:", "ipv6:")) else peer
    return address.rpartition(":")[0].strip("[]") if peer.startswith(("ipv4:", "ipv6:")) else address


def _codes(status: int, code: str) -> tuple[int, grpc.StatusCode]:
    """An outcome as the status table names it (HTTP status, gRPC code name), with the code as grpc's own."""
    return status, grpc.StatusCode[code]


async def _value(value: Any) -> Any:
    return value
