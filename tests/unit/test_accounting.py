"""What both transports share (app.api.accounting, app.record, app.api.security, app.api.errors), checked without a
server: one request-id rule, one record per request filled by the core, one accounting at the end, one key check
returning the refusal kind, and one status table with an HTTP and a gRPC status for every error kind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from app import errors
from app.api import accounting
from app.api.errors import _KIND_OF_STATUS, STATUS, STATUSES
from app.api.security import Keys, refused
from app.record import RequestRecord, current
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.services import service_on


def _kinds(cls: type) -> set[str]:
    return {cls.kind} | {kind for sub in cls.__subclasses__() for kind in _kinds(sub)}


def test_every_error_kind_has_an_http_and_a_grpc_status():
    kinds = _kinds(errors.ServiceError) | set(_KIND_OF_STATUS.values())
    assert kinds <= set(STATUSES), kinds - set(STATUSES)
    for kind, (http, code) in STATUSES.items():
        assert 400 <= http < 600 and code in grpc.StatusCode.__members__ and code != "OK", kind
    assert STATUS == {kind: http for kind, (http, _) in STATUSES.items()}


@pytest.mark.parametrize("given, kept", [
    ("trace-42", True), ("a.b:c_d-1", True), ("x" * 128, True),
    (None, False), ("", False), ("x" * 129, False), ("two words", False), ("line\n", False), ("é", False),
])
def test_one_request_id_rule(given, kept):
    rid = accounting.request_id_for(given)
    if kept:
        assert rid == given
    else:
        assert len(rid) == 32 and int(rid, 16) >= 0 and rid != accounting.request_id_for(given)


@pytest.mark.parametrize("group, caller, refusal", [
    ("open", None, None), ("open", b"nope", None),
    ("client", None, "unauthorized"), ("client", b"nope", "unauthorized"), ("client", b"", "unauthorized"),
    ("client", b"c-key", None), ("client", b"a-key", None),
    ("admin", b"c-key", "forbidden"), ("admin", None, "unauthorized"), ("admin", b"a-key", None),
    ("metrics", None, None),  # open unless BERTSERVE_PROTECT_METRICS
])
def test_one_key_check_says_why_a_caller_is_refused(group, caller, refusal):
    keys = Keys(Settings(api_keys="c-key", admin_api_keys="a-key"))
    assert keys.refusal(group, caller) == refusal


def test_a_refusal_is_answered_as_its_error_kind_on_both_transports():
    for kind in ("unauthorized", "forbidden"):
        http, grpc_style = refused(kind), refused(kind, "metadata authorization: Bearer <key>", "call")
        assert http.kind == grpc_style.kind == kind and isinstance(http, errors.ServiceError)
    assert refused("unauthorized").message == "a valid API key is required: Authorization: Bearer <key>"
    assert refused("forbidden", what="call").message == "this call needs an admin key (BERTSERVE_ADMIN_API_KEYS)"


def test_the_http_refusal_keeps_its_shape_and_www_authenticate(tiny_model_repo):
    settings = Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                        log_level="warning", api_keys="c-key", admin_api_keys="a-key")
    for call in in_process(settings):
        r = call("POST", "/predict", json={"inputs": "x"})
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
        assert r.json() == {"error": "a valid API key is required: Authorization: Bearer <key>",
                            "error_type": "unauthorized"}
        r = call("POST", "/admin/models/tiny/load", headers={"Authorization": "Bearer c-key"})
        assert r.status_code == 403 and "www-authenticate" not in r.headers
        assert r.json() == {"error": "this route needs an admin key (BERTSERVE_ADMIN_API_KEYS)",
                            "error_type": "forbidden"}


def _service(draining: bool = False) -> SimpleNamespace:
    return SimpleNamespace(draining=draining, metric_label=lambda name: name or "default")


def test_a_request_is_counted_timed_and_its_record_made_current():
    registry = CollectorRegistry()
    counter = Counter("requests", "", ["model", "version", "status", "protocol", "route"], registry=registry)
    duration = Histogram("duration_seconds", "", ["model", "version"], registry=registry)

    async def request() -> RequestRecord:
        record = accounting.start("grpc", "ModelInfer", None, "/inference.GRPCInferenceService/ModelInfer")
        assert current.get() is record and record.version == "" and record.rows == ()
        record.version = "3"  # as the core fills it
        accounting.finish(_service(), record, 200, grpc.StatusCode.OK, counter, duration)
        return record

    record = asyncio.run(request())
    assert current.get() is None  # the request's own task held it
    labels = {"model": "default", "version": "3", "status": "200", "protocol": "grpc", "route": "ModelInfer"}
    assert registry.get_sample_value("requests_total", labels) == 1
    assert registry.get_sample_value("duration_seconds_count", {"model": "default", "version": "3"}) == 1
    assert record.started > 0 and record.trace_id is None  # tracing off: no trace


def test_a_cancelled_request_is_the_client_leaving_unless_the_server_drains():
    assert accounting.cancelled(_service()) == (499, "CANCELLED")
    assert accounting.cancelled(_service(draining=True)) == (503, "UNAVAILABLE")


def test_the_core_fills_the_record_of_the_request_it_serves(tiny_model_repo):
    service = service_on(tiny_model_repo)

    async def classify() -> RequestRecord:
        await service.load_all()
        try:
            record = accounting.start("http", "/predict", "tiny")
            await service.classify(["good", "bad"], model="tiny", timeout_s=10)
            return record
        finally:
            await service.close()

    record = asyncio.run(classify())
    assert (record.version, record.text_count, len(record.rows)) == ("1", 2, 2)
    assert all(timing.batch_size >= 1 for _, timing in record.rows)
