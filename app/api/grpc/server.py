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
once the number of held calls has stopped growing.

Connections hold to HTTP's budget (app.api.http_limits), in gRPC core's own options: at most the worker's
connection cap (BERTSERVE_MAX_CONNECTIONS, or by default the same share of the open-file limit as HTTP's: the
files the reserve leaves are split between the two ports), a connection past it closed at accept; the TLS
handshake and the client's HTTP/2 preface within BERTSERVE_REQUEST_READ_TIMEOUT_S of connecting (HTTP's deadline
for a first request); a connection with no call under way closed after BERTSERVE_GRPC_IDLE_TIMEOUT_S (GOAWAY: a
client reconnects at its next call); any connection sent GOAWAY after MAX_AGE_S, its calls under way given
their longest deadline (BERTSERVE_MAX_REQUEST_TIMEOUT_MS) before it is closed, so a call that never completes
cannot hold a connection for ever; at most MAX_STREAMS calls at once on one connection (more wait in the
client); keepalive pings without calls refused (gRPC's defaults, made explicit: a client pinging an idle
connection more often than every 5 minutes is sent GOAWAY after 2 strikes)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from app.api.grpc.port import address as grpc_address
from app.api.grpc.port import bind_refusal, refusal_line
from app.api.grpc.servicer import Servicer, add_to_server
from app.api.http_limits import Limits
from app.api.security import Keys
from app.service import Service
from app.settings import Settings

log = logging.getLogger("bertserve")
GOAWAY_LEAD_S = 0.25
QUIET_S = 0.1
MAX_STREAMS = 100  # calls at once per connection (HTTP/2's recommended least); a client queues the rest itself
MAX_AGE_S = 300  # then GOAWAY (gRPC adds +-10 % jitter): bounds a connection held by a call that never completes


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC core's options that hold the port to the budget HTTP holds to (see the module's docstring)."""
    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    return [
        ("grpc.max_allowed_incoming_connections", Limits.from_settings(settings).max_connections),
        ("grpc.server_handshake_timeout_ms", ms(settings.request_read_timeout_s)),
        ("grpc.max_connection_idle_ms", ms(settings.grpc_idle_timeout_s)),
        ("grpc.max_connection_age_ms", ms(MAX_AGE_S)),
        ("grpc.max_connection_age_grace_ms", ms(settings.max_request_timeout_ms / 1000 + 1)),  # calls under way end
        ("grpc.max_concurrent_streams", MAX_STREAMS),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 300_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


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
    options = connection_options(settings)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),  # past it: RESOURCE_EXHAUSTED, as HTTP's 413
        ("grpc.so_reuseport", int(settings.workers > 1)),
        *options,
    ])
    servicer = Servicer(service, keys)
    add_to_server(servicer, server)  # ModelInfer's body undecoded until its key is checked
    address = grpc_address(settings)
    try:
        if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:  # the same certificate as HTTPS
            pair = (settings.ssl_keyfile.read_bytes(), settings.ssl_certfile.read_bytes())
            server.add_secure_port(address, grpc.ssl_server_credentials([pair]))
        else:
            server.add_insecure_port(address)
    except RuntimeError:  # `bertserve serve` checked the port first: taken since, or refused in a way it missed
        why = bind_refusal(settings.host, settings.grpc_port, settings.workers > 1) or "the port could not be bound"
        raise RuntimeError(refusal_line(settings, why)) from None
    await server.start()
    log.info("gRPC (inference.GRPCInferenceService) on %s%s; limits per worker: %d connections, closed after %g s "
             "idle, %d calls at once per connection", address, " with TLS" if settings.ssl_certfile else "",
             dict(options)["grpc.max_allowed_incoming_connections"], settings.grpc_idle_timeout_s, MAX_STREAMS)
    return GrpcServer(server, servicer)
