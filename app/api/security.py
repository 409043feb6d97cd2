"""Who may call what, decided in one place for every route: a pure-ASGI layer ahead of all routing.

Two roles. Client keys (BERTSERVE_API_KEYS, _FILE) open the prediction and model routes: /predict, /explain,
/v1/models/{name}:explain, /rerank, /v1/rerank, /v2/rerank, /models and the /v2 model routes (metadata, readiness,
inference) — everything that
is not named open below. Admin keys (BERTSERVE_ADMIN_API_KEYS, _FILE) open /admin, which changes the server's
state, and the client routes too. Health probes and the API documentation are always open; /metrics is open
unless BERTSERVE_PROTECT_METRICS. No key or a wrong one: 401. A client key on an admin route: 403. Without
admin keys the admin routes are not mounted at all (404) unless BERTSERVE_ADMIN_WITHOUT_KEY serves them open,
for a trusted network. The same check (`Keys.refusal`) decides each gRPC call, by the HTTP route it mirrors; both
transports answer a refusal as the error kind it names (app.errors: Unauthorized, Forbidden).

Keys are kept as SHA-256 digests only; a presented key is hashed once and compared in constant time with every
digest of both roles, whatever matches, so timing tells nothing about which key or how much of it matched."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from starlette.types import ASGIApp, Receive, Scope, Send

from app import audit
from app.api.errors import service_error_response
from app.errors import Forbidden, ServiceError, Unauthorized
from app.settings import Settings

Group = Literal["open", "client", "admin", "metrics"]
Refusal = Literal["unauthorized", "forbidden"]
ADMIN_PREFIX = "/admin"
OPEN_PATHS = frozenset({
    "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready",
    "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
})
SCHEMES = {
    "ClientKey": {
        "type": "http", "scheme": "bearer",
        "description": "A client key (BERTSERVE_API_KEYS / _FILE): prediction, model and V2 routes. Needed only "
        "when client keys are configured; an admin key is accepted too.",
    },
    "AdminKey": {
        "type": "http", "scheme": "bearer",
        "description": "An admin key (BERTSERVE_ADMIN_API_KEYS / _FILE): the /admin routes, which change the "
        "server's state. Without admin keys those routes are not served.",
    },
}


def route_group(path: str) -> Group:
    """The role a path needs. Deny by default: a route not named open here is a client route."""
    if path in OPEN_PATHS:
        return "open"
    if path == "/metrics":
        return "metrics"
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return "admin"
    return "client"


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class Keys:
    def __init__(self, settings: Settings) -> None:
        # Distinct keys (one given both in a setting and its file counts once in the start-up log).
        self.client = list(dict.fromkeys(settings.key_digests("client")))
        self.admin = list(dict.fromkeys(settings.key_digests("admin")))
        self.protect_metrics = settings.protect_metrics
        self.admin_served = bool(self.admin) or settings.admin_without_key

    @property
    def enforced(self) -> bool:
        """Whether any route needs a key at all (with none configured, no layer is installed)."""
        return bool(self.client or self.admin)

    def role(self, token: bytes | None) -> Literal["admin", "client"] | None:
        given = hashlib.sha256(token or b"").digest()
        is_admin = is_client = False
        for digest in self.admin:
            is_admin |= hmac.compare_digest(given, digest)
        for digest in self.client:
            is_client |= hmac.compare_digest(given, digest)
        if token is None or not token:
            return None
        return "admin" if is_admin else "client" if is_client else None

    def needs(self, group: Group) -> Literal["client", "admin"] | None:
        """The role a route group needs with this configuration; None: open."""
        if group == "admin":
            return "admin" if self.admin else None  # not served at all, or served open (admin_without_key)
        if group == "client":
            return "client" if self.client else None
        if group == "metrics":
            return "client" if self.protect_metrics and self.enforced else None
        return None

    def refusal(self, group: Group, token: bytes | None) -> Refusal | None:
        """Whether a caller presenting `token` (None: no bearer token) is refused a route of `group`, and why:
        "unauthorized" (no valid key), "forbidden" (a client key where an admin key is needed); None: allowed."""
        needed = self.needs(group)
        if needed is None:
            return None
        role = self.role(token)
        if role is None:
            return "unauthorized"
        return "forbidden" if needed == "admin" and role != "admin" else None

    def openapi_security(self, group: Group) -> list[dict[str, list]] | None:
        if group == "admin":
            return [{"AdminKey": []}]
        if group == "client" or (group == "metrics" and self.protect_metrics):
            return [{"ClientKey": []}, {"AdminKey": []}]
        return None


def refused(refusal: Refusal, key_goes: str = "Authorization: Bearer <key>", what: str = "route") -> ServiceError:
    """The error answering a refusal, worded for the transport: where the key goes, what was called."""
    if refusal == "unauthorized":
        return Unauthorized(f"a valid API key is required: {key_goes}")
    return Forbidden(f"this {what} needs an admin key (BERTSERVE_ADMIN_API_KEYS)")


class AuthMiddleware:
    """Plain ASGI: one path lookup and, where a key is needed, one hash and a few constant-time compares."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            group, token = route_group(scope["path"]), bearer_token(scope["headers"])
            refusal = self.keys.refusal(group, token)
            if refusal is not None:
                audit.refused(token, (scope.get("client") or ("unknown",))[0], group, refusal)  # counted, not written
                await service_error_response(refused(refusal))(scope, receive, send)
                return
        await self.app(scope, receive, send)
