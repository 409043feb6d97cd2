"""Limits on the HTTP transport, where uvicorn has none (DESIGN.md §5): uvicorn's httptools protocol with a
deadline for receiving a request, caps on its head, and a cap on open connections. `bertserve serve` hands the
class to uvicorn; ASGI middleware could not do this (it runs once a request's head has been parsed).

- Read deadline (`BERTSERVE_REQUEST_READ_TIMEOUT_S`): armed when a connection opens, and when a later request
  has not come whole in the read that brought its first bytes; disarmed once the request's head and body are in.
  Past it: 408 when part of a request has arrived and nothing is being answered on the connection, else the
  connection is closed (after the answer under way, if any). Time the server itself holds reading back (a
  pipelined request waiting its turn, a body the app has not taken yet) does not count against the client. Idle
  time between requests is uvicorn's keep-alive timeout (5 s).
- Head caps (`BERTSERVE_MAX_HEADER_BYTES`, `BERTSERVE_MAX_HEADERS`): 431 and close. Bytes are counted per read and
  a head that came in one read is measured at its end, so a head holds at most the cap plus one read in memory.
- Connection cap (`BERTSERVE_MAX_CONNECTIONS`, per worker, so file descriptors remain for model, metric and
  repository files): a connection past it is answered 503 at once, without reading its request, and closed. The
  gRPC port holds to the same cap (app.api.grpc.server); by default the files the reserve leaves are split
  between the two.

Answers are the API's JSON error shape with `Connection: close`. After one, what the client still sends is read
and dropped until it closes its side, for a second at most, and then the connection is closed: closing with bytes
unread sends a reset, and a reset can destroy the answer before the client has read it. Hot path: a timer per
connection, and per request that takes more than one read; a few integer operations per read and per request.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import STATUS
from app.errors import HeadersTooLarge, RequestTimeout, ServiceError, TooManyConnections

log = logging.getLogger("bertserve")

AUTO_MAX_CONNECTIONS = 4096  # the most BERTSERVE_MAX_CONNECTIONS=0 chooses, however many files are allowed
LINGER_S = 1.0  # after an answer that closes, the most time given to the client to stop sending (see above)
LINGER_SLOTS = 16  # shed connections that may linger so at once, beyond the cap; the rest are closed at once


def file_reserve(limit: int) -> int:
    """File descriptors kept for everything but held client connections: model and tokenizer files, metric
    files, repository scans, logs, the listener, shed connections lingering (LINGER_SLOTS)."""
    return max(64, limit // 8)


def open_file_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def auto_max_connections(limit: int | None, ports: int = 1) -> int:
    """BERTSERVE_MAX_CONNECTIONS=0: what the open-file limit leaves after the reserve, shared equally by the `ports`
    served (HTTP, and gRPC unless BERTSERVE_GRPC_PORT=0), at most 4096 each."""
    if limit is None:
        return AUTO_MAX_CONNECTIONS
    return max(8, min(AUTO_MAX_CONNECTIONS, (limit - file_reserve(limit)) // ports))


def ports(settings: Any) -> int:
    """Listening ports of a worker, each holding up to the connection cap: HTTP, and gRPC when served."""
    return 2 if getattr(settings, "grpc_port", 0) else 1


def _answer(error: ServiceError, *headers: bytes) -> bytes:
    body = orjson.dumps({"error": error.message, "error_type": error.kind})
    head = [STATUS_LINE[STATUS[error.kind]], b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body), *headers, b"connection: close\r\n\r\n"]
    return b"".join(head) + body


class Answers(NamedTuple):
    """The transport's own answers, built once and written as they are."""

    timeout: bytes
    head_too_large: bytes
    too_many_headers: bytes
    too_many_connections: bytes


@dataclass(frozen=True)
class Limits:
    read_timeout_s: float
    max_header_bytes: int
    max_headers: int
    max_connections: int  # per port: HTTP's, and gRPC's too
    ports: int = 1

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        served = ports(settings)
        return cls(settings.request_read_timeout_s, settings.max_header_bytes, settings.max_headers,
                   settings.max_connections or auto_max_connections(open_file_limit(), served), served)

    def answers(self) -> Answers:
        return Answers(
            _answer(RequestTimeout(f"the request did not arrive whole within {self.read_timeout_s:g} s")),
            _answer(HeadersTooLarge(f"request head (request line and headers) over {self.max_header_bytes} bytes")),
            _answer(HeadersTooLarge(f"request with over {self.max_headers} header fields")),
            _answer(TooManyConnections(f"this server holds {self.max_connections} connections per worker, its "
                                       "most: retry shortly"), b"retry-after: 1\r\n"),
        )


_limits: Limits | None = None
_answers: Answers | None = None


def configure(settings: Any) -> Limits:
    """Set this process's limits (the app factory calls it in each worker, before connections come) and log them."""
    global _limits, _answers
    _limits = Limits.from_settings(settings)
    _answers = _limits.answers()
    limit = open_file_limit()
    log.info("HTTP limits per worker: %d connections%s (open files allowed: %s), request head %d bytes and %d "
             "fields, %g s to receive a request", _limits.max_connections, " (and as many on gRPC)" * (
                 _limits.ports > 1), limit or "unlimited", _limits.max_header_bytes, _limits.max_headers,
             _limits.read_timeout_s)
    if limit is not None and _limits.max_connections * _limits.ports > limit - file_reserve(limit):
        log.warning("BERTSERVE_MAX_CONNECTIONS=%d on %d port(s) leaves fewer than %d of the %d open files allowed "
                    "for models, metrics and repository scans: raise the limit (ulimit -n) or lower the setting",
                    _limits.max_connections, _limits.ports, file_reserve(limit), limit)
    return _limits


class _Refused(Exception):
    """Raised in a parser callback: stops the parser (uvicorn then calls send_400_response, answered 431 here)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above (see the module's docstring)."""

    _shed_count = 0  # connections shed since the last warning (per worker)
    _shed_logged_at = float("-inf")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _limits is None:  # served without the app factory having run here (not bertserve's way): from the env
            from app.settings import Settings

            configure(Settings())
        self.limits: Limits = _limits  # type: ignore[assignment]
        self.answers: Answers = _answers  # type: ignore[assignment]
        self.read_deadline: asyncio.TimerHandle | None = None
        self.receiving = False  # between a request's first byte and its last
        self.in_head = True  # the next bytes belong to a request's head
        self.head_bytes = 0  # bytes read while in a head (at most one read short: counted per read)
        self.refusal: bytes | None = None  # the answer to the parser error a callback caused
        self.finishing = False  # answered and closing: nothing more is read

    # -- connection cap --------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._shed()
        else:
            self._arm()

    def _shed(self) -> None:
        # Before its request is read: a server may answer early (RFC 9112, 9.6).
        if len(self.connections) > self.limits.max_connections + LINGER_SLOTS:  # a flood: files come first
            self.transport.write(self.answers.too_many_connections)
            self.transport.close()
        else:
            self._finish(self.answers.too_many_connections)
        cls = LimitedHttpToolsProtocol
        cls._shed_count += 1
        if self.loop.time() - cls._shed_logged_at >= 10:  # a flood must not flood the log
            log.warning("connection limit reached (%d per worker, BERTSERVE_MAX_CONNECTIONS): %d new connection(s) "
                        "answered 503", self.limits.max_connections, cls._shed_count)
            cls._shed_count, cls._shed_logged_at = 0, self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- reading ---------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.finishing:
            return
        if self.in_head:
            self.head_bytes += len(data)  # may count body bytes too (checked precisely at the head's end)
        super().data_received(data)
        if self.receiving and not (self.finishing or self.transport.is_closing()):  # a request is partly in
            if self.in_head and self.head_bytes > self.limits.max_header_bytes:
                self._refuse(self.answers.head_too_large)
            elif self.read_deadline is None:  # a request that came whole in one read never needs a timer
                self._arm()

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to a parser error
        if self.refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(self.refusal)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.receiving = True

    def on_headers_complete(self) -> None:
        # Fields are counted once the head is in: its byte cap has bounded how many there can be meanwhile.
        if len(self.headers) > self.limits.max_headers:
            self.refusal = self.answers.too_many_headers
            raise _Refused
        # A head that came whole in one read was not counted by data_received: measured here, when the read was
        # larger than the cap (it may hold body bytes too).
        if self.head_bytes > self.limits.max_header_bytes and (
                len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers) > self.limits.max_header_bytes):
            self.refusal = self.answers.head_too_large
            raise _Refused
        self.in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.receiving = False
        self.in_head = True
        self.head_bytes = 0
        if self.read_deadline is not None:
            self._disarm()
        super().on_message_complete()

    # -- read deadline ---------------------------------------------------------------------------------------
    def _arm(self) -> None:
        self.read_deadline = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    def _read_timed_out(self) -> None:
        self.read_deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused or self.pipeline:  # the server holds this request back, not the client
            self._arm()
            return
        if not self.receiving:  # no byte of a request since the connection opened: nothing to answer
            self.transport.close()
        elif self.in_head:
            self._refuse(self.answers.timeout)
        elif self.cycle is not None and not self.cycle.response_started:
            # Its head is in and the app waits for the body: answer for the app.
            self.cycle.disconnected = True  # the app's receive() now says "disconnect" and its answer is dropped
            self.cycle.message_event.set()
            self._finish(self.answers.timeout)
        else:  # answered already (before reading the whole body): the rest of the body is not awaited
            self.transport.close()

    def _refuse(self, answer: bytes) -> None:
        """Answer `answer` and close; while an earlier request on this connection is still being answered, close
        after that answer instead (never write into it), reading nothing more meanwhile."""
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete and self.in_head:
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._finish(answer)

    def _finish(self, answer: bytes) -> None:
        """Write `answer` (it says `Connection: close`) and close once the client stops sending (see above)."""
        self._disarm()
        self.finishing = True
        self.flow.resume_reading()  # to drain what the client still sends
        self.transport.write(answer)
        self.read_deadline = self.loop.call_later(min(LINGER_S, self.limits.read_timeout_s), self.transport.close)
