"""The transport limits' settings and answers (app.api.http_limits); their behaviour on real sockets is in
tests/integration/test_http_limits.py."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app.api.errors import STATUS
from app.api.http_limits import Limits, auto_max_connections
from app.settings import Settings


@pytest.mark.parametrize("open_files, connections", [
    (256, 192),  # the limit: 64 kept for model, metric and repository files
    (1024, 896),
    (1 << 20, 4096),  # a container's usual limit: capped
    (None, 4096),  # unlimited
    (50, 8),  # absurdly low: still serves a few
])
def test_the_default_connection_cap_leaves_files_for_the_rest(open_files, connections):
    assert auto_max_connections(open_files) == connections


@pytest.mark.parametrize("grpc_port, open_files, connections", [
    (8081, 256, 96),  # HTTP and gRPC share what the reserve leaves: 96 each
    (8081, 1 << 20, 4096),  # each capped
    (0, 256, 192),  # HTTP alone
])
def test_the_default_cap_is_shared_by_the_ports_served(grpc_port, open_files, connections):
    settings = Settings(grpc_port=grpc_port)
    ports = 2 if grpc_port else 1
    assert auto_max_connections(open_files, ports) == connections
    assert Limits.from_settings(settings).ports == ports


def test_every_answer_is_the_json_error_shape_with_its_status_and_closes():
    limits = Limits.from_settings(Settings(max_connections=7))
    assert limits.max_connections == 7
    for answer in limits.answers():
        head, body = answer.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        error = json.loads(body)
        assert set(error) == {"error", "error_type"}
        assert int(lines[0].split()[1]) == STATUS[error["error_type"]]
        assert "connection: close" in lines and f"content-length: {len(body)}" in lines


@pytest.mark.parametrize("name, value", [("request_read_timeout_s", 0), ("max_header_bytes", 100),
                                         ("max_headers", 0), ("max_connections", -1)])
def test_limits_that_would_refuse_everything_are_refused(name, value):
    with pytest.raises(ValidationError):
        Settings(**{name: value})
