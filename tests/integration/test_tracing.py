"""OpenTelemetry traces from a real `bertserve serve` on 127.0.0.1, exported by the SDK's own OTLP/HTTP exporter to
a receiver in the test (a plain HTTP server taking POST /v1/traces) that decodes the protobuf payload with
opentelemetry-proto: the span tree, its attributes, a continued `traceparent` (HTTP header, gRPC metadata from
tritonclient.grpc), no text in it, the trace id in the access log; and with tracing unset or disabled, nothing
exported while requests are served as ever."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support.servers import post

pytestmark = pytest.mark.process

SECRET = "a deeply personal review nobody else may read"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
SERVER, INTERNAL = 2, 1  # the protobuf's SpanKind values


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps each export's raw body and its decoded spans."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
                if ok:
                    decoded = ExportTraceServiceRequest.FromString(body)
                    with receiver.changed:
                        receiver.bodies.append(body)
                        receiver.requests.append(decoded)
                        receiver.changed.notify_all()
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list:
        with self.changed:
            return [(resource.resource, span) for request in self.requests for resource in request.resource_spans
                    for scope in resource.scope_spans for span in scope.spans]

    def wait_for(self, condition, timeout_s: float = 30):
        """The spans once `condition(spans)` holds (woken by each export, bounded)."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not condition(spans := self.spans()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"spans never matched; got {[s.name for _, s in spans]}")
                self.changed.wait(left)
            return spans

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def no_otel_from_outside(monkeypatch):
    """The servers get only the OTEL_* variables a test gives them."""
    import os

    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


def attributes(span) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def test_a_prediction_is_exported_as_a_server_span_with_its_phases_continuing_the_callers_trace(
        tiny_model_repo, start_server, receiver):
    server = start_server(tiny_model_repo, env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "bertserve-under-test", "BERTSERVE_ACCESS_LOG": "true",
    })
    r = post(server, {"inputs": [SECRET, "fine"]}, headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    assert r.status_code == 200
    spans = receiver.wait_for(lambda spans: len(spans) >= 4)
    (resource, root), = [(res, s) for res, s in spans if s.kind == SERVER]
    assert {kv.key: kv.value.string_value for kv in resource.attributes}["service.name"] == "bertserve-under-test"
    assert root.name == "POST /predict"
    assert root.trace_id.hex() == CALLER_TRACE and root.parent_span_id.hex() == CALLER_SPAN
    assert attributes(root) == {
        "http.request.method": "POST", "http.route": "/predict", "http.response.status_code": 200,
        "bertserve.model": "tiny", "bertserve.model.version": "1", "bertserve.texts": 2, "bertserve.sequences": 2,
    }
    children = sorted((s for _, s in spans if s.kind != SERVER), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in children][:2] == ["tokenize", "queue"]
    assert {s.name for s in children[2:]} == {"inference"}
    assert all(s.kind == INTERNAL and s.trace_id == root.trace_id and s.parent_span_id == root.span_id
               for s in children)
    assert attributes(children[0])["bertserve.tokens"] > 2
    batches = [attributes(s) for s in children[2:]]
    assert sum(b["bertserve.batch.size"] for b in batches) >= 2 and all(b["bertserve.batch.tokens"] > 0
                                                                         for b in batches)
    for span in children:
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano \
            <= root.end_time_unix_nano
    # The trace id is on the request's access-log line.
    access = [json.loads(line) for line in server.output().splitlines() if '"bertserve.access"' in line]
    assert [entry.get("trace_id") for entry in access if "/predict" in entry["message"]] == [CALLER_TRACE]

    # A request without traceparent starts a trace of its own; one whose model is unknown is traced too.
    assert post(server, {"inputs": SECRET, "model": "other"}).status_code == 404
    spans = receiver.wait_for(lambda spans: sum(s.kind == SERVER for _, s in spans) == 2)
    refused = next(s for _, s in spans if s.kind == SERVER and s.span_id != root.span_id)
    assert refused.parent_span_id == b"" and refused.trace_id.hex() != CALLER_TRACE
    assert attributes(refused)["http.response.status_code"] == 404
    server.stop()
    assert not any(SECRET.encode() in body or b"deeply personal" in body for body in receiver.bodies)


def test_with_tracing_unset_or_disabled_nothing_is_exported_and_requests_are_served(
        tiny_model_repo, start_server, receiver):
    unset = start_server(tiny_model_repo, env={"BERTSERVE_ACCESS_LOG": "true", "OTEL_SERVICE_NAME": "x"})
    disabled = start_server(tiny_model_repo, env={"BERTSERVE_ACCESS_LOG": "true", "OTEL_SDK_DISABLED": "true",
                                                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                  "OTEL_BSP_SCHEDULE_DELAY": "50"})
    for server in (unset, disabled):
        traced = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        assert post(server, {"inputs": [SECRET, "fine"]}, headers=traced).status_code == 200
        assert server.stop() == 0  # a tracer would have flushed its spans by now
        access = [line for line in server.output().splitlines() if '"bertserve.access"' in line]
        assert access and not any("trace_id" in line for line in access)
        assert "tracing:" not in server.output()
    assert receiver.requests == []


def test_a_grpc_infer_call_is_traced_continuing_the_callers_trace(tiny_model_repo, start_server, receiver):
    import numpy as np
    import tritonclient.grpc as tgrpc

    server = start_server(tiny_model_repo, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                "OTEL_BSP_SCHEDULE_DELAY": "50"})
    text = tgrpc.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([SECRET.encode(), b"fine"], dtype=object))
    with tgrpc.InferenceServerClient(server.grpc_address) as client:
        client.infer("tiny", [text], headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    spans = receiver.wait_for(lambda spans: len(spans) >= 4)
    (root,) = [s for _, s in spans if s.kind == SERVER]
    assert root.name == "inference.GRPCInferenceService/ModelInfer"
    assert root.trace_id.hex() == CALLER_TRACE and root.parent_span_id.hex() == CALLER_SPAN
    assert attributes(root) == {
        "rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0, "bertserve.model": "tiny", "bertserve.model.version": "1", "bertserve.texts": 2,
        "bertserve.sequences": 2,
    }
    children = [s for _, s in spans if s.kind != SERVER]
    assert {s.name for s in children} == {"tokenize", "queue", "inference"}
    assert all(s.parent_span_id == root.span_id and s.trace_id == root.trace_id for s in children)
    server.stop()
    assert not any(SECRET.encode() in body for body in receiver.bodies)


def test_a_forged_tracestate_reaches_no_log_line_and_the_trace_still_continues_the_caller(
        tiny_model_repo, start_server, receiver):
    """Not W3C-valid and 6.6 KB: dropped before OpenTelemetry's propagator, which would log it quoted, raw."""
    import numpy as np
    import tritonclient.grpc as tgrpc

    marker = "FORGED level=critical user=admin action=deleted-all-models"
    forged = ",".join(f"k{i}=v" for i in range(950)) + f",{marker}"  # valid members first, then the forgery
    assert 6_500 < len(forged) < 8_000  # under OpenTelemetry's own 8 KB cut, under gRPC's 8 KB metadata limit
    traced = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": forged}
    server = start_server(tiny_model_repo, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                "OTEL_BSP_SCHEDULE_DELAY": "50", "BERTSERVE_ACCESS_LOG": "true"})
    assert post(server, {"inputs": "fine"}, headers=traced).status_code == 200
    text = tgrpc.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"fine"], dtype=object))
    with tgrpc.InferenceServerClient(server.grpc_address) as client:
        client.infer("tiny", [text], headers=traced)
    spans = receiver.wait_for(lambda spans: sum(s.kind == SERVER for _, s in spans) == 2)
    roots = [s for _, s in spans if s.kind == SERVER]
    assert {s.name for s in roots} == {"POST /predict", "inference.GRPCInferenceService/ModelInfer"}
    assert all(s.trace_id.hex() == CALLER_TRACE and s.parent_span_id.hex() == CALLER_SPAN and not s.trace_state
               for s in roots)
    assert server.stop() == 0
    output = server.output()
    assert "FORGED" not in output and "k949=v" not in output
    # Every line is the service's JSON, but for gRPC's C core (absl's "I1207 13:58:33.490249 ..." lines, written
    # by native code past Python's logging: GRPC_VERBOSITY decides those).
    lines = [line for line in output.splitlines() if line.strip() and not re.match(r"[IWEF]\d{4} ", line)]
    assert lines and all(json.loads(line)["logger"] for line in lines)
