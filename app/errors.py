"""The closed set of errors the service reports to clients. The HTTP status of each kind lives in app.api.errors."""

from __future__ import annotations


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
    kind = "unauthorized"


class Forbidden(ServiceError):
    """A valid key that lacks the role the route needs (a client key on an admin route)."""

    kind = "forbidden"


class PayloadTooLarge(ServiceError):
    kind = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    kind = "unsupported_media_type"


class ModelNotFound(ServiceError):
    kind = "not_found"


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


class ModelLoadError(Exception):
    """A model folder that cannot be served; the message names the file and what is wrong."""
