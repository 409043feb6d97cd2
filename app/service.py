"""Protocol-neutral operations used by every route: load models, predict, list models, readiness."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app import metrics
from app.batching import Batcher, Timing
from app.engine import Engine, autotune, describe
from app.errors import DeadlineExceeded, InvalidInput, ModelLoadError, ModelNotFound, NotReady, ShuttingDown
from app.repository import TOKENIZER_FILE, ModelConfig, latest_versions, read_config
from app.settings import Settings
from app.tokenizer import Encoded, TextTokenizer, pad

log = logging.getLogger("bertserve.service")

ScoreFunction = Literal["softmax", "sigmoid", "none"]


@dataclass(eq=False)
class ServedModel:
    """One model version: tokenizer + engine behind its own batcher."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    tokenizer: TextTokenizer
    engine: Engine
    batcher: Batcher | None = None
    batch_choice: dict[str, Any] = field(default_factory=dict)

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: list[str]) -> list[Encoded]:
        return self.tokenizer.encode(texts)

    def infer(self, sequences: list[list[int]]) -> np.ndarray:
        return self.engine.run(*pad(sequences, self.tokenizer.pad_id))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "labels": self.config.labels,
            "max_length": self.config.max_length,
            "provider": self.engine.provider,
            "artifact": self.engine.artifact.file,
            "quantization": describe(self.engine.artifact),
            "batching": self.batch_choice,
        }


def load_model(name: str, version: int, path: Path, settings: Settings) -> ServedModel:
    """Open, check and warm one model version (blocking; run it in a thread)."""
    config = read_config(path)
    tokenizer = TextTokenizer(path / TOKENIZER_FILE, config.max_length)
    engine = Engine(path, config, provider=settings.provider, threads=settings.threads_per_worker())
    model = ServedModel(name, version, path, config, tokenizer, engine)
    # Warm-up: the first runs allocate and pick kernels; do them before readiness turns true.
    sample = tokenizer.encode(["warm-up", "a longer warm-up sentence " * 64])
    for _ in range(2):
        model.infer([e.ids for e in sample])
    choice = {"max_batch_size": settings.max_batch_size, "max_batch_tokens": settings.max_batch_tokens}
    if settings.batch_autotune:
        choice = autotune(
            engine, sample[1].ids, config.max_length, settings.max_batch_size, settings.max_batch_tokens,
            settings.batch_latency_budget_ms / 1000,
        )
    model.batch_choice = choice
    return model


def postprocess(logits: np.ndarray, function: ScoreFunction) -> np.ndarray:
    if function == "softmax":
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ServedModel] = {}
        self.failed: dict[str, str] = {}  # model name -> why it is not served
        self.loading = True
        self._loaded = asyncio.Event()
        self.draining = False

    # ---- lifecycle ----

    async def load_all(self) -> None:
        try:
            found = latest_versions(self.settings.model_repository)
            if not found:
                log.error("no model found in %s", self.settings.model_repository.resolve())
            for name, version, path in found:
                await self._load(name, version, path)
        finally:
            self.loading = False
            self._loaded.set()

    async def _load(self, name: str, version: int, path: Path) -> None:
        try:
            model = await asyncio.to_thread(load_model, name, version, path, self.settings)
        except Exception as exc:  # one bad model must not stop the others; its reason is shown
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{path}: {type(exc).__name__}: {exc}"
            self.failed[name] = reason
            log.error("model %s version %d not served: %s", name, version, reason)
            return
        model.batcher = Batcher(
            model,
            max_batch_size=model.batch_choice["max_batch_size"],
            max_batch_tokens=model.batch_choice["max_batch_tokens"],
            max_queue_size=self.settings.max_queue_size,
            name=name,
            on_batch=self._batch_observer(name),
            on_load=metrics.QUEUE_SIZE.labels(name).set,
        )
        model.batcher.start()
        self.models[name] = model
        metrics.MODEL_INFO.labels(name, str(version), model.engine.provider, describe(model.engine.artifact)).set(1)
        log.info(
            "model %s version %d ready: provider %s, artifact %s (%s), batching %s",
            name, version, model.engine.provider, model.engine.artifact.file,
            describe(model.engine.artifact), model.batch_choice,
        )

    @staticmethod
    def _batch_observer(name: str):
        size_hist, tokens_hist = metrics.BATCH_SIZE.labels(name), metrics.BATCH_TOKENS.labels(name)

        def observe(size: int, tokens: int) -> None:
            size_hist.observe(size)
            tokens_hist.observe(tokens)

        return observe

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, then wait (at most timeout_s) until every accepted sequence is answered."""
        self.draining = True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(m.batcher.drained() for m in self.models.values() if m.batcher))
        except TimeoutError:
            log.warning("drain timeout (%.1f s) reached with work still queued", timeout_s)

    async def close(self) -> None:
        """Stop every batcher; anything still queued is answered 503."""
        self.draining = True
        for model in self.models.values():
            if model.batcher:
                await model.batcher.close()

    # ---- queries ----

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ready = not self.loading and not self.draining and bool(self.models) and not self.failed
        status = "draining" if self.draining else "loading" if self.loading else "ready" if ready else "not ready"
        detail: dict[str, Any] = {"status": status, "models": {n: "ready" for n in self.models}}
        for name, reason in self.failed.items():
            detail["models"][name] = f"failed: {reason}"
        return ready, detail

    def list_models(self) -> list[dict[str, Any]]:
        listed = [m.describe() | {"state": "ready"} for m in self.models.values()]
        listed += [{"name": n, "state": "failed", "reason": r} for n, r in self.failed.items()]
        return listed

    async def resolve(self, name: str | None, wait_s: float) -> ServedModel:
        """The model to serve a request. While models load (first start, or a worker replacing a dead one that
        already receives connections), wait for them rather than fail: the caller sees latency, not errors."""
        if self.loading:
            try:
                async with asyncio.timeout(wait_s):
                    await self._loaded.wait()
            except TimeoutError:
                raise NotReady("models are still loading") from None
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            if not self.models:
                raise NotReady("no model is being served; see /health/ready")
            raise InvalidInput(f"several models are served, name one in 'model': {sorted(self.models)}")
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not served; served: {sorted(self.models)}")
        return model

    # ---- predict ----

    async def predict(
        self,
        model: ServedModel,
        texts: list[str],
        *,
        truncate: bool = True,
        function: ScoreFunction = "softmax",
        top_k: int | None = None,
        timeout_s: float | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Scores per text, every label (or the top_k) sorted by score."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if len(texts) > self.settings.max_client_batch_size:
            raise InvalidInput(
                f"{len(texts)} inputs in one request; the limit is {self.settings.max_client_batch_size}"
            )
        assert model.batcher is not None
        try:
            async with asyncio.timeout(timeout_s):
                rows = await model.batcher.submit(texts, truncate)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f} s; the request was dropped") from None
        return self._answer(model, rows, function, top_k)

    @staticmethod
    def _answer(
        model: ServedModel, rows: list[tuple[np.ndarray, Timing]], function: ScoreFunction, top_k: int | None
    ) -> list[list[dict[str, Any]]]:
        labels = model.config.labels
        name = model.name
        tokenize_h = metrics.TOKENIZATION_DURATION.labels(name)
        queue_h = metrics.QUEUE_DURATION.labels(name)
        infer_h = metrics.INFERENCE_DURATION.labels(name)
        confidence_h = metrics.PREDICTION_CONFIDENCE.labels(name)
        answers = []
        for logits, timing in rows:
            tokenize_h.observe(timing.tokenize_s)
            queue_h.observe(timing.queue_s)
            infer_h.observe(timing.inference_s)
            probabilities = postprocess(logits, "softmax")
            top = int(probabilities.argmax())
            metrics.PREDICTIONS.labels(name, labels[top]).inc()
            confidence_h.observe(float(probabilities[top]))
            scores = probabilities if function == "softmax" else postprocess(logits, function)
            order = np.argsort(-scores)[:top_k]
            answers.append([{"label": labels[i], "score": float(scores[i])} for i in order])
        return answers
