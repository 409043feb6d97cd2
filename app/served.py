"""A loaded model version: its tokenizer and engine sessions (chosen by app.loader), batch caps, metric children,
and how it describes itself in /models. The registry (app.registry) gives it a batcher."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from app import drift, metrics
from app.batching import Batcher, Timing
from app.engine import Session
from app.guard import Guard
from app.repository import ModelConfig
from app.scores import Head
from app.tokenizer import Encoded, TextInput, TextTokenizer, pad, pad_types


class ModelMetrics:
    """A model's labelled metric children, looked up once instead of per request."""

    def __init__(self, name: str, labels: list[str], version: int | str = "", head: Head | None = None,
                 reference: dict[str, Any] | None = None) -> None:
        self.head = head or Head(tuple(labels))
        self.tokenize = metrics.TOKENIZATION_DURATION.labels(name, str(version))
        self.queue = metrics.QUEUE_DURATION.labels(name, str(version))
        self.inference = metrics.INFERENCE_DURATION.labels(name, str(version))
        self.confidence = metrics.PREDICTION_CONFIDENCE.labels(name, str(version))
        self.predictions = [metrics.PREDICTIONS.labels(name, str(version), label) for label in labels]
        self.tokens = metrics.PREDICTION_TOKENS.labels(name, str(version))
        self.truncated = metrics.TRUNCATED_TEXTS.labels(name, str(version))
        self.windowed_texts = metrics.WINDOWED_TEXTS.labels(name, str(version), "texts")
        self.windows = metrics.WINDOWED_TEXTS.labels(name, str(version), "windows")
        self._key = (name, str(version))
        self.guard_rows = {outcome: metrics.GUARD_ROWS.labels(name, str(version), outcome)
                           for outcome in ("checked", "rechecked", "changed")}
        self._entities: dict[str, Any] = {}  # a token model's entity groups' children, made on first count
        # Drift (app.drift): the reference's own bins (else the defaults), every bin's child made now so that an
        # empty bin is exported as 0 and counts in the PSI rule.
        self.reference = reference
        features = (reference or {}).get("features", {})
        self.bin_edges = {name: tuple(features.get(name, {}).get("edges", default))
                          for name, default in (("confidence", drift.CONFIDENCE_EDGES), ("tokens", drift.TOKEN_EDGES))}
        self.bins = {feature: [metrics.PREDICTION_BINS.labels(*self._key, feature, drift.bin_name(edge))
                               for edge in edges] for feature, edges in self.bin_edges.items()}

    def count_entities(self, groups: list[str]) -> None:
        """A token model's entities, after aggregation, by group (the model's own labels without B-/I-)."""
        for group in groups:
            child = self._entities.get(group)
            if child is None:
                child = self._entities[group] = metrics.ENTITIES.labels(*self._key, group)
            child.inc()

    def observe_windows(self, count: int) -> None:
        metrics.TOKEN_WINDOWS.labels(*self._key).observe(count)

    def observe_timings(self, timings: list[Timing]) -> None:
        for timing in timings:
            self.tokenize.observe(timing.tokenize_s)
            self.queue.observe(timing.queue_s)
            self.inference.observe(timing.inference_s)

    def observe(self, scores: np.ndarray, timings: list[Timing]) -> None:
        """Per-request stage durations, and what drift is watched on (app.drift): the labels the head chooses (top
        label, or every one over 0.5), the top score (none for a regression value) and each text's tokens."""
        confidence_edges, token_edges = self.bin_edges["confidence"], self.bin_edges["tokens"]
        for timing in timings:
            self.tokenize.observe(timing.tokenize_s)
            self.queue.observe(timing.queue_s)
            self.inference.observe(timing.inference_s)
            self.tokens.observe(timing.tokens)
            self.bins["tokens"][drift.bin_index(token_edges, timing.tokens)].inc()
        confident = self.head.function != "none"
        for row in scores.tolist():
            for label in self.head.chosen(row):
                self.predictions[label].inc()
            if confident:
                top = max(row)
                self.confidence.observe(top)
                self.bins["confidence"][drift.bin_index(confidence_edges, top)].inc()

    def publish(self, gate_accuracy: float | None, on: bool) -> None:
        """Set (on: at load) or zero (at unload) the version's drift reference and gated accuracy gauges."""
        for feature, values in (self.reference or {}).get("features", {}).items():
            for bin_, share in zip(values["bins"], values["fractions"], strict=True):
                metrics.DRIFT_REFERENCE.labels(*self._key, feature, bin_).set(max(share, drift.EPSILON) if on else 0)
        if gate_accuracy is not None:
            metrics.GATE_ACCURACY.labels(*self._key).set(gate_accuracy if on else 0)

    def live_drift(self) -> dict[str, Any] | None:
        """PSI per feature of this replica's counts (all its workers' in multiprocess mode, as /metrics sums them)
        against the reference; None without one."""
        if self.reference is None:
            return None
        name, version = self._key
        counted: dict[str, dict[str, float]] = {"label": {}, "confidence": {}, "tokens": {}}
        for family in metrics.collect():
            if family.name not in ("bertserve_predictions", "bertserve_prediction_bins"):
                continue
            for sample in family.samples:
                labels = sample.labels
                if (not sample.name.endswith("_total") or labels.get("model") != name
                        or labels.get("version") != version):
                    continue
                feature, bin_ = ("label", labels["label"]) if "label" in labels else (labels["feature"], labels["bin"])
                counted[feature][bin_] = counted[feature].get(bin_, 0.0) + sample.value
        counts = {feature: [counted.get(feature, {}).get(b, 0.0) for b in values["bins"]]
                  for feature, values in self.reference["features"].items()}
        return drift.live_drift(self.reference, counts)


class ShadowRecord:
    """A version's record as a shadow: its metric children (made on first use, so versions never shadowing
    export none) and this process's counts, shown by /models."""

    def __init__(self, name: str, version: int) -> None:
        v = str(version)
        self.agree_counter = metrics.SHADOW_DECISIONS.labels(name, v, "agree")
        self.disagree_counter = metrics.SHADOW_DECISIONS.labels(name, v, "disagree")
        self.difference = metrics.SHADOW_PROBABILITY_DIFFERENCE.labels(name, v)
        self._dropped = {reason: metrics.SHADOW_DROPPED.labels(name, v, reason)
                         for reason in ("queue_full", "error", "shutdown", "labels", "windows")}
        self.agree = self.disagree = 0
        self.dropped: dict[str, int] = dict.fromkeys(self._dropped, 0)

    def compared(self, agreed: list[bool], differences: list[float]) -> None:
        agree = sum(agreed)
        self.agree += agree
        self.disagree += len(agreed) - agree
        if agree:
            self.agree_counter.inc(agree)
        if len(agreed) - agree:
            self.disagree_counter.inc(len(agreed) - agree)
        for difference in differences:
            self.difference.observe(difference)

    def drop(self, reason: str, texts: int) -> None:
        self.dropped[reason] += texts
        self._dropped[reason].inc(texts)

    def summary(self) -> dict[str, Any]:
        compared = self.agree + self.disagree
        return {"compared": compared, "agree": self.agree, "disagree": self.disagree,
                "agreement": round(self.agree / compared, 4) if compared else None, "dropped": dict(self.dropped)}


@dataclass(eq=False)
class ServedModel:
    """One model version: tokenizer + engine sessions behind its own batcher."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    tokenizer: TextTokenizer
    engines: list[Session]  # onnxruntime or OpenVINO (app.engine.open_engine)
    batcher: Batcher | None = None
    batch_choice: dict[str, Any] = field(default_factory=dict)
    engine_choice: dict[str, Any] = field(default_factory=dict)  # every candidate measured, and the gate
    # One session on all the worker's cores beside the per-core ones: the batcher runs a batch on it when that batch
    # would run alone (low load), where one core would leave the others idle. None: the sessions already use all.
    wide: Session | None = None
    # An INT8 artifact's guard (app.guard): its near-ties decided by the fp32 graph; None: none.
    guard: Guard | None = None
    _idle: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        for engine in self.engines:
            self._idle.put(engine)
        self.head = self.config.head  # how its logits become scores and decisions, made once (app.scores.Head)
        reference = None if self.token_model else drift.read_reference(self.path, self.config.labels)
        self.metrics = ModelMetrics(self.name, self.config.labels, self.version, self.head, reference)

    @cached_property
    def shadow_record(self) -> ShadowRecord:
        """Its figures as a shadow version (agreement with the answers, dropped work), made on first use."""
        return ShadowRecord(self.name, self.version)

    @property
    def engine(self) -> Session:
        return self.engines[0]

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: list[TextInput]) -> list[Encoded]:
        return self.tokenizer.encode(texts)

    @property
    def token_model(self) -> bool:
        """It labels tokens (task token-classification): its engine answers [tokens, labels] per sequence."""
        return self.config.task == "token-classification"

    @cached_property
    def vocabulary(self):
        """What the token-classification pipeline reads of the tokenizer (app.tokens.Vocabulary), made once."""
        from app.tokens import Vocabulary

        return Vocabulary.load(self.tokenizer.path)

    def infer(self, sequences: list[list[int]], type_ids: list[list[int] | None] | None = None,
              wide: bool = False) -> np.ndarray:
        """Run on an idle session, or on the wide one when the batcher says the batch runs alone (it never runs more
        batches at once than there are sessions, nor any beside the wide one). type_ids: per row, when some row
        has any (a pair); else all zero."""
        input_ids, attention_mask = pad(sequences, self.tokenizer.pad_id)
        token_type_ids = None if type_ids is None else pad_types(type_ids, input_ids.shape[1])
        if wide:
            logits = self.wide.run(input_ids, attention_mask, token_type_ids)
        else:
            engine = self._idle.get()
            try:
                logits = engine.run(input_ids, attention_mask, token_type_ids)
            finally:
                self._idle.put(engine)
        if self.token_model:  # [batch, width, labels]: each sequence's own tokens, padding sliced off
            return [logits[row, :len(seq)] for row, seq in enumerate(sequences)]
        if self.guard is not None:
            logits, rechecked, changed = self.guard.check(logits, input_ids, attention_mask, token_type_ids)
            counts = self.metrics.guard_rows
            counts["checked"].inc(len(logits))
            if rechecked:
                counts["rechecked"].inc(rechecked)
                counts["changed"].inc(changed)
        return logits

    def describe(self) -> dict[str, Any]:
        token = {"task": self.config.task}
        if self.token_model:  # the windows' overlap when a request names none (app.tokens)
            token |= {"default_stride": self.tokenizer.default_stride(), "default_aggregation_strategy": "simple",
                      "truncate_default": False}
        return {
            **token,
            "labels": self.config.labels,
            "problem_type": self.config.problem_type,
            "function": self.head.function,  # the scores' default function, by the pipeline's rule
            "max_length": self.config.max_length,
            "provider": self.engine.provider,
            "artifact": self.engine.artifact.file,
            "precision": self.engine.precision,
            "quantization": self.engine.artifact.numerics,
            "guard": self.guard.describe() if self.guard else None,  # this worker's rows, rechecked, changed
            "sessions": len(self.engines),
            "intra_op_threads": self.engine.threads,
            "wide_session_threads": self.wide.threads if self.wide else None,  # the low-load path
            "batches": dict(self.batcher.batches) if self.batcher else None,  # this worker's, per path
            "engine": self.engine_choice,
            "batching": self.batch_choice,
            "report": self.config.report,
            "gate_accuracy": self.gate_accuracy,  # beside GET /models/{name}'s live_quality (app.prediction_log)
            # PSI of what this replica served against the export's reference (app.drift); null without drift.json
            "drift": self.metrics.live_drift(),
        }

    @property
    def gate_accuracy(self) -> float | None:
        """The export gate's accuracy of the artifact it serves (bertserve.json's evaluation: int8, else fp32), for
        the live-accuracy alert; None without labelled gate texts."""
        evaluation = (self.config.report or {}).get("evaluation") or {}
        figures = evaluation.get(self.engine.artifact.precision) or evaluation.get("fp32") or {}
        return figures.get("accuracy")
