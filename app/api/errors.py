"""Error kind -> status on both transports, in one table, and the handlers that give every HTTP error one JSON
shape. gRPC answers the same kinds with the table's other column (app.api.grpc.servicer)."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.errors import ServiceError, ShuttingDown, Unauthorized, validation_message

log = logging.getLogger("bertserve.api")

# Each error kind's answer: (HTTP status, gRPC status code as a grpc.StatusCode member name).
STATUSES: dict[str, tuple[int, str]] = {
    "validation": (422, "INVALID_ARGUMENT"),
    "unauthorized": (401, "UNAUTHENTICATED"),
    "forbidden": (403, "PERMISSION_DENIED"),
    "payload_too_large": (413, "RESOURCE_EXHAUSTED"),
    "unsupported_media_type": (415, "INVALID_ARGUMENT"),
    "not_found": (404, "NOT_FOUND"),
    "method_not_allowed": (405, "UNIMPLEMENTED"),
    "conflict": (409, "ALREADY_EXISTS"),
    "overloaded": (429, "RESOURCE_EXHAUSTED"),
    "timeout": (504, "DEADLINE_EXCEEDED"),
    "unhealthy": (503, "UNAVAILABLE"),
    "request_timeout": (408, "DEADLINE_EXCEEDED"),
    "headers_too_large": (431, "RESOURCE_EXHAUSTED"),
    "too_many_connections": (503, "UNAVAILABLE"),
    "backend": (500, "INTERNAL"),
    "internal": (500, "INTERNAL"),
}
STATUS = {kind: http for kind, (http, _) in STATUSES.items()}  # its HTTP column (here and app.api.http_limits)

# Starlette's own HTTP errors (unknown route, wrong method) in the same shape.
_KIND_OF_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                   413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": message, "error_type": kind})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def status_of(exc: BaseException) -> int:
    return STATUS[exc.kind] if isinstance(exc, ServiceError) else 500


def service_error_response(exc: ServiceError) -> Response:
    """The HTTP answer to a service error: its status, the JSON error shape and the headers its kind calls for."""
    log.debug("answered %d %s: %s", STATUS[exc.kind], exc.kind, exc.message)  # messages never quote client text
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    if isinstance(exc, ShuttingDown):
        headers = {"Connection": "close"}  # so the client does not send its next request down this connection
    elif isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}  # the scheme to answer with (RFC 9110 asks it of every 401)
    return error_response(STATUS[exc.kind], exc.message, exc.kind, headers)


async def _service_error(_request: Request, exc: ServiceError) -> Response:
    return service_error_response(exc)


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    kind = _KIND_OF_STATUS.get(exc.status_code, "validation" if exc.status_code < 500 else "internal")
    return error_response(exc.status_code, str(exc.detail), kind, exc.headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    return error_response(422, validation_message(exc.errors()), "validation")


async def _unexpected(_request: Request, exc: Exception) -> Response:
    # Logged once, without its message (which may quote the client's text), by RequestContextMiddleware.
    return error_response(500, "internal error", "internal")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
