"""The loader: a version folder in, a warmed ServedModel out, on the fastest correct engine of this machine (or the
most faithful one within the fidelity margin).
Blocking: the registry (app.registry) runs it in a thread.

Which engine serves is measured here, never assumed (the machine may be an Intel CPU with AMX, one without, an
AMD CPU, or a GPU):
1. Candidates, by BERTSERVE_PROVIDER. `auto`: onnxruntime's CPU provider on its preferred CPU artifact that passes
   the gate (INT8 when published, else fp32) and OpenVINO's own runtime on the fp32 artifact (Intel and AMD alike);
   where onnxruntime has CUDA, CUDA on each CUDA artifact (fp16, fp32) first, the CPU ones only if none of those
   passes. A provider this machine lacks is skipped with the reason.
2. Each candidate opens with the layout it would serve with, warms up, then runs the version's golden texts in
   length-sorted batches on all its sessions at once. That one pass is the proof (agreement and largest
   probability difference against the fp32 PyTorch reference, within the version's gate) and the timing.
3. Among the candidates that pass, `pick` chooses by BERTSERVE_FIDELITY_MARGIN: the most faithful to the golden
   outputs if its rate is within that fraction of the fastest one's, else the fastest; a failing one is named in a
   warning with its figures. Versions exported without golden outputs still load: the gate is skipped (log,
   /models), synthetic texts time them and the fastest serves.
4. The batch caps are autotuned on the chosen engine. A model served by per-core onnxruntime CPU sessions gets one
   more session on all those cores, for a batch that runs alone (the low-load path, app.batching).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.engine import ORT_PROVIDER, Session, autotune, available, cpu_name, open_engine
from app.errors import ModelLoadError
from app.repository import TOKENIZER_FILE, Artifact, Golden, ModelConfig, Provider, read_config, read_golden
from app.served import ServedModel
from app.settings import Settings
from app.tokenizer import TextTokenizer, pad

log = logging.getLogger("bertserve.loader")

# onnxruntime's CPU provider runs fp32 graphs slower than INT8 ones on every CPU measured: its fp32 artifact is
# tried only when the INT8 one fails the gate. CUDA's fp16 and fp32 are both timed: which wins depends on the GPU.
FIRST_PASSING_ONLY = {"cpu"}
TRIAL_BATCH = {"cpu": 8, "openvino": 8, "cuda": 32}  # sequences per call when timing a candidate
# Without golden outputs: texts of 6 to ~200 tokens, so candidates are timed on a spread of lengths.
SYNTHETIC_TEXTS = [" ".join(["the service reads this sentence and answers"] * k) for k in range(1, 33)]


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


def candidate_groups(setting: str, artifacts_for: Callable[[Provider], list[Artifact]]) -> tuple[
    list[list[tuple[Provider, Artifact]]], list[dict[str, str]]
]:
    """Groups of (provider, artifact) tried in order (the first group with a passing candidate serves), and the
    providers skipped, with why. Every artifact a provider may run is a candidate, best first."""
    if setting == "auto":
        cuda_first = ORT_PROVIDER["cuda"] in ort.get_available_providers()
        plan: list[list[Provider]] = ([["cuda"]] if cuda_first else []) + [["cpu", "openvino"]]
    else:
        plan = [[setting]]  # type: ignore[list-item]
    groups, skipped = [], []
    for providers in plan:
        group = []
        for provider in providers:
            why = available(provider)
            artifacts = artifacts_for(provider)
            if why is None and not artifacts:
                why = "the version has no artifact for it"
            if why is not None:
                skipped.append({"provider": provider, "why": why})
                continue
            group += [(provider, artifact) for artifact in artifacts]
        groups.append(group)
    return groups, skipped


def score_texts(model: ServedModel, texts: list[str], batch_size: int,
                on_batch: Callable[[], None] | None = None) -> tuple[np.ndarray, float]:
    """The head's scores in input order (app.scores.Head), and the seconds spent: tokenized, cut into
    length-sorted batches and run on all of the model's sessions at once, as the batcher would."""
    started = time.perf_counter()
    encoded = model.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    logits = np.zeros((len(texts), len(model.config.labels)), dtype=np.float32)

    def run(batch: list[int]) -> None:
        types = [encoded[i].type_ids for i in batch]  # pairs (golden pairs, lifecycle): their type ids, as served
        logits[batch] = model.infer([encoded[i].ids for i in batch], types if any(types) else None)
        if on_batch:
            on_batch()

    with ThreadPoolExecutor(len(model.engines)) as pool:
        list(pool.map(run, batches))
    return model.config.head.scores(logits), time.perf_counter() - started


def open_candidate(name: str, version: int, path: Path, config: ModelConfig, tokenizer: TextTokenizer,
                   provider: Provider, artifact: Artifact, settings: Settings, **engine_options: Any) -> ServedModel:
    """The candidate with its serving layout, warmed up: the first runs allocate and pick kernels."""
    sessions, threads = settings.engine_layout(provider)
    engines = [open_engine(path, config, provider, artifact, threads, settings.openvino_precision, **engine_options)
               for _ in range(sessions)]
    for engine in engines:
        warm(engine, tokenizer)
    return ServedModel(name, version, path, config, tokenizer, engines)


def warm(engine: Session, tokenizer: TextTokenizer) -> None:
    """The first runs allocate and pick kernels: done before timing or serving."""
    sample = tokenizer.encode(["warm-up", "a longer warm-up sentence " * 64])
    for _ in range(2):
        engine.run(*pad([e.ids for e in sample], tokenizer.pad_id))


def prove(model: ServedModel, golden: Golden | None) -> dict[str, Any]:
    """One pass over the golden texts (or synthetic ones): the gate's figures and the measured rate."""
    engine = model.engine
    trial: dict[str, Any] = {
        "provider": engine.provider, "artifact": engine.artifact.file, "precision": engine.precision,
        "layout": f"{len(model.engines)} session(s) x {engine.threads} thread(s)",
    }
    texts = golden.texts if golden else SYNTHETIC_TEXTS
    batch = TRIAL_BATCH[engine.provider]
    score_texts(model, texts[: batch * len(model.engines)], batch)  # every session once more at trial shapes
    probs, seconds = score_texts(model, texts, batch)
    trial["sequences_per_s"] = round(len(texts) / seconds, 1)
    if golden is None:
        return trial | {"passed": True, "why": None}
    trial |= model.config.head.drift(np.asarray(golden.probabilities, dtype=np.float32), probs)
    why = golden.verdict(trial)
    return trial | {"passed": why is None, "why": why}


def fidelity(trial: dict[str, Any]) -> tuple[float, float]:
    """How faithful a candidate is to the golden outputs, larger is better: its agreement, then its mean score
    difference (ties among fp32 engines). Without golden outputs every candidate is equally unknown."""
    return trial.get("agreement", 0.0), -trial.get("mean_prob_diff", 0.0)


def pick(trials: list[dict[str, Any]], margin: float) -> tuple[int, str]:
    """Which passing candidate serves (its index) and by what rule. Pure: over each one's fidelity and measured rate
    (`sequences_per_s`). The most faithful serves if its rate is within `margin` of the fastest one's (1: always,
    0: only as fast), else the fastest."""
    rate = [t["sequences_per_s"] for t in trials]
    fastest = max(range(len(trials)), key=lambda i: rate[i])
    faithful = max(range(len(trials)), key=lambda i: (fidelity(trials[i]), rate[i]))
    if faithful == fastest:
        return fastest, "fastest" + (" and most faithful" if len(trials) > 1 else "")
    slower = 1 - rate[faithful] / rate[fastest]
    if rate[faithful] >= (1 - margin) * rate[fastest]:
        return faithful, f"most faithful, {slower:.1%} slower than the fastest, within the fidelity margin {margin}"
    return fastest, f"fastest: the most faithful is {slower:.1%} slower, beyond the fidelity margin {margin}"


def choose_engine(name: str, version: int, path: Path, config: ModelConfig, tokenizer: TextTokenizer,
                  golden: Golden | None, settings: Settings, **engine_options: Any) -> ServedModel:
    """Open, prove and time every candidate; keep the one `pick` chooses among those that pass (see the module
    docstring); the others are dropped."""
    groups, skipped = candidate_groups(settings.provider, config.artifacts_for)
    trials: list[dict[str, Any]] = []
    for group in groups:
        passing: list[tuple[dict[str, Any], ServedModel]] = []
        for provider, artifact in group:
            if provider in FIRST_PASSING_ONLY and any(m.engine.provider == provider for _, m in passing):
                continue
            try:
                model = open_candidate(name, version, path, config, tokenizer, provider, artifact, settings,
                                       **engine_options)
            except ModelLoadError as exc:
                trials.append({"provider": provider, "artifact": artifact.file, "passed": False, "why": str(exc)})
                log.warning("model %s version %d: %s on %s cannot serve: %s", name, version, provider,
                            artifact.file, exc)
                continue
            trial = prove(model, golden)
            trials.append(trial)
            if trial["passed"]:
                passing.append((trial, model))
                log.info("model %s version %d: candidate %s: %.1f sequences/s, gate %s", name, version,
                         model.engine, trial["sequences_per_s"],
                         _gate_figures(trial) if golden else "skipped (no golden outputs)")
            else:
                log.warning("model %s version %d: %s fails the golden gate (%s) and will not serve; %s",
                            name, version, model.engine, trial["why"], _gate_figures(trial))
        if passing:
            index, rule = pick([trial for trial, _ in passing], settings.fidelity_margin)
            chosen_trial, chosen = passing[index]
            for trial in trials:
                trial["chosen"] = trial is chosen_trial
            chosen.engine_choice = {
                "setting": settings.provider, "cpu": cpu_name(), "candidates": trials, "skipped": skipped,
                "rule": rule, "fidelity_margin": settings.fidelity_margin,
                "gate": {"texts": len(golden.texts), "min_agreement": golden.min_agreement,
                         "max_prob_diff": golden.max_prob_diff} if golden else "skipped: no golden outputs",
            }
            return chosen
    reasons = [f"{t['provider']} on {t['artifact']}: {t['why']}" for t in trials]
    reasons += [f"{s['provider']}: {s['why']}" for s in skipped]
    gate = any("agreement" in t and not t["passed"] for t in trials)  # an engine ran but missed the golden outputs
    raise ModelLoadError(f"{path}: no engine can serve it with provider={settings.provider}: {'; '.join(reasons)}",
                         "golden_gate" if gate else "load_failed")


def load_model(name: str, version: int, path: Path, settings: Settings, **engine_options: Any) -> ServedModel:
    """Open, prove, choose and warm one model version, then autotune its batch caps."""
    config = read_config(path)
    if config.max_length > settings.max_batch_tokens:
        raise ModelLoadError(
            f"BERTSERVE_MAX_BATCH_TOKENS ({settings.max_batch_tokens}) is below the max length of {path} "
            f"({config.max_length}): a full-length input could never be scheduled"
        )
    tokenizer = TextTokenizer(path / TOKENIZER_FILE, config.max_length)
    golden = read_golden(path, len(config.labels))
    if golden is None:
        log.warning("model %s version %d has no golden outputs (golden.json): engines serve unproven; re-export "
                    "it with `bertserve export` to add them", name, version)
    model = choose_engine(name, version, path, config, tokenizer, golden, settings, **engine_options)
    engine, sessions = model.engine, len(model.engines)
    if engine.provider == "cpu" and sessions > 1:  # the low-load path (app.batching): a lone batch on every core
        model.wide = open_engine(path, config, "cpu", engine.artifact, sessions * engine.threads, **engine_options)
        warm(model.wide, tokenizer)
    max_size, max_tokens, max_padding = batch_bounds(settings, model.engine.provider)
    choice: dict[str, Any] = {"max_batch_size": max_size, "max_batch_tokens": max_tokens}
    if settings.batch_autotune:
        sample = tokenizer.encode(["a longer warm-up sentence " * 64])[0].ids
        choice = autotune(model.engine, sample, config.max_length, max_size, max_tokens,
                          settings.batch_latency_budget_ms / 1000)
    model.batch_choice = {**choice, "max_batch_padding": None if math.isinf(max_padding) else max_padding}
    return model


def _gate_figures(trial: dict[str, Any]) -> str:
    if "agreement" not in trial:
        return "no figures"
    return f"agreement {trial['agreement']:.4f}, max score difference {trial['max_prob_diff']:.4f}"

