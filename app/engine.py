"""onnxruntime session: provider choice and the check of what really runs, IO names, threads, warm-up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.repository import Artifact, ModelConfig, Provider

log = logging.getLogger("bertserve.engine")

ORT_PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}

SessionFactory = Callable[..., Any]


def provider_attempts(setting: str, available: Sequence[str]) -> list[Provider]:
    """Providers to try, in order. `auto` tries CUDA only when this onnxruntime build has it."""
    if setting == "cpu":
        return ["cpu"]
    if setting == "cuda":
        return ["cuda"]
    return ["cuda", "cpu"] if ORT_PROVIDER["cuda"] in available else ["cpu"]


class Engine:
    """One inference session on the artifact that suits the provider actually in use."""

    def __init__(
        self,
        model_dir: Path,
        config: ModelConfig,
        provider: str = "auto",
        threads: int = 1,
        session_factory: SessionFactory = ort.InferenceSession,
        available_providers: Sequence[str] | None = None,
    ) -> None:
        available = ort.get_available_providers() if available_providers is None else available_providers
        errors = []
        for wanted in provider_attempts(provider, available):
            artifact = config.artifact_for(wanted)
            if artifact is None:
                errors.append(f"no artifact in {model_dir} is meant for {wanted}")
                continue
            session = self._open(model_dir / artifact.file, wanted, threads, session_factory)
            # onnxruntime falls back to CPU quietly when CUDA fails to initialise: believe only get_providers().
            in_use = session.get_providers()[0]
            if in_use == ORT_PROVIDER[wanted]:
                self.session, self.artifact, self.provider = session, artifact, wanted
                break
            errors.append(f"{ORT_PROVIDER[wanted]} was asked for but the session runs on {in_use}")
            log.warning("model %s: %s; trying the next provider", model_dir, errors[-1])
        else:
            raise ModelLoadError(f"{model_dir}: cannot start a session with provider={provider}: {'; '.join(errors)}")

        self.threads = threads
        self.use_io_binding = self.provider == "cuda"
        self.input_names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise ModelLoadError(f"{model_dir / self.artifact.file}: graph lacks inputs {sorted(missing)}")
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        n_labels = outputs[0].shape[-1]
        if isinstance(n_labels, int) and n_labels != len(config.labels):
            raise ModelLoadError(
                f"{model_dir / self.artifact.file}: graph has {n_labels} outputs but bertserve.json lists "
                f"{len(config.labels)} labels"
            )

    @staticmethod
    def _open(path: Path, provider: Provider, threads: int, session_factory: SessionFactory) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = [ORT_PROVIDER[provider]] if provider == "cpu" else [ORT_PROVIDER["cuda"], ORT_PROVIDER["cpu"]]
        try:
            return session_factory(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    @property
    def precision(self) -> str:
        return self.artifact.precision

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits, float32 [batch, labels]. Only the inputs the graph declares are fed."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        if self.use_io_binding:
            return self._run_bound(feed)
        (logits,) = self.session.run([self.output_name], feed)
        return logits.astype(np.float32, copy=False)

    def _run_bound(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """IOBinding: inputs copied to the device once, the output allocated there by onnxruntime and copied
        back once, instead of run()'s staging copies. Written for CUDA (NOT yet run on GPU hardware); on CPU
        the same path is exercised by the tests."""
        device = "cuda" if self.provider == "cuda" else "cpu"
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
        binding.bind_output(self.output_name, device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)


def describe(artifact: Artifact) -> str:
    return artifact.quantization or artifact.precision


def _time_batch(engine: Engine, batch: int, length: int, sample_ids: list[int], repeats: int) -> float:
    """Best-of-N seconds for one engine call on a batch x length block of real token ids."""
    row = np.resize(np.asarray(sample_ids, dtype=np.int64), length)
    ids = np.tile(row, (batch, 1))
    mask = np.ones_like(ids)
    engine.run(ids, mask)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(ids, mask)
        best = min(best, time.perf_counter() - start)
    return best


def autotune(
    engine: Engine, sample_ids: list[int], max_length: int, max_batch_size: int, max_batch_tokens: int, budget_s: float,
) -> dict[str, Any]:
    """Pick batch caps from measured engine speed instead of constants.

    For short (32-token) and full-length sequences, time batch sizes 1, 2, 4, ... up to max_batch_size and,
    among those whose call stays within the latency budget (what keeps latency low), take the largest whose
    sequences/s is within 5 % of the best: on a CPU the rates of neighbouring sizes differ by less than the
    noise, and under load wider batches are what keep up. Short sequences give max_batch_size; full-length
    ones give the token budget, so typical, shorter inputs batch a little wider. The settings stay bounds.
    """
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_batch_size]
    chosen = {}
    measured = {}
    for kind, length in (("short", min(32, max_length)), ("long", max_length)):
        rates = {}
        for batch in sizes:
            seconds = _time_batch(engine, batch, length, sample_ids, repeats=5)
            if seconds > budget_s and batch > 1:
                break
            rates[batch] = batch / seconds
        best = max(rates.values())
        chosen[kind] = max(b for b, r in rates.items() if r >= 0.95 * best)
        measured[kind] = {str(b): round(r, 1) for b, r in rates.items()}
    return {
        "max_batch_size": chosen["short"],
        "max_batch_tokens": max(max_length, min(max_batch_tokens, chosen["long"] * max_length)),
        "autotuned": True,
        "sequences_per_s": measured,
    }
