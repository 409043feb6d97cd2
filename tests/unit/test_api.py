"""The HTTP transports in-process (httpx's ASGITransport over the app; no server process, no socket): shapes,
headers and the JSON error of each kind. Process-level behaviour (workers, signals, sockets) stays in
tests/integration with real servers."""

from __future__ import annotations

import gzip

import orjson
import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.apps import in_process


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                   max_client_batch_size=2, max_body_bytes=2048, log_level="warning"))


def test_predict_is_tried_first_and_every_route_sits_in_the_app_table(tiny_model_repo):
    """The hot path's routing stays a first-entry match: no FastAPI included router (resolved per request) in
    the table, whose entries are all plain routes with a path."""
    app = create_app(Settings(model_repository=tiny_model_repo, admin_without_key=True, log_level="warning"))
    assert app.router.routes[0].path == "/predict"
    assert all(isinstance(getattr(route, "path", None), str) for route in app.router.routes)
    assert {"/predict", "/explain", "/v2/models/{name}/infer", "/admin/models/{name}/load"} <= {
        route.path for route in app.router.routes}


def test_predict_shapes_and_headers(call):
    one = call("POST", "/predict", json={"inputs": "this medicine worked wonders"})
    assert one.status_code == 200 and one.headers["x-model-name"] == "tiny" and one.headers["x-model-version"] == "1"
    assert one.headers["x-request-id"]
    labels = one.json()
    assert sorted(x["label"] for x in labels) == ["negative", "neutral", "positive"]
    assert [x["score"] for x in labels] == sorted((x["score"] for x in labels), reverse=True)
    nested = call("POST", "/predict", json={"inputs": ["good", "bad"], "parameters": {"top_k": 1}}).json()
    assert len(nested) == 2 and all(len(row) == 1 for row in nested)
    zipped = call("POST", "/predict", content=gzip.compress(orjson.dumps({"inputs": "fine"})),
                  headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert zipped.status_code == 200


@pytest.mark.parametrize(("kwargs", "status", "kind", "message"), [
    ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 422, "validation", "Invalid JSON"),
    ({"json": {"inputs": ""}}, 422, "validation", "inputs"),
    ({"json": {"inputs": ["a", "b", "c"]}}, 422, "validation", "3 inputs in one request; the limit is 2"),
    ({"json": {"inputs": "x", "model": "nope"}}, 404, "not_found", "'nope' is not served"),
    ({"content": b"inputs=x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type",
     "send Content-Type: application/json"),
    ({"json": {"inputs": "x" * 4000}}, 413, "payload_too_large", "over the 2048-byte limit"),
])
def test_each_bad_request_gets_its_json_error(call, kwargs, status, kind, message):
    r = call("POST", "/predict", **kwargs)
    assert r.status_code == status and r.json()["error_type"] == kind and message in r.json()["error"], r.text


def test_models_health_and_v2_readiness(call):
    [model] = call("GET", "/models").json()
    assert model["state"] == "ready" and model["engine"]["candidates"] and model["engine"]["cpu"]
    assert call("GET", "/health/ready").json()["status"] == "ready"
    assert call("GET", "/v2/models/tiny/ready").json()["ready"] is True
    assert call("GET", "/v2/models/nope/ready").status_code == 404
    assert call("GET", "/nowhere").json()["error_type"] == "not_found"


def test_predict_is_one_lean_route_that_refuses_dependencies():
    """/predict is declared once and served as a plain handler; a dependency added to a lean route would be
    documented and never run, so declaring one fails at once."""
    from fastapi import APIRouter, Depends
    from fastapi.routing import APIRoute

    from app.api.predict import routes
    from app.api.transport import LeanRoute

    declared = [r for r in routes.router.routes if isinstance(r, APIRoute) and r.path == "/predict"]
    assert len(declared) == 1 and isinstance(declared[0], LeanRoute)
    assert declared[0].get_route_handler() is routes.predict
    with pytest.raises(TypeError, match="no dependencies"):
        APIRouter(route_class=LeanRoute).post("/x", dependencies=[Depends(lambda: None)])(routes.predict)
