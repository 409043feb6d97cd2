"""Shared fixtures: a tiny real model repository, and real `bertserve serve` processes on loopback."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DEMO_REPOSITORY = ROOT / "models"
DEMO_MODEL = "drug-review-sentiment"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(server, body, **kwargs):
    return httpx.post(server.url + "/predict", json=body, timeout=30, **kwargs)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (openssl), for HTTPS servers on loopback."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit("}", 1)[0])) if "{" in line else {}
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def hammer(url: str, texts: list[str], concurrency: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        queue = list(texts)
        statuses: list[int] = []

        async def worker():
            while queue:
                r = await client.post(url + "/predict", json={"inputs": queue.pop()})
                statuses.append(r.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses


def in_process(settings) -> Iterator:
    """Yield call(method, path, **httpx kwargs) -> response on one app with `settings`, its models loaded, over
    httpx's ASGITransport (no server process, no socket). The lifespan, which also installs signal handlers, is
    left out: its loading step is run directly. For module-scoped fixtures: `yield from in_process(...)`."""
    from app.main import create_app

    app = create_app(settings)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(app.state.service.load_all())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process")

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        return loop.run_until_complete(client.request(method, path, **kwargs))

    yield call
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(app.state.service.close())
    loop.close()


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    # uvicorn's multiprocess supervisor may add a resource tracker; keep the processes that mapped onnxruntime
    return [p for p in pids if "onnxruntime" in open(f"/proc/{p}/maps").read()]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "bert", "bert")


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory, tiny_checkpoint) -> Path:
    """A model repository with one tiny random BERT classifier, exported with optimum: <repo>/tiny/1/."""
    from tests.tiny import export_tiny_model

    repo = tmp_path_factory.mktemp("repo")
    export_tiny_model(tiny_checkpoint, repo / "tiny" / "1")
    return repo


class Server:
    """A real `bertserve serve` process on 127.0.0.1, stopped by the fixture that made it."""

    def __init__(self, repository: Path, workers: int = 1, env: dict[str, str] | None = None, wait_ready=True,
                 scheme: str = "http", verify: bool | str = True):
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        # Each server its own gRPC port (the default 8081 would be shared, with SO_REUSEPORT, by parallel servers).
        self.env = {**os.environ, "BERTSERVE_LOG_LEVEL": "info", "BERTSERVE_GRPC_PORT": str(free_port()), **(env or {})}
        self.grpc_address = f"127.0.0.1:{self.env['BERTSERVE_GRPC_PORT']}"
        self.log_path = Path(tempfile.mkdtemp(prefix="bertserve-test-")) / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--workers", str(workers),
             "--model-repository", str(repository)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.wait_until("/health/live")
        if wait_ready:
            self.wait_until("/health/ready")
            if workers > 1:
                self.wait_for_workers(workers)

    def wait_for_workers(self, workers: int, timeout_s: float = 120) -> None:
        """Readiness answers from whichever worker takes the connection; a worker counts as loaded once its
        per-pid queue gauge appears in /metrics, so wait for all of them before the test talks to the server."""
        deadline = time.monotonic() + timeout_s
        while len(set(re.findall(r'bertserve_queue_size\{[^}]*pid="(\d+)"', self.metrics_text()))) < workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {workers} workers loaded:\n{self.output()}")
            time.sleep(0.05)

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=5, verify=self.verify).text

    def wait_until(self, path: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=2, verify=self.verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{path} not 200 within {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """Factory: start_server(repository, workers=1, env={...}) -> a ready Server, stopped after the test."""
    servers: list[Server] = []

    def start(repository: Path, **kwargs) -> Server:
        server = Server(repository, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_model_repo) -> Iterator[Server]:
    """One server on the tiny model shared by a test module (read-only tests)."""
    server = Server(tiny_model_repo)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    if not (DEMO_REPOSITORY / DEMO_MODEL / "1" / "bertserve.json").is_file():
        pytest.fail("the demo model is missing: `make test` builds it first (`make demo`)")
    return DEMO_REPOSITORY
