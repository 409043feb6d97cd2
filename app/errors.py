"""The closed set of errors the service reports to clients, each of one kind; its HTTP status and gRPC status code
live in one table, app.api.errors.STATUSES, so both transports answer a kind alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ServiceError(Exception):
    """An error whose message is safe to show to the client."""

    kind = "internal"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidInput(ServiceError):
    kind = "validation"


class Unauthorized(ServiceError):
    """No key, or not a valid one, where one is needed (app.api.security)."""

    kind = "unauthorized"


class Forbidden(ServiceError):
    """A client key where an admin key is needed (app.api.security)."""

    kind = "forbidden"


class PayloadTooLarge(ServiceError):
    kind = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    kind = "unsupported_media_type"


class ModelNotFound(ServiceError):
    kind = "not_found"


class NotFound(ServiceError):
    """Something other than a model is not there (feedback: no logged prediction with that id)."""

    kind = "not_found"


class Conflict(ServiceError):
    """The request contradicts what was already recorded (feedback: a second one for the same item)."""

    kind = "conflict"


class Overloaded(ServiceError):
    kind = "overloaded"


class DeadlineExceeded(ServiceError):
    kind = "timeout"


class NotReady(ServiceError):
    kind = "unhealthy"


class ShuttingDown(NotReady):
    """Refused because the server is draining: the answer also closes the connection."""


class BackendError(ServiceError):
    kind = "backend"


# Answered by the HTTP transport itself (app.api.http_limits), before a request reaches the app.
class RequestTimeout(ServiceError):
    kind = "request_timeout"


class HeadersTooLarge(ServiceError):
    kind = "headers_too_large"


class TooManyConnections(ServiceError):
    kind = "too_many_connections"


class ModelLoadError(Exception):
    """A model folder that cannot be served; the message names the file and what is wrong (for the log and the
    authenticated /models), `cause` says it in a short code (for the open /health/ready: no paths, no contents)."""

    def __init__(self, message: str, cause: str = "load_failed") -> None:
        super().__init__(message)
        self.cause = cause


def validation_message(errors: Sequence[Mapping[str, Any]], root: str = "body") -> str:
    """Pydantic's errors (`exc.errors()`) in one line, alike wherever they come from (request bodies, path
    parameters, the repository's JSON files): the most specific problem, located like `inputs[1]` or
    `inputs[0].datatype`. Pydantic's union-branch tags in the location (`constrained-str`, `list[...]`) say
    nothing to a reader and are left out."""
    first = max(errors, key=lambda e: len(e["loc"]))
    parts = [p for p in first["loc"] if isinstance(p, int) or not any(c in p for c in "-[")]
    if first["type"] == "extra_forbidden":  # the unknown name is the client's own text: not echoed
        return f"{_where(parts[:-1], root)}: a field that is not part of the API was sent"
    return f"{_where(parts, root)}: {first['msg']}"


def parse_json(schema: type[M], body: bytes,
               message: Callable[[list], str] = validation_message) -> M:
    """A request body validated from raw JSON bytes in one pass; any problem is one InvalidInput (422), worded by
    `message` from pydantic's errors (each endpoint can say its own shapes more plainly)."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(message(exc.errors())) from None


def _where(parts: list, root: str) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or root
