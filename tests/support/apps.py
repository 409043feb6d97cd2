"""The real app in-process, its models loaded, over httpx's ASGITransport: no server process, no socket. The
lifespan, which also installs signal handlers, is left out: its loading step is run directly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.tiny import CORPUS

TEXTS = [f"{CORPUS[k % len(CORPUS)]} {k}" for k in range(64)]  # what App.many sends, in turn


def in_process(settings) -> Iterator:
    """Yield call(method, path, **httpx kwargs) -> response on one app with `settings`, its models loaded.
    For module-scoped fixtures: `yield from in_process(...)`."""
    for call, _ in in_process_with_service(settings):
        yield call


def in_process_with_service(settings) -> Iterator:
    """As in_process, yielding (call, the app's Service) for tests that also reach a served model directly."""
    from app.main import create_app

    app = create_app(settings)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.state.service.load_all())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process")

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        return loop.run_until_complete(client.request(method, path, **kwargs))

    yield call, app.state.service
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(app.state.service.close())
    loop.close()


class App:
    """The real app in-process, its models loaded, for async tests: `async with App(repo, **settings) as app`."""

    def __init__(self, repo: Path, **settings) -> None:
        from app.main import create_app
        from app.settings import Settings

        settings = {"poll_interval_s": 0, "batch_autotune": False, "log_level": "warning", **settings}
        self.app = create_app(Settings(model_repository=repo, **settings))
        self.service = self.app.state.service
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://in-process",
                                        timeout=60)

    async def __aenter__(self) -> "App":
        await self.service.load_all()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()
        await self.service.close()

    async def predict(self, text: str, **body) -> httpx.Response:
        headers = {"x-routing-key": body.pop("key")} if "key" in body else {}
        return await self.client.post("/predict", json={"inputs": text, **body}, headers=headers)

    async def many(self, count: int, concurrency: int = 32, **body) -> list[httpx.Response]:
        left = list(range(count))
        answers: list[httpx.Response] = []

        async def worker() -> None:
            while left:
                answers.append(await self.predict(TEXTS[left.pop() % len(TEXTS)], **body))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return answers


def write_serving(repo: Path, text: str) -> None:
    """The tiny model's serving.json, atomically (write aside, rename), so a scan never reads half a file."""
    staging = repo / "tiny" / ".serving.json"
    staging.write_text(text)
    os.replace(staging, repo / "tiny" / "serving.json")


@contextmanager
def inference_client(call) -> Iterator:
    """The real huggingface_hub InferenceClient, its requests routed to `call` (an app in-process: no socket, the
    hub stays offline), for the model the app answers unnamed (one model, or BERTSERVE_DEFAULT_MODEL)."""
    import requests
    from huggingface_hub import InferenceClient, configure_http_backend

    class InProcess(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            answer = call(request.method, request.path_url, content=request.body, headers=dict(request.headers))
            response = requests.Response()
            response.status_code, response._content = answer.status_code, answer.content
            response.headers.update(answer.headers)
            response.url, response.request, response.encoding = request.url, request, "utf-8"
            return response

        def close(self):
            pass

    def session() -> requests.Session:
        made = requests.Session()
        made.mount("http://", InProcess())
        return made

    configure_http_backend(backend_factory=session)
    try:
        yield InferenceClient(model="http://in-process/predict")
    finally:
        configure_http_backend()
