"""Shutdown on SIGTERM that loses no request, at the depth where requests get lost: uvicorn's listener and its
open connections.

uvicorn's own shutdown closes the listener (resetting connections still in the kernel's accept queue) and at
the same moment closes every keep-alive connection that is idle *as far as the server has read* — while a
client may just have sent its next request down it. Under steady keep-alive load both lose requests. So, on
SIGTERM, in this order:

1. Draining starts: readiness turns 503, new work is answered 503 with `Connection: close`, and every response
   from now on closes its connection (app.api.middleware).
2. The listener stops: first the kernel is told to drop new connection attempts (a drop-all socket filter on
   the listening socket, Linux, when this process owns it — clients retry their SYN and then meet a refusal);
   the connections it already accepted on our behalf are taken and served; only when its accept queue is
   empty is the listening socket closed, so none is reset.
3. Everything received on open connections is answered: work in the batchers finishes (with its real answer),
   and each busy connection closes after its answer.
4. An idle connection is closed only once it has been idle for a grace period with no unread bytes in its
   socket: a client that keeps posting sends its next request first and gets its 503 + `Connection: close`.
5. Then uvicorn's own shutdown runs, finds nothing left, and the process exits 0 — all within
   BERTSERVE_DRAIN_TIMEOUT_S; past it, a request still running is cancelled and answered 503 (`unhealthy`,
   JSON, `Connection: close`: app.api.middleware) and whatever remains is closed.

Multi-worker servers share one listening socket (uvicorn's supervisor holds it): each worker stops accepting
and drains as above, but the socket filter is not used there (a SIGHUP restart reuses the socket).

The gRPC server (app.api.grpc.server) drains alongside: from step 1 a new call is held; after step 3 the server
sends GOAWAY, the held calls are refused UNAVAILABLE (as the service refuses new work while draining) and the
server stops, within the same bound."""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import fcntl
import logging
import os
import signal
import socket
import struct
import sys
import termios
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("bertserve")

SO_ATTACH_FILTER = 26  # linux/asm-generic/socket.h
_LISTEN = 10  # TCP_LISTEN in tcp_info.tcpi_state


def refuse_new_connections(sock: Any) -> bool:
    """Attach a one-instruction classic BPF filter (`ret #0`: drop) to a listening socket: the kernel then drops
    new SYNs and handshake ACKs for it, so its accept queue can only shrink. False where that is not possible."""
    if sys.platform != "linux":
        return False
    insn = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET | BPF_K, k = 0
    program = struct.pack("HP", 1, ctypes.addressof(insn))  # struct sock_fprog {len; *filter}
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        return True
    except OSError as exc:
        log.warning("could not stop new connections on the listener before closing it: %s", exc)
        return False


def accept_queue_length(sock: Any) -> int:
    """Connections the kernel has accepted on a listening socket that the server has not taken yet (Linux
    tcp_info: tcpi_unacked is the accept queue length for a listener); 0 where unknown."""
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            info = struct.unpack_from("8B6I", dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104))
    except (OSError, struct.error, AttributeError):
        return 0
    return info[12] if info[0] == _LISTEN else 0


def unread_bytes(transport: Any) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    except (OSError, ValueError):
        return 0


def _busy(connection: Any) -> bool:
    cycle = getattr(connection, "cycle", None)
    return bool(getattr(connection, "pipeline", None)) or (cycle is not None and not cycle.response_complete)


class GracefulShutdown:
    """Installed by the app's lifespan, inside the uvicorn worker: takes SIGTERM from uvicorn's handler, runs
    the steps above, then hands over to it."""

    def __init__(self, service: Any, timeout_s: float, servers: Sequence[Any] = ()) -> None:
        self.service = service
        self.timeout_s = timeout_s
        self.servers = servers  # other listeners (gRPC, `await stop(grace_s)`) that stop and drain with HTTP
        self.idle_grace_s = min(1.0, timeout_s / 4)
        self.uvicorn_handler = signal.getsignal(signal.SIGTERM)
        server = getattr(self.uvicorn_handler, "__self__", None)
        # uvicorn's Server, found through the handler it installed (its listeners exist only after the lifespan
        # has started: read at SIGTERM); without it (another server), drain only.
        self.server = server if hasattr(server, "server_state") and hasattr(server, "config") else None
        self.loop = asyncio.get_running_loop()
        self.started = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self.started:  # a second SIGTERM: stop now
            self.hand_over(signum, frame)
            return
        self.started = True
        self.service.stop_admitting()  # from here, every answer closes its connection
        # A fresh context: the handler may have interrupted a request, whose request id must not follow.
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.run(signum)), context=contextvars.Context())

    def hand_over(self, signum: int, frame: Any) -> None:
        if callable(self.uvicorn_handler):
            self.uvicorn_handler(signum, frame)

    async def run(self, signum: int) -> None:
        log.info("SIGTERM: draining for at most %.1f s (BERTSERVE_DRAIN_TIMEOUT_S)", self.timeout_s)
        start = self.loop.time()
        # Leaves uvicorn's own shutdown its moment, in proportion: a short bound still drains most of its time.
        deadline = start + self.timeout_s - min(0.5, self.timeout_s / 4)
        try:
            if self.server is not None:
                await self.stop_listening(min(deadline, start + 1.0))
            left = await self.service.drain(max(0.0, deadline - self.loop.time()))
            for other in self.servers:  # gRPC: GOAWAY, then the calls held since SIGTERM are refused
                await other.stop(max(0.0, deadline - self.loop.time()))
            if left:  # uvicorn then cancels their requests, which are answered 503 (app.api.middleware)
                log.warning("drain bound (BERTSERVE_DRAIN_TIMEOUT_S=%.1f s) reached with %d sequence(s) unanswered; "
                            "their requests are answered 503", self.timeout_s, left)
            if self.server is not None:
                await self.close_connections(deadline)
            else:  # answer 503 + close for a moment, so keep-alive clients learn of it from an answer
                await asyncio.sleep(min(self.idle_grace_s, max(0.0, deadline - self.loop.time())))
        except Exception:
            log.exception("graceful shutdown failed; stopping")
        if self.server is not None:  # whatever is left gets the remaining time, not another full drain
            self.server.config.timeout_graceful_shutdown = max(0.1, start + self.timeout_s - self.loop.time())
        log.info("drained in %.2f s; stopping", self.loop.time() - start)
        self.hand_over(signum, None)

    async def stop_listening(self, until: float) -> None:
        servers = list(getattr(self.server, "servers", ()))
        listeners = [sock for srv in servers for sock in (srv.sockets or ())]
        if self.server.config.workers == 1 and all([refuse_new_connections(s) for s in listeners]):
            # The kernel takes no new connection now; let the event loop take what it already accepted.
            while any(accept_queue_length(s) for s in listeners) and self.loop.time() < until:
                await asyncio.sleep(0.005)
        for srv in servers:
            srv.close()
        log.info("stopped listening")

    async def close_connections(self, deadline: float) -> None:
        idle_since: dict[int, tuple[Any, float]] = {}
        connections = self.server.server_state.connections
        while connections and self.loop.time() < deadline:
            now = self.loop.time()
            for connection in list(connections):
                if _busy(connection):
                    connection.shutdown()  # uvicorn's: answer, then close (Connection: close)
                    idle_since.pop(id(connection), None)
                    continue
                cycle = getattr(connection, "cycle", None)
                seen = idle_since.get(id(connection))
                if seen is None or seen[0] is not cycle or unread_bytes(connection.transport):
                    idle_since[id(connection)] = (cycle, now)  # newly idle, or a request is arriving
                elif now - seen[1] >= self.idle_grace_s:
                    connection.shutdown()  # idle: closes it
                    idle_since.pop(id(connection), None)
            await asyncio.sleep(0.02)
        if connections:
            log.warning("drain limit reached with %d connection(s) open; closing them", len(connections))
            for connection in list(connections):
                connection.shutdown()


def install(service: Any, timeout_s: float, servers: Sequence[Any] = ()) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():  # signals are the main thread's (uvicorn: same)
        GracefulShutdown(service, timeout_s, servers).install()


def exit_zero_after_uvicorn() -> None:
    """In the process that runs uvicorn: uvicorn re-raises SIGTERM once its graceful shutdown is over, under the
    handler found at start. Make that handler a clean exit, since a drained shutdown is a success (status 0)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
