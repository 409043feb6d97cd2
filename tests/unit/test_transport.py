"""What every HTTP transport shares, on real Starlette requests built from ASGI messages: bodies read within
limits (content type, encoding, declared and real size, inflated size)."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest
from starlette.requests import Request

from app.api.transport import read_body
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

LIMIT = 64


def request(body: bytes, headers: dict[str, str], chunk: int = 16) -> Request:
    messages = [{"type": "http.request", "body": body[i:i + chunk], "more_body": i + chunk < len(body)}
                for i in range(0, max(len(body), 1), chunk)]

    async def receive():
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [
        (k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive)


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("body, headers, expected", [
    (b'{"inputs": "x"}', JSON, b'{"inputs": "x"}'),
    (b'{"inputs": "x"}', {"content-type": "application/json; charset=utf-8"}, b'{"inputs": "x"}'),
    (gzip.compress(b'{"a": 1}'), JSON | {"content-encoding": "gzip"}, b'{"a": 1}'),
    (zlib.compress(b'{"a": 1}'), JSON | {"content-encoding": "deflate"}, b'{"a": 1}'),
    (b"x" * LIMIT, JSON, b"x" * LIMIT),                                        # exactly the limit
    (b"{}", {"content-type": "text/plain"}, UnsupportedMediaType),
    (b"{}", {}, UnsupportedMediaType),
    (b"{}", JSON | {"content-encoding": "br"}, UnsupportedMediaType),
    (b"x" * (LIMIT + 1), JSON, PayloadTooLarge),                               # streamed past the limit
    (b"{}", JSON | {"content-length": str(LIMIT + 1)}, PayloadTooLarge),       # declared past it: not read
    (gzip.compress(b"x" * 10 * LIMIT), JSON | {"content-encoding": "gzip"}, PayloadTooLarge),  # a zip bomb
    (b"not gzip", JSON | {"content-encoding": "gzip"}, InvalidInput),
])
def test_read_body(body, headers, expected):
    outcome = asyncio.run(_read(request(body, headers)))
    if isinstance(expected, bytes):
        assert outcome == expected
    else:
        assert isinstance(outcome, expected), outcome


async def _read(req: Request):
    try:
        return await read_body(req, LIMIT)
    except Exception as exc:  # noqa: BLE001 - which error is what is checked
        return exc
