"""Every Prometheus metric of the service, defined once.

Multiprocess-safe: `bertserve serve` points PROMETHEUS_MULTIPROC_DIR at a folder cleared of its own earlier metric
files (app.cli) before anything imports prometheus_client (it picks its value store at import), so counters and
histograms of all workers add up in /metrics. Gauges say how they combine: queue size per live worker (pid label, sum it), model info as the max over live workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.drift import CONFIDENCE_EDGES, TOKEN_EDGES

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# `version` on request metrics: the version that answered (closed set: versions loaded by this process); "" for a
# request that ended before a version was chosen (validation, unknown model or version, draining).
# protocol: "http" or "grpc"; a gRPC call's status is the HTTP status of the same outcome (NOT_FOUND: 404, ...)
# route: the route's path template (/predict, /v2/models/{name}/infer, /v2/rerank...) or the gRPC method: a
# closed set, never the request's own path.
REQUESTS = Counter("bertserve_requests", "Prediction requests answered, by model, version, HTTP status, protocol "
                   "(http, grpc) and route.", ["model", "version", "status", "protocol", "route"])
REQUEST_DURATION = Histogram(
    "bertserve_request_duration_seconds", "Whole prediction request, admission to answer.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
EXPLANATIONS = Counter("bertserve_explanations", "Explanation requests answered (/explain, V1 :explain), by model, "
                       "version, HTTP status, protocol and route; not in bertserve_requests_total.",
                       ["model", "version", "status", "protocol", "route"])
EXPLANATION_DURATION = Histogram(
    "bertserve_explanation_duration_seconds", "Whole explanation request, admission to answer.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
RERANK_DOCUMENTS = Counter(
    "bertserve_rerank_documents", "Documents of answered rerank requests (also counted in bertserve_requests_total), "
    "by model, version, route (/rerank, /v1/rerank, /v2/rerank) and kind: scored (sent to the engine) or duplicate "
    "(the same text again in one request: answered with its score, not scored again).",
    ["model", "version", "route", "kind"],
)
TOKENIZATION_DURATION = Histogram(
    "bertserve_request_tokenization_duration_seconds", "Tokenization of the batch a request was in.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "bertserve_request_queue_duration_seconds", "Time a request waited for the engine.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "bertserve_request_inference_duration_seconds", "Engine time of the batch a request was in.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "bertserve_batch_size", "Sequences per engine call.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
BATCH_TOKENS = Histogram(
    "bertserve_batch_tokens", "Padded tokens per engine call (longest sequence x batch size).", ["model"],
    buckets=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
QUEUE_SIZE = Gauge(
    "bertserve_queue_size", "Sequences queued or running, per version and worker (sum over pid for the service; "
    "each version has its own queue and limit).", ["model", "version"],
    multiprocess_mode="liveall",
)
MODEL_INFO = Gauge(
    "bertserve_model_info", "1 for each model version being served, with the engine really in use: provider, "
    "artifact and precision (OpenVINO runs fp32 graphs in bf16 where the CPU has AMX).",
    ["model", "version", "provider", "quantization", "artifact", "precision"], multiprocess_mode="livemax",
)
ROUTING_TABLE_REFUSED = Gauge(
    "bertserve_routing_table_refused", "1 while a model's serving.json asks for a traffic table (weights, shadow) "
    "that cannot be served (a named version missing or failed, or the file malformed): the previous table stays in "
    "force, or, with none, the model is not ready. Max over live workers (they decide alike from the same files).",
    ["model"], multiprocess_mode="livemax",
)
AUDIT_WRITE_FAILURES = Counter(
    "bertserve_audit_write_failures", "Audit records (app.audit) that could not be written, by event; a failed "
    "admin record refuses the call only with BERTSERVE_AUDIT_REQUIRED, other events are never held up.", ["event"],
)
PREDICTIONS = Counter("bertserve_predictions", "Predicted labels (the top one; with a sigmoid head each over 0.5), "
                      "by model, version and label: the label feature of drift (app.drift).",
                      ["model", "version", "label"])
PREDICTION_CONFIDENCE = Histogram(
    "bertserve_prediction_confidence", "Top score of each prediction (the head's function; none for regression).",
    ["model", "version"], buckets=CONFIDENCE_EDGES,
)

TRUNCATED_TEXTS = Counter(
    "bertserve_truncated_texts", "Texts (or pairs) the model read only in part: cut to its max length (truncate "
    "true, the default for classifiers), or, rarely, a long text windowed from its first characters only.",
    ["model", "version"],
)
WINDOWED_TEXTS = Counter(
    "bertserve_windowed_texts", "Texts (or pairs) longer than the model's max length read whole in overlapping "
    "windows (truncate false), and the windows they made.", ["model", "version", "count"],
)
ENTITIES = Counter(
    "bertserve_entities", "Entities a token-classification model answered, after aggregation, by the model's own "
    "entity group (its labels without B-/I-; never a word or offset of the text).", ["model", "version", "entity"],
)
TOKEN_WINDOWS = Histogram(
    "bertserve_token_windows_per_request", "Sequences (windows) one token-classification request made the model "
    "read: one per text that fits, more for a longer text (truncate false).", ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

# Shadow versions (serving.json "shadow"): `version` is the shadow's, compared with whichever version answered.
GUARD_ROWS = Counter(
    "bertserve_guard_rows", "Rows of an INT8 version with a guard (app.guard), by outcome: checked (every row), "
    "rechecked (a near-tie run again on the fp32 graph), changed (of those, fp32 decided another label).",
    ["model", "version", "outcome"],
)
SHADOW_DECISIONS = Counter(
    "bertserve_shadow_decisions", "Answered requests' texts also run on the shadow version: its top label agreed "
    "with the answer's or not.", ["model", "version", "outcome"],
)
SHADOW_DROPPED = Counter(
    "bertserve_shadow_dropped", "Texts not compared on the shadow version, by reason: queue_full (no room: "
    "shadow work never waits), error (it raised; logged by type), shutdown, labels (not the answering "
    "version's labels), windows (a long text read in windows: the shadow would score other sequences).", ["model", "version", "reason"],
)
SHADOW_PROBABILITY_DIFFERENCE = Histogram(
    "bertserve_shadow_probability_difference", "Absolute difference between the answer's and the shadow's "
    "probability of the answer's top label, per text.", ["model", "version"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
)

# Prediction log and feedback (app.prediction_log): never on a request's path, so what it could not keep is counted
PREDICTION_LOG_RECORDS = Counter(
    "bertserve_prediction_log_records", "Prediction log records written, by model and sink (file, http).",
    ["model", "sink"],
)
PREDICTION_LOG_DROPPED = Counter(
    "bertserve_prediction_log_dropped", "Prediction log records not written, by model and reason: queue_full (the "
    "worker's queue was full: requests never wait for the log), sink_error (a sink failed or timed out: never "
    "retried), shutdown (still queued at exit past the bound).", ["model", "reason"],
)
FEEDBACK = Counter(
    "bertserve_feedback", "Feedback (POST /feedback) joined to a logged prediction, by model, version, the true "
    "label and the logged predicted one (labels of a multi-label head joined by ','; regression: label 'value', "
    "predicted 'within_bound' or 'outside_bound').", ["model", "version", "label", "predicted"],
)

# Drift and the gated accuracy (app.drift; the PSI and live-accuracy rules in deploy/prometheus/rules). Per-version
# gauges are set at load and set to 0 at unload (as bertserve_model_info): 0 means "not served here".
PREDICTION_TOKENS = Histogram(
    "bertserve_prediction_tokens", "Token count of each text the model read (special tokens included, after "
    "truncation to max_length; a text read in windows: its first window), one observation per prediction.",
    ["model", "version"], buckets=TOKEN_EDGES,
)
PREDICTION_BINS = Counter(
    "bertserve_prediction_bins", "Predictions by drift bin of the version's reference (drift.json): feature "
    "confidence or tokens, bin named by its upper edge, holding (previous edge, edge]; per-bin, not cumulative like "
    "a histogram's le, so PromQL can take each bin's share for the PSI.", ["model", "version", "feature", "bin"],
)
DRIFT_REFERENCE = Gauge(
    "bertserve_drift_reference", "Share of the export gate's texts in each drift bin (drift.json; at least the PSI "
    "epsilon 1e-4), by feature (label, confidence, tokens) and bin; 0 once the version is unloaded.",
    ["model", "version", "feature", "bin"], multiprocess_mode="livemax",
)
GATE_ACCURACY = Gauge(
    "bertserve_model_gate_accuracy", "Accuracy of the served artifact on the export gate's labelled texts (its "
    "bertserve.json report), the mark live accuracy is held to; 0 once the version is unloaded.",
    ["model", "version"], multiprocess_mode="livemax",
)


def collect():
    """The metric families as /metrics renders them (in multiprocess mode: summed over this replica's workers)."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry.collect()
    return REGISTRY.collect()


def mark_worker_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def render() -> tuple[bytes, str]:
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_dead_workers() -> None:
    """Drop the live-gauge files of workers that died without cleaning up (e.g. SIGKILL); a replacement worker
    calls this at start. Their counters and histograms stay: what they counted happened."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        if not _alive(pid):
            multiprocess.mark_process_dead(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
