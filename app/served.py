"""A loaded model version: its tokenizer and engine sessions (chosen by app.loader), batch caps, metric children,
and how it describes itself in /models. The registry (app.service) gives it a batcher."""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import metrics
from app.batching import Batcher, Timing
from app.engine import Engine
from app.repository import ModelConfig
from app.tokenizer import Encoded, TextTokenizer, pad


class ModelMetrics:
    """A model's labelled metric children, looked up once instead of per request."""

    def __init__(self, name: str, labels: list[str]) -> None:
        self.tokenize = metrics.TOKENIZATION_DURATION.labels(name)
        self.queue = metrics.QUEUE_DURATION.labels(name)
        self.inference = metrics.INFERENCE_DURATION.labels(name)
        self.confidence = metrics.PREDICTION_CONFIDENCE.labels(name)
        self.predictions = [metrics.PREDICTIONS.labels(name, label) for label in labels]

    def observe(self, probabilities: np.ndarray, timings: list[Timing]) -> None:
        """Per-request stage durations, and the predicted label mix and confidence for drift watching."""
        for timing in timings:
            self.tokenize.observe(timing.tokenize_s)
            self.queue.observe(timing.queue_s)
            self.inference.observe(timing.inference_s)
        for row in probabilities.tolist():
            top = max(range(len(row)), key=row.__getitem__)
            self.predictions[top].inc()
            self.confidence.observe(row[top])


@dataclass(eq=False)
class ServedModel:
    """One model version: tokenizer + engine sessions behind its own batcher."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    tokenizer: TextTokenizer
    engines: list[Engine]
    batcher: Batcher | None = None
    batch_choice: dict[str, Any] = field(default_factory=dict)
    engine_choice: dict[str, Any] = field(default_factory=dict)  # every candidate measured, and the gate
    _idle: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        for engine in self.engines:
            self._idle.put(engine)
        self.metrics = ModelMetrics(self.name, self.config.labels)

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self.tokenizer.encode(texts)

    def infer(self, sequences: list[list[int]]) -> np.ndarray:
        """Run on an idle session; the batcher never runs more batches at once than there are sessions."""
        engine = self._idle.get()
        try:
            return engine.run(*pad(sequences, self.tokenizer.pad_id))
        finally:
            self._idle.put(engine)

    def describe(self) -> dict[str, Any]:
        return {
            "labels": self.config.labels,
            "max_length": self.config.max_length,
            "provider": self.engine.provider,
            "artifact": self.engine.artifact.file,
            "precision": self.engine.precision,
            "quantization": self.engine.artifact.numerics,
            "sessions": len(self.engines),
            "intra_op_threads": self.engine.threads,
            "engine": self.engine_choice,
            "batching": self.batch_choice,
            "report": self.config.report,
        }
