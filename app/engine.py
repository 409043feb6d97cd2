"""One onnxruntime session on one provider and artifact: opening it (CPU, the OpenVINO plugin, CUDA), the check of
what really runs, IO names, threads, running a batch. Which engine serves a model is the loader's choice."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.repository import Artifact, ModelConfig, Provider

log = logging.getLogger("bertserve.engine")

ORT_PROVIDER: dict[Provider, str] = {
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

SessionFactory = Callable[..., Any]
# The graph inputs the engine knows how to fill; a graph declares the first two and may declare the third.
FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@functools.cache
def openvino_device() -> tuple[Any, str]:
    """onnxruntime's OpenVINO plugin and its CPU device: (device, precision OpenVINO runs fp32 graphs in), or
    (None, why not). Registered once per process. The plugin lists Intel CPUs only: on AMD there is no device."""
    try:
        import onnxruntime_ep_openvino as plugin
    except ImportError:
        return None, "onnxruntime-ep-openvino is not installed (it ships for Linux x86-64 only)"
    name = plugin.get_ep_name()
    if not any(d.ep_name == name for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(name, plugin.get_library_path())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            return None, f"the OpenVINO plugin did not load: {str(exc).splitlines()[0]}"
    devices = [
        d for d in ort.get_ep_devices()
        if d.ep_name == name and d.ep_metadata.get("ov_device") == "CPU" and "ov_meta_device" not in d.ep_metadata
    ]
    if not devices:
        return None, f"the OpenVINO plugin lists no CPU device here (it supports Intel CPUs only; this one: {cpu_name()})"
    # OpenVINO's default inference precision is bf16 where the CPU computes it natively (AMX, AVX512-BF16).
    capabilities = devices[0].ep_metadata.get("OPTIMIZATION_CAPABILITIES", "").split()
    return devices[0], "bf16" if "BF16" in capabilities else "fp32"


@functools.cache
def cpu_name() -> str:
    """The CPU's model name and whether it has AMX, for logs, /models and benchmark reports."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{model}, AMX {'yes' if 'amx_bf16' in info.split() else 'no'}"


def available(provider: Provider) -> str | None:
    """None when this machine can open sessions on `provider`, else why not."""
    if provider == "openvino":
        return openvino_device()[1] if openvino_device()[0] is None else None
    if ORT_PROVIDER[provider] not in ort.get_available_providers():
        return f"this onnxruntime build has no {ORT_PROVIDER[provider]} (install the `gpu` extra for CUDA)"
    return None


class Engine:
    """One inference session of `provider` on `artifact` (by default the config's first artifact for it)."""

    def __init__(
        self,
        model_dir: Path,
        config: ModelConfig,
        provider: Provider = "cpu",
        artifact: Artifact | None = None,
        threads: int = 1,
        session_factory: SessionFactory = ort.InferenceSession,
    ) -> None:
        artifact = artifact or config.artifact_for(provider)
        if artifact is None:
            raise ModelLoadError(f"{model_dir}: no artifact is meant for {provider}")
        self.artifact, self.provider, self.threads = artifact, provider, threads
        self.precision = openvino_device()[1] if provider == "openvino" else artifact.precision
        self.session = self._open(model_dir / artifact.file, provider, threads, session_factory)
        # onnxruntime falls back to CPU quietly when a provider fails to initialise: believe only get_providers().
        in_use = self.session.get_providers()[0]
        if in_use != ORT_PROVIDER[provider]:
            raise ModelLoadError(f"{model_dir / artifact.file}: {ORT_PROVIDER[provider]} was asked for but the "
                                 f"session runs on {in_use}")
        self.use_io_binding = provider == "cuda"
        self.input_names = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self.input_names
        if missing:
            raise ModelLoadError(f"{model_dir / artifact.file}: graph lacks inputs {sorted(missing)}")
        unknown = self.input_names - set(FED_INPUTS)
        if unknown:  # refused at load, not a failing run on the first request
            raise ModelLoadError(f"{model_dir / artifact.file}: graph needs inputs {sorted(unknown)} that bertserve "
                                 f"does not feed (it feeds {', '.join(FED_INPUTS)})")
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        n_labels = outputs[0].shape[-1]
        if isinstance(n_labels, int) and n_labels != len(config.labels):
            raise ModelLoadError(
                f"{model_dir / artifact.file}: graph has {n_labels} outputs but bertserve.json lists "
                f"{len(config.labels)} labels"
            )

    @staticmethod
    def _open(path: Path, provider: Provider, threads: int, session_factory: SessionFactory) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        providers = [ORT_PROVIDER[provider]] + ([ORT_PROVIDER["cpu"]] if provider == "cuda" else [])
        try:
            if provider == "openvino":
                device, why_not = openvino_device()
                if device is None:
                    raise ModelLoadError(f"{path}: OpenVINO cannot run here: {why_not}")
                # The plugin ignores its plain thread and precision options: they go through load_config. One
                # stream, so that each session is one engine of `threads` cores, like onnxruntime's CPU sessions.
                cpu = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"}
                options.add_provider_for_devices([device], {"load_config": json.dumps({"CPU": cpu})})
                return session_factory(str(path), sess_options=options)
            return session_factory(str(path), sess_options=options, providers=providers)
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    def __str__(self) -> str:
        """What runs, in one phrase: provider, artifact, precision."""
        return f"{self.provider} on {self.artifact.file} ({self.precision})"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Logits, float32 [batch, labels]. Only the inputs the graph declares are fed: token_type_ids as given
        (pairs), else zeros; a graph without them (RoBERTa, DeBERTa-v3) never gets them."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
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
