"""Real `bertserve serve` processes on 127.0.0.1, requests to them, and the slow model's settings that hold one
server's engine busy (so requests wait behind a batch by construction, not by luck)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tests.support.metrics import metric
from tests.support.paths import ROOT

# The test being run (set by tests/conftest.py before its fixtures): a server process may start only for a test
# marked `process` (or `deploy`), so that `make test-fast` (-m "not process ...") never starts one.
running_test = None
PROCESS_MARKS = ("process", "deploy")


def check_process_allowed() -> None:
    if running_test is not None and not any(running_test.get_closest_marker(m) for m in PROCESS_MARKS):
        raise RuntimeError(f"{running_test.nodeid} starts a server process but is not marked `process`: mark it "
                           "(pytestmark = pytest.mark.process), or use tests.support.apps.in_process")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(server, body, **kwargs):
    return httpx.post(server.url + "/predict", json=body, timeout=30, **kwargs)


def call(server, method: str, path: str, body, key: str | None) -> httpx.Response:
    """One request with `key` as its bearer token (none when None)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key (openssl), for HTTPS servers on loopback."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


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


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    # uvicorn's multiprocess supervisor may add a resource tracker; keep the processes that mapped onnxruntime
    return [p for p in pids if "onnxruntime" in open(f"/proc/{p}/maps").read()]


class Server:
    """A real `bertserve serve` process on 127.0.0.1, stopped by the fixture that made it."""

    def __init__(self, repository: Path, workers: int = 1, env: dict[str, str] | None = None, wait_ready=True,
                 scheme: str = "http", verify: bool | str = True):
        check_process_allowed()
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


# The slow model (tests.support.tiny.make_slow_model_repo, the `slow_model_repo` fixture) served with one engine
# session, held busy by one full batch of LONG texts.
LONG = " ".join(["headache nausea and dizziness every single day"] * 60)  # well over 256 tokens: truncated
SLOW_ENV = {
    "BERTSERVE_ENGINE_SESSIONS": "1",
    "BERTSERVE_BATCH_AUTOTUNE": "false",
    "BERTSERVE_MAX_BATCH_SIZE": "32",
    "BERTSERVE_MAX_BATCH_TOKENS": str(32 * 256),
}


def start_busy_batch(server) -> threading.Thread:
    """A 32-text request that keeps the engine busy; returns once it is admitted, and tokenized."""
    result = {}

    def run():
        result["response"] = post(server, {"inputs": [LONG] * 32, "timeout_ms": 60_000})

    thread = threading.Thread(target=run)
    thread.result = result
    thread.start()
    deadline = time.monotonic() + 10
    while metric(httpx.get(server.url + "/metrics").text, "bertserve_queue_size", model="slow") < 32:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    # Admitted is enough: its 32 sequences fill a whole batch (max 32), so whatever comes next waits behind it.
    return thread
