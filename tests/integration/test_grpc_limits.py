"""The gRPC port's connection budget (app.api.grpc.server) and its refusal at start (app.api.grpc.port), on a real
`bertserve serve` over raw loopback sockets: the same connection cap as HTTP (BERTSERVE_MAX_CONNECTIONS), a
deadline for a connection's HTTP/2 preface (BERTSERVE_REQUEST_READ_TIMEOUT_S), idle connections closed
(BERTSERVE_GRPC_IDLE_TIMEOUT_S), the open-file budget shared with HTTP. Every wait is for a condition (a frame, the
connection's end), bounded by the socket timeout; none is a fixed sleep."""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import sys

import httpx
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from tests.support.paths import ROOT
from tests.support.servers import Server, free_port

pytestmark = pytest.mark.process

WAIT_S = 30  # the most any one wait here may take (the limits under test are 1-2 s)
CAP = 4
# Long enough that no held connection is closed while the next ones open, even on a busy machine.
LIMITS = {"BERTSERVE_MAX_CONNECTIONS": str(CAP), "BERTSERVE_GRPC_IDLE_TIMEOUT_S": "5",
          "BERTSERVE_REQUEST_READ_TIMEOUT_S": "5"}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # and an empty SETTINGS frame
SETTINGS, GOAWAY = 4, 7  # HTTP/2 frame types


def connect(address: str, preface: bool = True) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    if preface:
        sock.sendall(PREFACE)
    return sock


class Frames:
    """Reads the types of the HTTP/2 frames a server sends, one after another; None once it has closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _read(self, count: int) -> bool:
        while len(self.buffer) < count:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def next(self) -> int | None:
        if not self._read(9):
            return None
        length, kind = int.from_bytes(self.buffer[:3], "big"), self.buffer[3]
        if not self._read(9 + length):
            return None
        self.buffer = self.buffer[9 + length:]
        return kind

    def until_closed(self) -> list[int]:
        kinds = []
        while (kind := self.next()) is not None:
            kinds.append(kind)
        return kinds


def closed(sock: socket.socket) -> None:
    """Read and drop what the server sends until it closes the connection (bounded by the socket's timeout)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass


def live(server: Server) -> tuple[int, bool]:
    """Each port's liveness, each on a new connection: HTTP /health/live's status, gRPC ServerLive. The server sees
    connections closed in its own time, so a refused one is tried again (bounded)."""
    for _ in range(WAIT_S * 10):
        try:
            status = httpx.get(server.url + "/health/live", timeout=WAIT_S).status_code
            with tgrpc.InferenceServerClient(server.grpc_address) as client:
                if status == 200:
                    return status, client.is_server_live(client_timeout=WAIT_S)
        except (httpx.TransportError, InferenceServerException):
            pass
        select.select([], [], [], 0.1)
    pytest.fail("a port never answered again")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_grpc_connections_past_the_cap_are_closed_and_both_ports_keep_answering(tiny_model_repo):
    """The issue's case in small: three times the cap of idle gRPC connections. Before: each was held for ever
    (2 x 10,000 took every file: HTTP reset, ServerLive timed out). Now the worker holds CAP of them, closes the
    rest at once, closes the held ones once idle, and both ports answer throughout or right after."""
    server = Server(tiny_model_repo, env=LIMITS)
    held: list[socket.socket] = []
    extra: list[socket.socket] = []
    try:
        files = open_files(server.process.pid)
        for _ in range(CAP):  # each is accepted and greeted (the server's SETTINGS) before the next
            held.append(connect(server.grpc_address))
            assert Frames(held[-1]).next() == SETTINGS
        for _ in range(2 * CAP):  # past the cap: closed at accept, without a frame
            extra.append(connect(server.grpc_address, preface=False))
            assert Frames(extra[-1]).next() is None
        assert open_files(server.process.pid) - files <= CAP + 4  # not one file per connection made
        assert httpx.get(server.url + "/health/live", timeout=WAIT_S).status_code == 200  # HTTP's own share
        for sock in held:  # idle for BERTSERVE_GRPC_IDLE_TIMEOUT_S: GOAWAY, then closed
            assert GOAWAY in Frames(sock).until_closed()
        assert live(server) == (200, True)
        # A connection that never speaks HTTP/2 is closed after BERTSERVE_REQUEST_READ_TIMEOUT_S, as on HTTP.
        with connect(server.grpc_address, preface=False) as silent:
            assert Frames(silent).until_closed()[-1] == GOAWAY
        assert "limits per worker: 4 connections, closed after 5 s idle" in server.output()
    finally:
        for sock in held + extra:
            sock.close()
        server.stop()


def test_with_256_files_both_ports_flooded_leave_files_for_the_repository_and_answer_again(tiny_model_repo):
    """The issue's 256-file case: 300 idle connections on each port, the repository scanned every 0.2 s. Before,
    gRPC took every file it could ("too many open files"); now the files the reserve leaves are split between the
    two ports (96 each, BERTSERVE_MAX_CONNECTIONS=0), the rest are shed, and both answer once the idle ones go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the server, restored for this process
    try:
        server = Server(tiny_model_repo, env={"BERTSERVE_POLL_INTERVAL_S": "0.2"})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    grpc_socks: list[socket.socket] = []
    http_socks: list[socket.socket] = []
    try:
        assert "HTTP limits per worker: 96 connections (and as many on gRPC)" in server.output()
        grpc_socks = [connect(server.grpc_address) for _ in range(300)]
        greeted = [Frames(sock).next() == SETTINGS for sock in grpc_socks]  # the rest: closed at accept
        assert sum(greeted) == 96
        http_socks = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) for _ in range(300)]
        for sock in http_socks[96:]:  # past HTTP's share: answered 503 and closed
            closed(sock)
        assert open_files(server.process.pid) < 256  # 96 + 96 held and the server's own: files are left
        for sock in grpc_socks + http_socks:  # the clients go
            sock.close()
        assert live(server) == (200, True)
        assert httpx.get(server.url + "/health/ready", timeout=WAIT_S).status_code == 200
        output = server.output()
        assert "Too many open files" not in output and "repository scan failed" not in output
    finally:
        for sock in grpc_socks + http_socks:
            sock.close()
        server.stop()


def test_an_occupied_grpc_port_ends_serve_with_one_line(tmp_path):
    """As an occupied HTTP port does (uvicorn's one line), not with gRPC's traceback from a worker's start-up."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "BERTSERVE_GRPC_PORT": str(port), "BERTSERVE_PORT": str(free_port())}
        for workers in ("1", "2"):
            done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--workers", workers,
                                   "--model-repository", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.startswith(f"bertserve: cannot serve gRPC on 127.0.0.1:{port} (BERTSERVE_GRPC_PORT): "
                                          "address already in use;"), done.stderr
