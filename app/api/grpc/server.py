"""The gRPC server of one worker: started by the app's lifespan on BERTSERVE_GRPC_PORT, in the same event loop and
over the same Service (batchers, router, registry) as HTTP; drained and stopped with it (app.shutdown). With several
workers each binds the port with SO_REUSEPORT and the kernel spreads connections among them; with one, the port is
bound exclusively, so another process already on it is an error at start rather than a silent split of traffic.

Draining loses no call. gRPC's core cancels (CANCELLED, unanswered) every call that reaches it once its shutdown has
begun, until the client has read the GOAWAY. So from SIGTERM a new call is held (app.api.grpc.servicer); once the
work accepted before is answered, shutdown begins (GOAWAY: a client's next call goes to another replica or fails
UNAVAILABLE at connect) and only then are the held calls answered: refused UNAVAILABLE, as the service refuses
new work while draining. A client waiting on its call sends nothing into that window. Shutdown also cancels the
calls gRPC has received but not yet handed to the servicer (its loop takes them one at a time), so it begins only
once the number of held calls has stopped growing."""

from __future__ import annotations

import asyncio
import logging

import grpc

from app.api.grpc.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from app.api.grpc.servicer import Servicer
from app.api.security import Keys
from app.service import Service
from app.settings import Settings

log = logging.getLogger("bertserve")
GOAWAY_LEAD_S = 0.25
QUIET_S = 0.1


class GrpcServer:
    def __init__(self, server: grpc.aio.Server, servicer: Servicer) -> None:
        self.server = server
        self.servicer = servicer

    async def stop(self, grace_s: float | None) -> None:
        """Begin the shutdown (GOAWAY), then answer the held calls; the calls running get `grace_s` to finish (None:
        cancelled now)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + (grace_s or 0.0) / 2
        held = -1  # calls gRPC has received but not yet handed to us would be cancelled: wait until all are held
        while held != self.servicer.held and loop.time() < until:
            held = self.servicer.held
            await asyncio.sleep(QUIET_S)
        stopping = asyncio.ensure_future(self.server.stop(grace_s))
        # The GOAWAY leaves on gRPC's own threads: give it a round trip's head start over the held answers.
        await asyncio.wait([stopping], timeout=min(GOAWAY_LEAD_S, grace_s or 0.0))
        self.servicer.release.set()
        await stopping


async def start(service: Service, settings: Settings, keys: Keys) -> GrpcServer:
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),  # past it: RESOURCE_EXHAUSTED, as HTTP's 413
        ("grpc.so_reuseport", int(settings.workers > 1)),
    ])
    servicer = Servicer(service, keys)
    add_GRPCInferenceServiceServicer_to_server(servicer, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:  # the same certificate as HTTPS
        pair = (settings.ssl_keyfile.read_bytes(), settings.ssl_certfile.read_bytes())
        server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
    else:
        server.add_insecure_port(address)  # raises RuntimeError when the port cannot be bound
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s%s", address, " with TLS" if settings.ssl_certfile else "")
    return GrpcServer(server, servicer)
