"""OpenTelemetry traces, the one place for them: per request a server span (model, version, route, status, texts)
with child spans for its tokenization, queue wait and each batch it ran in (size, tokens), exported over OTLP/HTTP.

Configured only by the standard OTEL_* variables, read by opentelemetry-sdk itself: OTEL_EXPORTER_OTLP_ENDPOINT
(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), _HEADERS, _TIMEOUT, _COMPRESSION, OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* (the batch span processor); OTEL_TRACES_EXPORTER
(otlp, console, none) and OTEL_SDK_DISABLED. With no endpoint and no exporter named, nothing is set up (the SDK is
not even imported) and a request pays one `tracer is None` check.

A sampler OpenTelemetry does not know (OTEL_TRACES_SAMPLER) or a ratio that is not one (OTEL_TRACES_SAMPLER_ARG)
is refused at start (`sampler_problem`), where the SDK would warn and sample everything.

Spans are recorded after the answer, with explicit start and end times, from the request's record (app.record:
route, answering version, and what the batcher measured, app.batching.Timing, as the inference core left it
there): the worker threads never touch OpenTelemetry, and this module knows nothing of the rooms it observes. A
W3C `traceparent` (HTTP header or gRPC metadata) continues the caller's trace; a `tracestate` over 512 characters
or not W3C-valid is dropped before OpenTelemetry's propagator sees it (it would log it). Spans carry names, counts and
times, never the client's text: the model is the metric label (a served model's name), the route its template."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.logs import exception_summary
from app.record import RequestRecord

log = logging.getLogger("bertserve.tracing")

tracer: trace_api.Tracer | None = None  # this worker's, once set up; None: tracing is off (what requests check)
_provider: Any = None  # the SDK's TracerProvider, flushed and shut down at exit
_processors: list = []  # its span processors, which each request's finished spans are handed to
_scope: Any = None  # the instrumentation scope the spans are recorded under (bertserve, its version)
_ReadableSpan: Any = None  # the SDK's finished span (imported with the SDK, once tracing is set up)
_propagator = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")  # the trace context's headers (W3C)
# A tracestate the propagator is never shown (W3C Trace Context lets a receiver drop it and keep the traceparent):
# one over 512 characters (else every span would carry it on), over 32 members, or not W3C-valid, which
# OpenTelemetry logs as a warning quoting the client's text (the same grammar as its own, so it never warns).
_TRACESTATE_MAX_CHARS, _TRACESTATE_MAX_MEMBERS = 512, 32
_TRACESTATE_MEMBER = re.compile(r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
                                r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
# OpenTelemetry's samplers, as the SDK's TracerProvider reads OTEL_TRACES_SAMPLER (any other: a warning, and
# parentbased_always_on). Samplers registered as entry points are for the SDK's auto-configuration only.
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")

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


def sampler_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """What is wrong with OTEL_TRACES_SAMPLER(_ARG) when spans are to be exported, in one line; None: nothing
    (or tracing is off, and the sampler unused)."""
    if not exporters(env):
        return None
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        return f"OTEL_TRACES_SAMPLER: {env['OTEL_TRACES_SAMPLER']!r} is not a sampler; use one of {', '.join(SAMPLERS)}"
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if sampler.endswith("traceidratio") and arg:  # unset: 1.0, OpenTelemetry's default
        try:
            ratio = float(arg)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            return f"OTEL_TRACES_SAMPLER_ARG: {arg!r} is not a ratio; {sampler} keeps that share of traces, 0 to 1"
    return None


def setup(processor: Any = None, env: Mapping[str, str] = os.environ) -> bool:
    """Set up this worker's tracer from the OTEL_* variables (once, at start-up), or with `processor` (a span
    processor: tests). Returns whether tracing is on."""
    global tracer, _provider, _processors, _scope, _ReadableSpan
    if _provider is not None:
        return True
    names = [] if processor is not None else exporters(env)
    if processor is None and not names:
        return False
    if processor is None and (problem := sampler_problem(env)):  # `bertserve serve` refused it already
        raise ValueError(problem)
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


def record_request(record: RequestRecord, model: str, status: int, grpc_code: Any = None) -> None:
    """The trace of a request just answered (app.api.accounting.finish calls it, only when `tracer` is set): its
    server span from the record's start to now, continuing the caller's trace from its headers or metadata, and
    its phases. `model`: its metric label; `status`: the HTTP status of its outcome; `grpc_code`: a gRPC call's
    own (a grpc.StatusCode or its number). A fault here is logged, never the request's: the answer is decided."""
    try:
        if record.protocol == "grpc":
            name, carrier, attributes, error = _grpc(record, grpc_code)
        else:
            name, carrier, attributes, error = _http(record, status)
        _spans(record, name, carrier, attributes, error, model)
    except Exception as exc:
        log.warning("a request's trace was not recorded: %s", exception_summary(exc))


def _http(record: RequestRecord, status: int) -> tuple[str, dict[str, str], dict[str, Any], bool]:
    """Named by method and route template (never the path, which holds names the client chose)."""
    carrier = _carrier((k.decode("latin-1"), v.decode("latin-1")) for k, v in record.headers if k in _CARRIED)
    attributes = {"http.request.method": record.method, "http.route": record.route,
                  "http.response.status_code": status}
    if status >= 500:
        attributes["error.type"] = str(status)
    return f"{record.method} {record.route}".strip(), carrier, attributes, status >= 500


def _grpc(record: RequestRecord, code: Any) -> tuple[str, dict[str, str], dict[str, Any], bool]:
    """Named by the full method as gRPC names it ("/inference.GRPCInferenceService/ModelInfer", less its slash)."""
    code = code.value[0] if hasattr(code, "value") else int(code)
    name = record.method.lstrip("/")
    service, _, method = name.rpartition("/")
    carrier = _carrier((key, value) for key, value in record.headers if key in ("traceparent", "tracestate"))
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": code}
    return name, carrier, attributes, code in _GRPC_SERVER_ERRORS


def _carrier(pairs: Any) -> dict[str, str]:
    """The trace context for the propagator from (name, value) pairs: the last traceparent, and the tracestate
    fields joined (RFC 9110) unless it is to be dropped (see _TRACESTATE_MEMBER)."""
    carrier: dict[str, str] = {}
    states: list[str] = []
    for name, value in pairs:
        if name == "tracestate":
            states.append(value)
        elif len(value) <= 512:  # longer: OpenTelemetry ignores it, with a warning per request
            carrier[name] = value
    state = ",".join(states)
    if state and len(state) <= _TRACESTATE_MAX_CHARS:
        members = [m for m in (m.strip(" \t") for m in state.split(",")) if m]
        if len(members) <= _TRACESTATE_MAX_MEMBERS and all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
            carrier["tracestate"] = state
    return carrier


def _spans(record: RequestRecord, name: str, carrier: dict[str, str], attributes: dict[str, Any], error: bool,
           model: str) -> None:
    """The server span and its children, from perf_counter times (converted to the wall clock spans use). They
    are made finished, as the SDK's ReadableSpan its processors take at a span's end, with the SDK's own sampler,
    ids and resource: what start_span and end would do for spans that never change after, at about a third of
    its event-loop cost (no attribute bounds, locks or context objects per span)."""
    if _provider is None:
        return
    rows = record.rows
    attributes["bertserve.model"] = model
    if record.version:
        attributes["bertserve.model.version"] = record.version
    if rows:
        attributes["bertserve.texts"] = record.text_count
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
                          start_time=int(record.started * 1e9) + offset, end_time=now, instrumentation_scope=_scope)]
    for child, start, end, child_attributes in _phases([timing for _, timing in rows]) if rows else ():
        context = trace_api.SpanContext(trace, ids.generate_span_id(), False, server.trace_flags, server.trace_state)
        spans.append(_ReadableSpan(child, context, server, _provider.resource, child_attributes,
                                  start_time=int(start * 1e9) + offset, end_time=int(end * 1e9) + offset,
                                  instrumentation_scope=_scope))
    for span in spans:
        for processor in _processors:
            processor.on_end(span)
    record.trace_id = trace_api.format_trace_id(trace)  # for the request's access-log line (app.api.middleware)


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
