"""Request IDs: accept the caller's X-Request-ID (or make one, app.api.accounting's rule, as gRPC does), echo it,
and put it on every log line; optionally one access-log line per request (method, path, status, duration, and
the trace id of a traced prediction; never the body, nor the query); while the server drains, every response
closes its connection."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.accounting import request_id_for
from app.api.errors import error_response
from app.logs import exception_summary, request_id
from app.record import current

access_log = logging.getLogger("bertserve.access")
log = logging.getLogger("bertserve.api")


class RequestContextMiddleware:
    """Plain ASGI (no BaseHTTPMiddleware): one header and one context variable per request."""

    def __init__(self, app: ASGIApp, log_access: bool = False, service: Any = None) -> None:
        self.app = app
        self.log_access = log_access
        self.service = service  # anything with a `draining` flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = request_id_for(None if given is None else given.decode("latin-1"))
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
                if self.service is not None and self.service.draining and not any(
                    k.lower() == b"connection" for k, _ in headers
                ):
                    headers.append((b"connection", b"close"))  # the client opens its next connection elsewhere
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running once the drain bound has passed: answered as any request
            # refused while draining (503 JSON, Connection: close), not with uvicorn's 500 text and a traceback.
            if self.service is None or not self.service.draining:
                raise
            if status == 0:
                await error_response(503, "the server shut down before this request was answered; retry on "
                                     "another replica", "unhealthy")(scope, receive, send_with_id)
            else:  # part of the answer is out: uvicorn closes the connection
                log.warning("a response was cut short by the end of the drain")
        except Exception as exc:
            # Answered here and not re-raised: the server would log the exception with its message, which may
            # quote the client's text. Logged once, as type and place.
            log.error("unhandled %s", exception_summary(exc))
            if status == 0:
                await error_response(500, "internal error", "internal")(scope, receive, send_with_id)
        finally:
            if self.log_access:
                record = current.get()  # a prediction's record (app.record): its trace id once traced
                trace = record.trace_id if record is not None else None
                access_log.info(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, (time.perf_counter() - started) * 1e3,
                    extra={"trace_id": trace} if trace else None,
                )
            request_id.reset(token)
