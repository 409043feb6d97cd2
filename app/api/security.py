"""Optional API keys: `Authorization: Bearer <key>`, compared in constant time against every accepted key."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="One of the keys in BERTSERVE_API_KEYS / _API_KEYS_FILE.")


def _check(request: Request, given: bytes) -> None:
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    # Compare with every key, whatever matches, so timing tells nothing about which or how much matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    if not matched:
        raise Unauthorized("a valid API key is required: Authorization: Bearer <key>")


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> None:
    _check(request, credentials.credentials.encode() if credentials else b"")


def check_bearer(request: Request) -> None:
    """The same check, read straight from the header: for routes served without FastAPI's dependency solving."""
    if request.app.state.api_keys:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        _check(request, token.strip().encode() if scheme.lower() == "bearer" else b"")


async def require_api_key_for_metrics(request: Request) -> None:
    """Declared without a security scheme: /metrics is open unless BERTSERVE_PROTECT_METRICS is set."""
    if request.app.state.settings.protect_metrics:
        check_bearer(request)
