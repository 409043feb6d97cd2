"""OpenTelemetry traces, the one place for them: per request a server span (model, version, route, status, texts)
with child spans for its tokenization, queue wait and each batch it ran in (size, tokens), exported over OTLP/HTTP.

Configured only by the standard OTEL_* variables, read by opentelemetry-sdk itself: OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), _HEADERS, _TIMEOUT, _COMPRESSION, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* (the batch span processor); OTEL_TRACES_EXPORTER
(otlp, console, none) and OTEL_SDK_DISABLED. With no endpoint and no exporter named, nothing is set up (the SDK is
not even imported) and a request pays one `tracer is None` check.

Spans are recorded after the answer, with explicit start and end times, from what the batcher measured
(app.batching.Timing, carried out of the inference core by its `ran` context variable): the worker threads never
touch OpenTelemetry. A W3C `traceparent` (HTTP header or gRPC metadata) continues the caller's trace. Spans carry
names, counts and times, never the client's text: the model is the metric label (a served model's name), the route
its template."""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.inference import ran
from app.logs import exception_summary

log = logging.getLogger("bertserve.tracing")

tracer: trace_api.Tracer | None = None  # this worker's, once set up; None: tracing is off (what requests check)
_provider: Any = None  # the SDK's TracerProvider, flushed and shut down at exit
_processors: list = []  # its span processors, which each request's finished spans are handed to
_scope: Any = None  # the instrumentation scope the spans are recorded under (bertserve, its version)
_ReadableSpan: Any = None  # the SDK's finished span (imported with the SDK, once tracing is set up)
_propagator = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")

# The HTTP request being served (its ASGI scope: method, route, headers), handed over by app.api.middleware when
# tracing is on; and its trace (hex) once recorded, for its access-log line (the middleware reads it).
http_scope: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("http_scope", default=None)
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

# gRPC status codes a server span counts as errors (OpenTelemetry's RPC conventions): UNKNOWN, DEADLINE_EXCEEDED,
# UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. The others are the caller's doing.
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_UNSET, _ERROR = Status(StatusCode.UNSET), Status(StatusCode.ERROR)


def exporters(env: Mapping[str, str] = os.environ) -> list[str]:
    """The span exporters the OTEL_* variables ask for ("otlp", "console"); none when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not named:  # OpenTelemetry's default exporter is otlp; here only once an endpoint says where to
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    unknown = [n for n in named if n not in ("otlp", "console", "none")]
    if unknown:
        log.warning("OTEL_TRACES_EXPORTER: %s not supported (otlp, console or none); ignored", ", ".join(unknown))
    return [n for n in dict.fromkeys(named) if n in ("otlp", "console")]


def setup(processor: Any = None, env: Mapping[str, str] = os.environ) -> bool:
    """Set up this worker's tracer from the OTEL_* variables (once, at start-up), or with `processor` (a span
    processor: tests). Returns whether tracing is on."""
    global tracer, _provider, _processors, _scope, _ReadableSpan
    if _provider is not None:
        return True
    names = [] if processor is not None else exporters(env)
    if processor is None and not names:
        return False
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    if "otlp" in names and protocol.strip() not in ("", "http/protobuf"):
        log.error("tracing is off: OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL=%s, but bertserve exports OTLP over "
                  "http/protobuf only (the collector's port 4318)", protocol)
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    resource = Resource.create({"service.version": __version__})  # + OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "bertserve"}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    processors = [processor] if processor is not None else []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout, compression, certificates: OTEL_EXPORTER_OTLP_*
            where = getattr(exporter, "_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")  # for the start-up line only
        else:
            exporter, where = ConsoleSpanExporter(), "standard output"
        processors.append(BatchSpanProcessor(exporter))  # OTEL_BSP_*: delay, queue and batch sizes, timeout
        log.info("tracing: spans of service %s exported (%s) to %s, sampler %s", resource.attributes[SERVICE_NAME],
                 name, where, provider.sampler.get_description())
    for span_processor in processors:
        provider.add_span_processor(span_processor)
    _provider, _processors, tracer = provider, processors, provider.get_tracer("bertserve", __version__)
    _scope, _ReadableSpan = InstrumentationScope("bertserve", __version__), ReadableSpan
    return True


def shutdown() -> None:
    """Export what is still buffered and stop (at the worker's exit; blocks up to the exporter's timeout)."""
    global tracer, _provider, _processors
    provider, tracer, _provider, _processors = _provider, None, None, []
    if provider is not None:
        provider.shutdown()


def record_http(status: int, started: float, model: str, version: str) -> None:
    """The trace of the HTTP prediction being served, begun at `started` (time.perf_counter()) and ended now:
    its server span, named by method and route template (never the path, which holds names the client chose),
    continuing a `traceparent` header. Call only when `tracer` is set (app.api.transport.tracked does)."""
    scope = http_scope.get() or {}
    route = getattr(scope.get("route"), "path", None) or ""
    method = scope.get("method", "")
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in _CARRIED}
    attributes = {"http.request.method": method, "http.route": route, "http.response.status_code": status}
    if status >= 500:
        attributes["error.type"] = str(status)
    _record(f"{method} {route}".strip(), carrier, attributes, status >= 500, started, model, version)


def record_grpc(full_method: str, metadata: Iterable[tuple[str, Any]], code: Any, started: float, model: str,
                version: str) -> None:
    """The same for one gRPC call: `full_method` as gRPC names it ("/inference.GRPCInferenceService/ModelInfer"),
    the call's invocation metadata (its `traceparent` continues the caller's trace), its status (a
    grpc.StatusCode, or its number). Call only when `tracer` is set, from the task that ran the call."""
    code = code.value[0] if hasattr(code, "value") else int(code)
    name = full_method.lstrip("/")
    service, _, method = name.rpartition("/")
    carrier = {key: value for key, value in metadata if key in ("traceparent", "tracestate")}
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": code}
    _record(name, carrier, attributes, code in _GRPC_SERVER_ERRORS, started, model, version)


def _record(name: str, carrier: dict[str, str], attributes: dict[str, Any], error: bool, started: float,
            model: str, version: str) -> None:
    """The server span and its children, from perf_counter times (converted to the wall clock spans use). A fault
    here is logged, never the request's: it runs once the answer is decided."""
    try:
        _spans(name, carrier, attributes, error, started, model, version)
    except Exception as exc:
        log.warning("a request's trace was not recorded: %s", exception_summary(exc))


def _spans(name: str, carrier: dict[str, str], attributes: dict[str, Any], error: bool, started: float,
           model: str, version: str) -> None:
    """The spans are made finished, as the SDK's ReadableSpan its processors take at a span's end, with the SDK's
    own sampler, ids and resource: what start_span and end would do for spans that never change after, at about a
    third of its event-loop cost (no attribute bounds, locks or context objects per span)."""
    if _provider is None:
        return
    texts, rows = ran.get()
    attributes["bertserve.model"] = model
    if version:
        attributes["bertserve.model.version"] = version
    if rows:
        attributes["bertserve.texts"] = texts
        attributes["bertserve.sequences"] = len(rows)
    context = _propagator.extract(carrier)
    parent = trace_api.get_current_span(context).get_span_context()
    ids = _provider.id_generator
    trace = parent.trace_id if parent.is_valid else ids.generate_trace_id()
    sampled = _provider.sampler.should_sample(context, trace, name, trace_api.SpanKind.SERVER, attributes)
    if not sampled.decision.is_sampled():
        return
    attributes.update(sampled.attributes or {})
    server = trace_api.SpanContext(trace, ids.generate_span_id(), False, trace_api.TraceFlags(1),
                                   sampled.trace_state)
    now = time.time_ns()
    offset = now - time.perf_counter_ns()  # perf_counter seconds -> the wall clock's nanoseconds spans use
    spans = [_ReadableSpan(name, server, parent if parent.is_valid else None, _provider.resource, attributes,
                          kind=trace_api.SpanKind.SERVER, status=_ERROR if error else _UNSET,
                          start_time=int(started * 1e9) + offset, end_time=now, instrumentation_scope=_scope)]
    for child, start, end, child_attributes in _phases([timing for _, timing in rows]) if rows else ():
        context = trace_api.SpanContext(trace, ids.generate_span_id(), False, server.trace_flags, server.trace_state)
        spans.append(_ReadableSpan(child, context, server, _provider.resource, child_attributes,
                                  start_time=int(start * 1e9) + offset, end_time=int(end * 1e9) + offset,
                                  instrumentation_scope=_scope))
    for span in spans:
        for processor in _processors:
            processor.on_end(span)
    trace_id.set(trace_api.format_trace_id(trace))


def _phases(timings: list) -> list[tuple[str, float, float, dict[str, Any]]]:
    """(name, start, end, attributes) of the request's child spans, in perf_counter seconds: tokenization and queue
    wait of its sequences, then one span per batch they ran in. The batcher measures how long a sequence was
    tokenized, not when: tokenization is drawn at the start of its wait."""
    enqueued = min(t.started - t.queue_s - t.tokenize_s for t in timings)
    tokenized = enqueued + max(t.tokenize_s for t in timings)
    batches = {(t.started, t.inference_s): t for t in timings}  # a batch's sequences share its start and duration
    first = min(started for started, _ in batches)
    return [
        ("tokenize", enqueued, tokenized, {"bertserve.sequences": len(timings),
                                           "bertserve.tokens": sum(t.tokens for t in timings)}),
        ("queue", min(tokenized, first), first, {"bertserve.batches": len(batches)}),
        *(("inference", started, started + took, {"bertserve.batch.size": timing.batch_size,
                                                  "bertserve.batch.tokens": timing.batch_tokens})
          for (started, took), timing in sorted(batches.items())),
    ]
