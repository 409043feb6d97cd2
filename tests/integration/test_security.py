"""Least privilege against real servers on loopback: which key opens which route group (client keys, admin keys,
none), admin routes absent unless asked for, keys given as SHA-256 digests, and nothing of a client's text in any
output a failure can produce."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.integration.test_serving import REVIEW

CLIENT, ADMIN = "client-key-1", "admin-key-1"
V2_INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [REVIEW]}]}
# (route group, method, path, body): one representative request per group of the API.
ROUTES = [
    ("predict", "POST", "/predict", {"inputs": REVIEW}),
    ("models", "GET", "/models", None),
    ("admin", "POST", "/admin/models/tiny/load", None),
    ("v2 infer", "POST", "/v2/models/tiny/infer", V2_INFER),
    ("v2 metadata", "GET", "/v2/models/tiny", None),
    ("metrics", "GET", "/metrics", None),
    ("health", "GET", "/health/ready", None),
]
CALLERS = {"no key": None, "wrong key": "nope", "client key": CLIENT, "admin key": ADMIN}


def call(server, method: str, path: str, body, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)


def matrix(server) -> dict[tuple[str, str], int]:
    statuses = {}
    for caller, key in CALLERS.items():
        for group, method, path, body in ROUTES:
            r = call(server, method, path, body, key)
            statuses[caller, group] = r.status_code
            if r.status_code in (401, 403):  # the one JSON error shape
                assert r.json()["error_type"] == {401: "unauthorized", 403: "forbidden"}[r.status_code]
            if r.status_code == 401:
                assert r.headers["www-authenticate"] == "Bearer"
    return statuses


def table(statuses: dict[tuple[str, str], int]) -> str:
    groups = [g for g, *_ in ROUTES]
    lines = ["| caller | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(statuses[c, g]) for g in groups) + " |" for c in CALLERS]
    return "\n".join(lines)


@pytest.mark.parametrize("protect_metrics", [False, True])
def test_role_matrix(tiny_model_repo, start_server, protect_metrics):
    """Client keys open prediction, model and V2 routes; only admin keys open /admin (a client key there: 403);
    no key or a wrong one: 401; health always open; metrics open unless BERTSERVE_PROTECT_METRICS. The admin
    key is configured as its SHA-256 digest."""
    env = {
        "BERTSERVE_API_KEYS": CLIENT,
        "BERTSERVE_ADMIN_API_KEYS": "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest(),
        "BERTSERVE_PROTECT_METRICS": str(protect_metrics).lower(),
    }
    server = start_server(tiny_model_repo, env=env)
    statuses = matrix(server)
    print(f"\nBERTSERVE_PROTECT_METRICS={str(protect_metrics).lower()}\n{table(statuses)}")
    metrics = 401 if protect_metrics else 200
    expected = {
        "no key": [401, 401, 401, 401, 401, metrics, 200],
        "wrong key": [401, 401, 401, 401, 401, metrics, 200],
        "client key": [200, 200, 403, 200, 200, 200, 200],
        "admin key": [200, 200, 200, 200, 200, 200, 200],
    }
    assert statuses == {(c, g): expected[c][i] for c in CALLERS for i, (g, *_) in enumerate(ROUTES)}
    server.stop()
    assert CLIENT not in server.output() and ADMIN not in server.output()  # keys are never logged


def test_admin_routes_are_not_served_without_an_admin_key(tiny_model_repo, start_server):
    """Default (no keys at all) and client keys only: /admin does not exist, for any caller, nor in the OpenAPI
    document; the model keeps serving."""
    for env in ({}, {"BERTSERVE_API_KEYS": CLIENT}):
        server = start_server(tiny_model_repo, env=env)
        for key in (None, CLIENT, "anything"):
            for action in ("unload", "load"):
                r = call(server, "POST", f"/admin/models/tiny/{action}", None, key)
                assert r.status_code == 404 and r.json()["error_type"] == "not_found"
        assert call(server, "POST", "/predict", {"inputs": REVIEW}, CLIENT).status_code == 200
        spec = httpx.get(server.url + "/openapi.json").json()
        assert not [p for p in spec["paths"] if p.startswith("/admin")]
        assert set(spec["components"]["securitySchemes"]) == {"ClientKey", "AdminKey"}
        server.stop()
        assert "/admin: not served" in server.output()


def test_admin_without_key_is_an_explicit_setting_and_warned_about(tiny_model_repo, start_server):
    server = start_server(tiny_model_repo, env={"BERTSERVE_ADMIN_WITHOUT_KEY": "true"})
    assert call(server, "POST", "/admin/models/nope/load", None, None).status_code == 404  # routed: unknown model
    assert call(server, "POST", "/admin/models/tiny/load", None, None).status_code == 200
    server.stop()
    warnings = [line for line in server.output().splitlines() if '"level":"warning"' in line]
    assert any("BERTSERVE_ADMIN_WITHOUT_KEY" in line for line in warnings), server.output()


def test_hashed_keys_in_files(tiny_model_repo, start_server, tmp_path):
    """Keys given only as digests in key files (as a Kubernetes Secret mounts them): the plain key opens its
    routes; the digest itself, presented as a key, does not; a plain admin key file works beside it."""
    client_file, admin_file = tmp_path / "client", tmp_path / "admin"
    client_digest = hashlib.sha256(b"rotated-client").hexdigest()
    client_file.write_text(f"sha256:{client_digest}\n")
    admin_file.write_text("plain-admin\n")
    env = {"BERTSERVE_API_KEYS_FILE": str(client_file), "BERTSERVE_ADMIN_API_KEYS_FILE": str(admin_file)}
    server = start_server(tiny_model_repo, env=env)
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, "rotated-client").status_code == 200
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, f"sha256:{client_digest}").status_code == 401
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, client_digest).status_code == 401
    assert call(server, "POST", "/admin/models/tiny/load", None, "rotated-client").status_code == 403
    assert call(server, "POST", "/admin/models/tiny/load", None, "plain-admin").status_code == 200
