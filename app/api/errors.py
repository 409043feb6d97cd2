"""Error kind -> HTTP status, in one place, and the handlers that give every error one JSON shape."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.errors import ServiceError, ShuttingDown, validation_message

log = logging.getLogger("bertserve.api")

STATUS = {
    "validation": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "not_found": 404,
    "method_not_allowed": 405,
    "overloaded": 429,
    "timeout": 504,
    "unhealthy": 503,
    "request_timeout": 408,
    "headers_too_large": 431,
    "too_many_connections": 503,
    "backend": 500,
    "internal": 500,
}

# The same kinds as gRPC status codes (grpc.StatusCode member names; app.api.grpc answers with them).
GRPC_STATUS = {
    "validation": "INVALID_ARGUMENT",
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "payload_too_large": "RESOURCE_EXHAUSTED",
    "unsupported_media_type": "INVALID_ARGUMENT",
    "not_found": "NOT_FOUND",
    "method_not_allowed": "UNIMPLEMENTED",
    "overloaded": "RESOURCE_EXHAUSTED",
    "timeout": "DEADLINE_EXCEEDED",
    "unhealthy": "UNAVAILABLE",
    "request_timeout": "DEADLINE_EXCEEDED",
    "headers_too_large": "RESOURCE_EXHAUSTED",
    "too_many_connections": "UNAVAILABLE",
    "backend": "INTERNAL",
    "internal": "INTERNAL",
}

# Starlette's own HTTP errors (unknown route, wrong method) in the same shape.
_KIND_OF_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                   413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": message, "error_type": kind})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def status_of(exc: BaseException) -> int:
    return STATUS[exc.kind] if isinstance(exc, ServiceError) else 500


async def _service_error(_request: Request, exc: ServiceError) -> Response:
    log.debug("answered %d %s: %s", STATUS[exc.kind], exc.kind, exc.message)  # messages never quote client text
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    if isinstance(exc, ShuttingDown):
        headers = {"Connection": "close"}  # so the client does not send its next request down this connection
    return error_response(STATUS[exc.kind], exc.message, exc.kind, headers)


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
