"""Protocol-neutral operations used by every transport: load and reload models, classify, list, readiness."""

from __future__ import annotations

import asyncio
import logging
import math
import queue
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app import metrics
from app.batching import Batcher, Timing
from app.engine import Engine, autotune, describe
from app.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    NotReady,
    ShuttingDown,
)
from app.repository import CONFIG_FILE, TOKENIZER_FILE, ModelConfig, read_config, wanted_versions
from app.settings import Settings
from app.tokenizer import Encoded, TextTokenizer, pad

log = logging.getLogger("bertserve.service")

ScoreFunction = Literal["softmax", "sigmoid", "none"]
State = Literal["loading", "ready", "failed", "unloading"]


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
            "quantization": describe(self.engine.artifact),
            "sessions": len(self.engines),
            "intra_op_threads": self.engine.threads,
            "batching": self.batch_choice,
            "report": self.config.report,
        }


@dataclass(eq=False)
class Slot:
    """A version the repository asks for, whatever its state."""

    name: str
    version: int
    path: Path
    state: State = "loading"
    reason: str | None = None
    model: ServedModel | None = None
    config_mtime: float = 0.0  # a failed version is retried when its bertserve.json changes


def batch_bounds(settings: Settings, provider: str) -> tuple[int, int, float]:
    """Upper bounds for the batch caps, and the padding allowed. A GPU gains from far larger batches than a
    CPU and pays little for padded tokens, so on CUDA the default caps are raised 4x and padding is not
    capped; values set explicitly are kept."""
    size, tokens, padding = settings.max_batch_size, settings.max_batch_tokens, settings.max_batch_padding
    if provider == "cuda":
        size *= 1 if "max_batch_size" in settings.model_fields_set else 4
        tokens *= 1 if "max_batch_tokens" in settings.model_fields_set else 4
        padding = padding if "max_batch_padding" in settings.model_fields_set else math.inf
    return size, tokens, padding


def load_model(name: str, version: int, path: Path, settings: Settings) -> ServedModel:
    """Open, check and warm one model version (blocking; run it in a thread)."""
    config = read_config(path)
    tokenizer = TextTokenizer(path / TOKENIZER_FILE, config.max_length)
    sessions, threads = settings.engine_layout()
    engine = Engine(path, config, provider=settings.provider, threads=threads)
    engines = [engine]
    if engine.provider == "cpu":  # a GPU runs one batch at a time anyway: one session there
        engines += [Engine(path, config, provider="cpu", threads=threads) for _ in range(sessions - 1)]
    model = ServedModel(name, version, path, config, tokenizer, engines)
    # Warm-up: the first runs allocate and pick kernels; do them before the version takes traffic.
    sample = tokenizer.encode(["warm-up", "a longer warm-up sentence " * 64])
    for _ in range(2):
        model.infer([e.ids for e in sample])
    if config.max_length > settings.max_batch_tokens:
        raise ModelLoadError(
            f"BERTSERVE_MAX_BATCH_TOKENS ({settings.max_batch_tokens}) is below the max length of {path} "
            f"({config.max_length}): a full-length input could never be scheduled"
        )
    max_size, max_tokens, max_padding = batch_bounds(settings, engine.provider)
    choice = {"max_batch_size": max_size, "max_batch_tokens": max_tokens}
    if settings.batch_autotune:
        choice = autotune(
            engine, sample[1].ids, config.max_length, max_size, max_tokens, settings.batch_latency_budget_ms / 1000
        )
    model.batch_choice = {**choice, "max_batch_padding": None if math.isinf(max_padding) else max_padding}
    return model


def apply_function(logits: np.ndarray, function: ScoreFunction) -> np.ndarray:
    """Scores from logits, row-wise ([n, labels])."""
    if function == "softmax":
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def ranked(labels: list[str], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    """Every label (or the top_k), best first: the Hugging Face text-classification shape. Plain Python: for a
    handful of labels numpy's per-call cost (and its GIL release) is most of the work."""
    pairs = sorted(zip(scores.tolist(), labels), key=lambda pair: -pair[0])[:top_k]
    return [{"label": label, "score": score} for score, label in pairs]


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots: dict[str, dict[int, Slot]] = {}
        self.broken: dict[str, str] = {}  # model name -> why its versions cannot even be listed
        self.unloaded_by_admin: set[str] = set()
        self.loading = True
        self.draining = False
        self._defaults: dict[str, int] = {}  # served model -> default version; see _route()
        self._loaded = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    # ---- lifecycle ----

    async def load_all(self) -> None:
        try:
            await self.sync()
            if not self.slots and not self.broken:
                log.error("no model found in %s", self.settings.model_repository.resolve())
        finally:
            self.loading = False
            self._loaded.set()

    async def poll(self) -> None:
        """Follow the repository: new versions are loaded and warmed, removed ones drained and unloaded."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.sync()
            except Exception:  # keep polling; the next scan may succeed
                log.exception("repository scan failed")

    async def sync(self, only: str | None = None) -> None:
        """Make the loaded versions match the repository (for one model, or all)."""
        async with self._sync_lock:
            wanted = await asyncio.to_thread(
                wanted_versions, self.settings.model_repository, self.settings.max_loaded_versions
            )
            names = [only] if only else sorted(set(wanted) | set(self.slots))
            for name in names:
                versions = wanted.get(name, [])
                if isinstance(versions, str):  # broken serving.json: keep what runs, say why
                    self.broken[name] = versions
                    continue
                self.broken.pop(name, None)
                if name in self.unloaded_by_admin:
                    versions = []
                await self._sync_model(name, dict(versions))

    async def _sync_model(self, name: str, wanted: dict[int, Path]) -> None:
        slots = self.slots.setdefault(name, {})
        for version, path in sorted(wanted.items()):  # load new versions first, so traffic can move over
            slot = slots.get(version)
            mtime = _mtime(path / CONFIG_FILE)
            if slot is None or (slot.state == "failed" and slot.config_mtime != mtime):
                slot = slots[version] = Slot(name, version, path, config_mtime=mtime)
                await self._load(slot)
        for version in [v for v in slots if v not in wanted]:
            await self._unload(slots[version])
        if not slots:
            del self.slots[name]

    async def _load(self, slot: Slot) -> None:
        try:
            model = await asyncio.to_thread(load_model, slot.name, slot.version, slot.path, self.settings)
        except Exception as exc:  # one bad version must not stop the others; its reason is shown
            slot.state = "failed"
            slot.reason = str(exc) if isinstance(exc, ModelLoadError) else f"{slot.path}: {type(exc).__name__}: {exc}"
            log.error("model %s version %d not served: %s", slot.name, slot.version, slot.reason)
            return
        model.batcher = Batcher(
            model,
            max_batch_size=model.batch_choice["max_batch_size"],
            max_batch_tokens=model.batch_choice["max_batch_tokens"],
            max_batch_padding=model.batch_choice["max_batch_padding"],
            max_queue_size=self.settings.max_queue_size,
            parallel=len(model.engines),
            name=f"{slot.name}:{slot.version}",
            on_batch=_batch_observer(slot.name),
            on_load=metrics.QUEUE_SIZE.labels(slot.name).set,
        )
        model.batcher.start()
        slot.model, slot.state = model, "ready"
        self._route()
        _model_info(model, 1)
        log.info(
            "model %s version %d ready: provider %s, artifact %s (%s), batching %s",
            slot.name, slot.version, model.engine.provider, model.engine.artifact.file,
            describe(model.engine.artifact), model.batch_choice,
        )

    async def _unload(self, slot: Slot) -> None:
        """Stop routing to the version, let its queue drain, then free it."""
        slot.state = "unloading"
        self._route()
        if slot.model and slot.model.batcher:
            try:
                async with asyncio.timeout(self.settings.drain_timeout_s):
                    await slot.model.batcher.drained()
            except TimeoutError:
                log.warning("model %s version %d: unloading with work still queued", slot.name, slot.version)
            await slot.model.batcher.close()
            _model_info(slot.model, 0)
        del self.slots[slot.name][slot.version]
        self._route()
        log.info("model %s version %d unloaded", slot.name, slot.version)

    async def admin_load(self, name: str) -> None:
        self.unloaded_by_admin.discard(name)
        await self.sync(only=name)
        if not any(s.state == "ready" for s in self.slots.get(name, {}).values()):
            raise ModelNotFound(f"model {name!r} has no servable version in {self.settings.model_repository}")

    async def admin_unload(self, name: str) -> None:
        if name not in self.slots:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.unloaded_by_admin.add(name)
        await self.sync(only=name)

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, then wait (at most timeout_s) until every accepted sequence is answered."""
        self.draining = True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(m.batcher.drained() for m in self._ready_models() if m.batcher))
        except TimeoutError:
            log.warning("drain timeout (%.1f s) reached with work still queued", timeout_s)

    async def close(self) -> None:
        """Stop every batcher; anything still queued is answered 503."""
        self.draining = True
        for slots in self.slots.values():
            for slot in slots.values():
                if slot.model and slot.model.batcher:
                    await slot.model.batcher.close()

    # ---- queries ----

    def _ready_models(self) -> list[ServedModel]:
        return [s.model for slots in self.slots.values() for s in slots.values() if s.state == "ready" and s.model]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when loaded, not draining, and every model has a version serving. A failed new version
        next to a serving one is reported but keeps the replica ready: traffic is still answered."""
        models: dict[str, Any] = {}
        for name, slots in self.slots.items():
            models[name] = {str(v): s.state if s.state != "failed" else f"failed: {s.reason}" for v, s in slots.items()}
        for name, reason in self.broken.items():
            models[name] = f"failed: {reason}"
        serving = set(self._defaults)  # the models with a ready version
        ready = not self.loading and not self.draining and bool(serving) and serving == set(models)
        status = "draining" if self.draining else "loading" if self.loading else "ready" if ready else "not ready"
        return ready, {"status": status, "models": models}

    def list_models(self) -> list[dict[str, Any]]:
        listed = []
        for name, slots in sorted(self.slots.items()):
            default = self.default_version(name)
            for version, slot in sorted(slots.items()):
                entry = {"name": name, "version": version, "state": slot.state, "default": version == default}
                if slot.model:
                    entry |= slot.model.describe()
                if slot.reason:
                    entry["reason"] = slot.reason
                listed.append(entry)
        listed += [{"name": n, "state": "failed", "reason": r} for n, r in sorted(self.broken.items())]
        return listed

    def _route(self) -> None:
        """Rebuild the table of served models and their default (highest ready) versions. Called on every
        state change, so that each request reads one dict instead of scanning the slots."""
        self._defaults = {
            name: max(ready)
            for name, slots in self.slots.items()
            if (ready := [v for v, s in slots.items() if s.state == "ready"])
        }

    def default_version(self, name: str) -> int | None:
        return self._defaults.get(name)

    def model_name(self, name: str | None) -> str:
        """The model a request is for: the one named, else the only (or default) model."""
        if name is not None:
            return name
        names = list(self._defaults)
        if len(names) == 1:
            return names[0]
        if self.settings.default_model:
            return self.settings.default_model
        if not names:
            raise NotReady("no model is being served; see /health/ready")
        raise InvalidInput(f"several models are served, name one in 'model': {sorted(names)}")

    def metric_label(self, name: str | None) -> str:
        """The model label of request metrics: a served model's name or "unknown", so labels stay a closed set."""
        try:
            name = self.model_name(name)
        except (NotReady, InvalidInput):
            return "unknown"
        return name if name in self.slots else "unknown"

    def resolve(self, name: str | None, version: int | None = None) -> ServedModel:
        """The model version that serves a request: the named (or only) model, the given or highest version."""
        name = self.model_name(name)
        slots = self.slots.get(name)
        if not slots:
            raise ModelNotFound(f"model {name!r} is not served; served: {sorted(self.slots)}")
        version = self.default_version(name) if version is None else version
        slot = slots.get(version) if version is not None else None
        if slot is None or slot.state != "ready" or slot.model is None:
            available = sorted(v for v, s in slots.items() if s.state == "ready")
            raise ModelNotFound(f"model {name!r} version {version} is not served; ready versions: {available}")
        return slot.model

    # ---- classify ----

    async def classify(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        version: int | None = None,
        truncate: bool = True,
        function: ScoreFunction = "softmax",
        timeout_s: float,
    ) -> tuple[ServedModel, np.ndarray]:
        """Scores [len(texts), labels] in label order, from the model version chosen by resolve()."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if len(texts) > self.settings.max_client_batch_size:
            raise InvalidInput(
                f"{len(texts)} inputs in one request; the limit is {self.settings.max_client_batch_size}"
            )
        try:
            async with asyncio.timeout(timeout_s):
                if self.loading:  # e.g. a worker replacing a dead one already gets connections: wait, not fail
                    await self._loaded.wait()
                # No await between choosing the version and entering its queue, so an unload that starts
                # afterwards finds this request in the queue and waits for it.
                served = self.resolve(model, version)
                assert served.batcher is not None
                rows = await served.batcher.submit(texts, truncate)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f} s; the request was dropped") from None
        logits = np.stack([row for row, _ in rows])
        probabilities = apply_function(logits, "softmax")
        served.metrics.observe(probabilities, [timing for _, timing in rows])
        return served, probabilities if function == "softmax" else apply_function(logits, function)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _model_info(model: ServedModel, value: int) -> None:
    labels = (model.name, str(model.version), model.engine.provider, describe(model.engine.artifact))
    metrics.MODEL_INFO.labels(*labels).set(value)


def _batch_observer(name: str):
    size_hist, tokens_hist = metrics.BATCH_SIZE.labels(name), metrics.BATCH_TOKENS.labels(name)

    def observe(size: int, tokens: int) -> None:
        size_hist.observe(size)
        tokens_hist.observe(tokens)

    return observe
