"""One inference session on one provider and artifact: onnxruntime (CPU, CUDA) or OpenVINO's own runtime
(`openvino`), the check of what really runs, IO names, threads, running a batch. Which engine serves a model is the
loader's choice."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from app.errors import ModelLoadError
from app.repository import Artifact, ModelConfig, Provider

log = logging.getLogger("bertserve.engine")

ORT_PROVIDER: dict[Provider, str] = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# OpenVINO's names for the precision a compiled model computes in, as bertserve says them.
OPENVINO_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

SessionFactory = Callable[..., Any]
# The graph inputs the engine knows how to fill; a graph declares the first two and may declare the third.
FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Session(Protocol):
    """An engine session as the loader, the served model and the batcher use it, whatever the runtime."""

    provider: Provider
    artifact: Artifact
    precision: str
    threads: int

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray: ...


@functools.cache
def openvino_core() -> tuple[Any, str | None]:
    """OpenVINO's runtime (one per process) and None, or (None, why not). Its CPU plugin runs on every x86-64 CPU,
    Intel and AMD alike (only onnxruntime's OpenVINO plugin limited itself to Intel)."""
    try:
        import openvino
    except ImportError:
        return None, "the openvino package is not installed (it comes with the `cpu` extra)"
    core = openvino.Core()
    if "CPU" not in core.available_devices:
        return None, f"OpenVINO lists no CPU device here ({cpu_name()})"
    return core, None


@functools.cache
def cpu_name() -> str:
    """The CPU's model name and whether it has AMX and AVX512-BF16, for logs, /models and benchmark reports."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = info.split()
    yes = {True: "yes", False: "no"}
    return f"{model}, AMX {yes['amx_bf16' in flags]}, AVX512-BF16 {yes['avx512_bf16' in flags]}"


# CPU flags that change which engine is fastest (bf16 and INT8 matrix units): part of the engine cache's key.
ENGINE_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


@functools.cache
def cpu_features() -> dict[str, Any]:
    """The CPU as the engine choice depends on it: model name and the flags of ENGINE_FLAGS it has."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": "unknown CPU", "flags": []}
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(info.split())
    return {"model": model, "flags": [f for f in ENGINE_FLAGS if f in flags]}


def runtime_versions() -> dict[str, str | None]:
    """The runtimes' versions (None: not installed) and onnxruntime's providers: part of the engine cache's key.
    OpenVINO's is read from its package metadata, not by importing it: its libraries cost a worker ~29 MB that a
    worker serving onnxruntime only should not pay (docs/memory.md)."""
    try:
        openvino_version: str | None = importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        openvino_version = None
    return {"onnxruntime": ort.__version__, "onnxruntime_providers": ",".join(ort.get_available_providers()),
            "openvino": openvino_version}


def openvino_missing() -> str | None:
    """None when the openvino package is installed, else why not: looked up, not imported. Loading OpenVINO's
    libraries costs a worker ~29 MB (docs/memory.md), which a worker that the engine cache sends to onnxruntime should
    not pay; whether OpenVINO lists a CPU device is found out when its candidate opens (OpenVinoEngine)."""
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed (it comes with the `cpu` extra)"
    return None


def available(provider: Provider) -> str | None:
    """None when this machine can open sessions on `provider`, else why not."""
    if provider == "openvino":
        return openvino_core()[1]
    if ORT_PROVIDER[provider] not in ort.get_available_providers():
        return f"this onnxruntime build has no {ORT_PROVIDER[provider]} (install the `gpu` extra for CUDA)"
    return None


def open_engine(model_dir: Path, config: ModelConfig, provider: Provider, artifact: Artifact | None = None,
                threads: int = 1, openvino_precision: str = "auto", **ort_options: Any) -> Session:
    """A session of the runtime `provider` names: OpenVINO's own for `openvino`, onnxruntime's otherwise."""
    if provider == "openvino":
        return OpenVinoEngine(model_dir, config, artifact, threads, openvino_precision)
    return Engine(model_dir, config, provider, artifact, threads, **ort_options)


def _artifact(model_dir: Path, config: ModelConfig, provider: Provider, artifact: Artifact | None) -> Artifact:
    artifact = artifact or config.artifact_for(provider)
    if artifact is None:
        raise ModelLoadError(f"{model_dir}: no artifact is meant for {provider}")
    return artifact


def _check_io(path: Path, config: ModelConfig, input_names: set[str], n_labels: Any) -> None:
    """Refused at load, not by a failing first request: inputs bertserve cannot feed, a label count that differs."""
    missing = {"input_ids", "attention_mask"} - input_names
    if missing:
        raise ModelLoadError(f"{path}: graph lacks inputs {sorted(missing)}")
    unknown = input_names - set(FED_INPUTS)
    if unknown:
        raise ModelLoadError(f"{path}: graph needs inputs {sorted(unknown)} that bertserve does not feed (it feeds "
                             f"{', '.join(FED_INPUTS)})")
    if isinstance(n_labels, int) and n_labels != len(config.labels):
        raise ModelLoadError(
            f"{path}: graph has {n_labels} outputs but bertserve.json lists {len(config.labels)} labels")


def _feed(input_names: set[str], input_ids: np.ndarray, attention_mask: np.ndarray,
          token_type_ids: np.ndarray | None) -> dict[str, np.ndarray]:
    """Only the inputs the graph declares: token_type_ids as given (pairs), else zeros; a graph without them
    (RoBERTa, DeBERTa-v3) never gets them."""
    feed = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = np.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    return feed


class OpenVinoEngine:
    """One OpenVINO compiled model on the CPU, read from the fp32 ONNX graph. Precision: OpenVINO's own default
    (bf16 where the CPU computes it natively: AMX, AVX512-BF16; fp32 elsewhere) unless BERTSERVE_OPENVINO_PRECISION
    names one; what it really computes in is read back from the compiled model (a CPU without bf16 runs fp32)."""

    provider: Provider = "openvino"

    def __init__(self, model_dir: Path, config: ModelConfig, artifact: Artifact | None = None, threads: int = 1,
                 precision: str = "auto") -> None:
        self.artifact, self.threads = _artifact(model_dir, config, "openvino", artifact), threads
        path = model_dir / self.artifact.file
        core, why_not = openvino_core()
        if core is None:
            raise ModelLoadError(f"{path}: OpenVINO cannot run here: {why_not}")
        # One stream of `threads` cores: each session is one engine, like onnxruntime's CPU sessions.
        cpu: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if precision != "auto":
            cpu["INFERENCE_PRECISION_HINT"] = precision
        try:
            self.compiled = core.compile_model(str(path), "CPU", cpu)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types for a bad file
            raise ModelLoadError(f"{path}: OpenVINO cannot load it: {str(exc).strip().splitlines()[0]}") from None
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.precision = OPENVINO_PRECISION.get(hint, hint)
        self.input_names = {port.any_name for port in self.compiled.inputs}
        self.output = self.compiled.output(0)
        shape = self.output.get_partial_shape()[-1]
        _check_io(path, config, self.input_names, shape.get_length() if shape.is_static else None)
        self.request = self.compiled.create_infer_request()  # one at a time: ServedModel hands a session to one thread

    def __str__(self) -> str:
        return f"openvino on {self.artifact.file} ({self.precision})"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Logits, float32 [batch, labels] (a copy: the request's own buffer is reused by the next call)."""
        results = self.request.infer(_feed(self.input_names, input_ids, attention_mask, token_type_ids),
                                     share_inputs=True)
        return np.array(results[self.output], dtype=np.float32)


class Engine:
    """One onnxruntime session of `provider` (cpu, cuda) on `artifact` (by default the config's first for it)."""

    def __init__(
        self,
        model_dir: Path,
        config: ModelConfig,
        provider: Provider = "cpu",
        artifact: Artifact | None = None,
        threads: int = 1,
        session_factory: SessionFactory = ort.InferenceSession,
    ) -> None:
        if provider not in ORT_PROVIDER:
            raise ModelLoadError(f"{model_dir}: onnxruntime does not serve {provider} (see app.engine.open_engine)")
        self.artifact, self.provider, self.threads = _artifact(model_dir, config, provider, artifact), provider, threads
        self.precision = self.artifact.precision
        path = model_dir / self.artifact.file
        self.session = self._open(path, provider, threads, session_factory)
        # onnxruntime falls back to CPU quietly when a provider fails to initialise: believe only get_providers().
        in_use = self.session.get_providers()[0]
        if in_use != ORT_PROVIDER[provider]:
            raise ModelLoadError(f"{path}: {ORT_PROVIDER[provider]} was asked for but the session runs on {in_use}")
        self.use_io_binding = provider == "cuda"
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        _check_io(path, config, self.input_names, outputs[0].shape[-1])

    @staticmethod
    def _open(path: Path, provider: Provider, threads: int, session_factory: SessionFactory) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if threads > 1:
            # A multi-core session (the low-load one) spins between its operators (parking its threads instead
            # cost a lone request ~1.5 ms here) but stops as its run returns: after it no thread of it spins on
            # the cores the per-core sessions need, or burns an idle core between requests.
            options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        providers = [ORT_PROVIDER[provider]] + ([ORT_PROVIDER["cpu"]] if provider == "cuda" else [])
        try:
            return session_factory(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
            raise ModelLoadError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    def __str__(self) -> str:
        """What runs, in one phrase: provider, artifact, precision."""
        return f"{self.provider} on {self.artifact.file} ({self.precision})"

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """Logits, float32 [batch, labels]."""
        feed = _feed(self.input_names, input_ids, attention_mask, token_type_ids)
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


def _time_batch(engine: Session, batch: int, length: int, sample_ids: list[int], repeats: int) -> float:
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
    engine: Session, sample_ids: list[int], max_length: int, max_batch_size: int, max_batch_tokens: int,
    budget_s: float,
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
