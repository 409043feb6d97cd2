"""What every HTTP transport of a prediction shares: one request skeleton (`handle`: begin the request's record,
read, parse, run, encode, answer with the X-Model-* headers, and account for it however it ends, through
app.api.accounting as gRPC does), the lean route class, reading the body within limits, noticing a client that
left, and JSON answers."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from starlette.responses import Response

from app import metrics
from app.api import accounting
from app.api.errors import status_of
from app.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from app.record import RequestRecord
from app.served import ServedModel
from app.service import Service

JSON_ONLY = frozenset({"application/json"})


class LeanRoute(APIRoute):
    """A route declared (and documented) with FastAPI but served as a plain `async def f(request) -> Response`:
    no per-request dependency solving or response validation, about 0.16 ms of event-loop CPU less per request
    (a fifth of the loop's work per prediction at concurrency 32, measured). Such a route reads and checks its
    own body; a dependency given to it would be documented and never run, so it is refused. Who may call it is
    decided for every route alike by app.api.security."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dependant.dependencies:
            raise TypeError(f"{self.path}: a lean route takes no dependencies (they would never run)")

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint


# What a header value may carry as is: visible ASCII and space, but not "%", which marks an escape.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def model_headers(model: ServedModel) -> dict[str, str]:
    """X-Model-Name and X-Model-Version of the version that answered. A header carries only ASCII, so a name with
    other characters (a folder named `uni-модель`) is sent percent-encoded as UTF-8 (RFC 3986; decode with
    urllib.parse.unquote); a plain ASCII name is sent unchanged."""
    return {"X-Model-Name": quote(model.name, safe=_HEADER_SAFE), "X-Model-Version": str(model.version)}


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int, content_types: Collection[str] = JSON_ONLY) -> bytes:
    """The body, refused with 415 for another content type and with 413 past `limit` bytes before it is read
    whole. A gzip or deflate body is inflated within the same limit."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in content_types:
        wanted = " or ".join(sorted(t for t in content_types if t))
        raise UnsupportedMediaType(f"send Content-Type: {wanted} (got {content_type or 'none'!r})")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported: use gzip, deflate or none")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit")
    if encoding == "identity":
        return bytes(body)
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(bytes(body), limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"body is not valid {encoding} data: {exc}") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"inflated body is over the {limit}-byte limit")
    return inflated


class ClientGone(Exception):
    pass


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (so its queued sequences are dropped) if the client disconnects. The work
    runs in the calling task; only the watcher is a task of its own (one task per request, not two)."""
    current = asyncio.current_task()
    assert current is not None
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    finished = False

    def client_left(done: asyncio.Future) -> None:
        if not finished and not done.cancelled() and done.exception() is None:
            current.cancel("client disconnected")

    watcher.add_done_callback(client_left)
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and watcher.exception() is None:
            current.uncancel()  # our own cancellation, turned into an answer
            raise ClientGone from None
        raise
    finally:
        finished = True  # a disconnect noticed from now on no longer cancels this task
        watcher.cancel()


# ---- the request skeleton of every prediction-like route ----

P = TypeVar("P")
R = TypeVar("R")


class Call:
    """One prediction-like request as the steps of its route see it, with its record (app.record)."""

    __slots__ = ("body", "record", "request", "service")

    def __init__(self, request: Request, service: Service, model: str | None) -> None:
        scope = request.scope
        self.request = request
        self.service = service
        # The route's template, not the request's own path: a closed set of labels and span names.
        self.record: RequestRecord = accounting.start("http", getattr(scope.get("route"), "path", ""), model,
                                                      scope["method"], scope["headers"])
        self.body = b""

    @property
    def model(self) -> str | None:
        """The model the request is for, counted by: given by the route (from the path) or set by `parse` (from
        the body)."""
        return self.record.model

    @model.setter
    def model(self, name: str | None) -> None:
        self.record.model = name

    @property
    def routing_key(self) -> str | None:
        """X-Routing-Key: where the router places the request in a model's traffic split."""
        return self.request.headers.get("x-routing-key")


def handle(
    request: Request,
    parse: Callable[[Call], P],
    run: Callable[[Call, P], Awaitable[R]],
    encode: Callable[[P, R], tuple[ServedModel, Any]],
    *,
    model: str | None = None,
    content_types: Collection[str] = JSON_ONLY,
    counter: Counter = metrics.REQUESTS,
    duration: Histogram = metrics.REQUEST_DURATION,
) -> Awaitable[Response]:
    """A prediction-like request from start to answer (awaited by the route; a plain function, so no coroutine of
    its own per request): counted and timed (app.api.accounting, under `counter` and `duration`), its body read
    within the limits (`read_body`, `content_types`), then

    - `parse(call)`: the request from `call.body` (raises app.errors); sets `call.model` when the body names it;
    - `run(call, parsed)`: the service's operation, awaited in this task and cancelled if the client leaves
      (`call.service`, `call.routing_key`);
    - `encode(parsed, result)`: the version that answered and the answer: data (sent as JSON) or a Response;
      either way it carries that version's X-Model-Name and X-Model-Version, and X-Truncated-Texts (the request
      record's count of texts read only in part)."""
    return _answer(Call(request, request.app.state.service, model), parse, run, encode, content_types, counter,
                   duration)


async def _answer(call: Call, parse: Callable, run: Callable, encode: Callable, content_types: Collection[str],
                  counter: Counter, duration: Histogram) -> Response:
    status = 500
    try:
        call.body = await read_body(call.request, call.service.settings.max_body_bytes, content_types)
        parsed = parse(call)
        served, answer = encode(parsed, await until_disconnect(call.request, run(call, parsed)))
        # Every answer says how many of its texts the model read only in part (0: all of every text).
        headers = model_headers(served) | {"X-Truncated-Texts": str(call.record.truncated)}
        if isinstance(answer, Response):
            answer.headers.update(headers)
        else:
            answer = json_response(answer, headers=headers)
        status = answer.status_code
        return answer
    except ClientGone:
        status = accounting.CLIENT_CLOSED
        return Response(status_code=accounting.CLIENT_CLOSED)
    except asyncio.CancelledError:  # the client left, or the drain bound passed (answered 503 by the middleware)
        status = accounting.cancelled(call.service)[0]
        raise
    except BaseException as exc:
        status = status_of(exc)
        raise
    finally:
        accounting.finish(call.service, call.record, status, counter=counter, duration=duration)
