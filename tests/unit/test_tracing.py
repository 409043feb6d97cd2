"""app.tracing: which OTEL_* variables turn tracing on, and the spans one request leaves (the app in-process, a real
onnxruntime session on the tiny model, spans kept by the SDK's in-memory exporter); with tracing off, none at all."""

from __future__ import annotations

import logging
import re

import pytest
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app import tracing
from app.record import RequestRecord
from app.settings import Settings
from tests.support.apps import in_process

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SECRET = "my very private review text"


@pytest.mark.parametrize("env, wanted", [
    ({}, []),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),  # nowhere to send: off
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),  # the SDK's default endpoint (localhost:4318)
    ({"OTEL_TRACES_EXPORTER": "console, otlp, zipkin"}, ["console", "otlp"]),  # zipkin: warned and ignored
])
def test_the_otel_variables_decide_whether_spans_are_exported(env, wanted):
    assert tracing.exporters(env) == wanted


@pytest.mark.parametrize("env, problem", [
    ({"OTEL_TRACES_SAMPLER": "bogus"}, None),  # tracing off: the sampler is not used
    ({"OTEL_TRACES_EXPORTER": "console"}, None),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio",
      "OTEL_TRACES_SAMPLER_ARG": "0.1"}, None),  # the SDK reads the name in any case
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "traceidratio"}, None),  # no ratio: 1.0
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER_ARG": "x"},
     None),  # a ratio the sampler takes none of
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "bogus"},
     ("OTEL_TRACES_SAMPLER: 'bogus' is not a sampler; use one of always_on, always_off, traceidratio, "
      "parentbased_always_on, parentbased_always_off, parentbased_traceidratio")),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "ten percent"}, "OTEL_TRACES_SAMPLER_ARG: 'ten percent' is not a ratio"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "10"}, "OTEL_TRACES_SAMPLER_ARG: '10' is not a ratio"),
])
def test_a_sampler_opentelemetry_does_not_know_is_refused_where_the_sdk_would_sample_everything(env, problem):
    found = tracing.sampler_problem(env)
    assert found == problem if problem is None else found.startswith(problem)
    if problem is not None:
        with pytest.raises(ValueError, match="^OTEL_TRACES_SAMPLER"):
            tracing.setup(env=env)  # a worker started otherwise than by `bertserve serve` refuses it too
        assert tracing.tracer is None


def test_bertserve_serve_stops_at_a_bogus_sampler_with_one_line(monkeypatch, capsys):
    from app import cli

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "bogus")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["serve"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        ("bertserve: bad setting OTEL_TRACES_SAMPLER: 'bogus' is not a sampler; use one of always_on, always_off, "
         "traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio")]


def test_nothing_is_set_up_without_an_exporter_nor_with_otlp_over_grpc():
    assert not tracing.setup(env={}) and tracing.tracer is None
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert not tracing.setup(env=grpc) and tracing.tracer is None


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                   max_batch_size=2, log_level="warning"))


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    assert tracing.setup(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()
    assert tracing.tracer is None


@pytest.fixture
def made(monkeypatch) -> list:
    """Every span object made in this test (the SDK's spans are all ReadableSpans, the finished ones too)."""
    created: list = []
    init = sdk_trace.ReadableSpan.__init__

    def counting(self, *args, **kwargs):
        created.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(sdk_trace.ReadableSpan, "__init__", counting)
    return created


def test_with_tracing_off_requests_create_no_span(call, made):
    assert tracing.tracer is None
    assert call("POST", "/predict", json={"inputs": ["good", "bad"]}).status_code == 200
    assert call("POST", "/v2/models/tiny/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}).status_code == 200
    assert call("POST", "/predict", json={"inputs": "x", "model": "nope"}).status_code == 404
    assert made == []


def test_a_prediction_leaves_a_server_span_continuing_the_caller_and_its_three_phases(call, spans, made):
    texts = [SECRET, "fine", "awful side effects"]  # three sequences, batches of at most 2
    r = call("POST", "/predict", json={"inputs": texts},
             headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=1"})
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    assert len(made) == len(finished)
    server = next(s for s in finished if s.kind is SpanKind.SERVER)
    assert server.name == "POST /predict"
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.parent.is_remote and server.context.trace_state.get("vendor") == "1"
    assert dict(server.attributes) == {
        "http.request.method": "POST", "http.route": "/predict", "http.response.status_code": 200,
        "bertserve.model": "tiny", "bertserve.model.version": "1", "bertserve.texts": 3, "bertserve.sequences": 3,
    }
    children = [s for s in finished if s is not server]
    assert all(s.parent.span_id == server.context.span_id and s.context.trace_id == server.context.trace_id
               for s in children)
    names = [s.name for s in sorted(children, key=lambda s: s.start_time)]
    assert names[:2] == ["tokenize", "queue"] and set(names[2:]) == {"inference"} and len(names) in (4, 5)
    tokenize, queue = children[0], children[1]
    assert tokenize.attributes["bertserve.sequences"] == 3 and tokenize.attributes["bertserve.tokens"] >= 3 * 3
    assert queue.attributes["bertserve.batches"] == len(names) - 2
    batches = [s for s in children if s.name == "inference"]
    assert sum(s.attributes["bertserve.batch.size"] for s in batches) >= 3
    assert all(1 <= s.attributes["bertserve.batch.size"] <= 2 and s.attributes["bertserve.batch.tokens"] >= 3
               for s in batches)
    for span in finished:  # laid inside the request, and no text anywhere
        assert server.start_time <= span.start_time <= span.end_time <= server.end_time
        assert all(SECRET not in str(v) for v in span.attributes.values()) and SECRET not in span.name
    # The trace id is handed to the access log through the request's context (read by the middleware).


def test_a_v2_call_and_a_refused_request_are_traced_by_route_template_without_the_path(call, spans):
    assert call("POST", "/v2/models/tiny/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}).status_code == 200
    assert call("POST", "/v2/models/secret-name/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}).status_code == 404
    ok, missing = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert ok.name == missing.name and re.fullmatch(r"POST /v2/models/\{\w+\}/infer", ok.name)
    assert ok.attributes["bertserve.texts"] == 1 and ok.parent is None
    assert missing.attributes["http.response.status_code"] == 404 and "bertserve.texts" not in missing.attributes
    assert all("secret-name" not in str(v) for v in missing.attributes.values())
    assert missing.status.status_code is StatusCode.UNSET  # the caller's error, not the server's
    assert [s.parent.span_id for s in spans.get_finished_spans() if s.kind is not SpanKind.SERVER] == \
        [ok.context.span_id] * 3  # a refused request ran nothing: no phases


def test_a_malformed_traceparent_starts_a_trace_of_its_own_and_an_unsampled_one_records_nothing(call, spans):
    assert call("POST", "/predict", json={"inputs": "x"}, headers={"traceparent": "00-zz-01"}).status_code == 200
    (server,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert server.parent is None and f"{server.context.trace_id:032x}" != CALLER_TRACE
    spans.clear()
    unsampled = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}  # the caller decided: not sampled
    assert call("POST", "/predict", json={"inputs": "x"}, headers=unsampled).status_code == 200
    assert spans.get_finished_spans() == ()


FORGED = "FORGED level=critical"  # not a W3C tracestate member: OpenTelemetry would log it, quoted


@pytest.mark.parametrize("tracestate", [
    f"vendor=1,{FORGED}",  # not W3C-valid
    ",".join(f"k{i}=v" for i in range(100)),  # valid members, but over 512 characters (and 32 members)
    ",".join(f"k{i}=v" for i in range(33)),  # under 512 characters, over 32 members (OpenTelemetry warns)
])
def test_a_tracestate_it_would_refuse_is_dropped_before_the_propagator_without_a_log_line(
        call, spans, caplog, tracestate):
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    assert call("POST", "/predict", json={"inputs": "x"},
                headers={"traceparent": traceparent, "tracestate": tracestate}).status_code == 200
    record = RequestRecord("grpc", "ModelInfer", "tiny", "r-1", 0.0, "/inference.GRPCInferenceService/ModelInfer",
                           (("traceparent", traceparent), ("tracestate", tracestate)))
    tracing.record_request(record, "tiny", 200, 0)
    http, grpc = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    for server in (http, grpc):  # the caller's trace continues, without its tracestate
        assert f"{server.context.trace_id:032x}" == CALLER_TRACE and f"{server.parent.span_id:016x}" == CALLER_SPAN
        assert len(server.context.trace_state) == 0
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == [] and "FORGED" not in caplog.text


def test_grpc_calls_are_recorded_from_their_record(spans):
    record = RequestRecord("grpc", "ModelInfer", "tiny", "r-1", 0.0, "/inference.GRPCInferenceService/ModelInfer",
                           (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"), ("authorization", "Bearer k")))
    tracing.record_request(record, "tiny", 503, 14)
    (server,) = spans.get_finished_spans()
    assert server.name == "inference.GRPCInferenceService/ModelInfer" and server.kind is SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE == record.trace_id
    assert server.status.status_code is StatusCode.ERROR  # UNAVAILABLE is the server's
    assert dict(server.attributes) == {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                                       "rpc.method": "ModelInfer", "rpc.grpc.status_code": 14,
                                       "bertserve.model": "tiny"}


def test_tracing_reads_the_request_record_and_not_the_core():
    """Tracing sits on a low floor: it takes the request's record and imports no room it observes."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(tracing))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("app")} <= {"app", "app.logs", "app.record"}
