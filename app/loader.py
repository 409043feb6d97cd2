"""The loader: a version folder in, a warmed ServedModel out, on the fastest correct engine of this machine (or the
most faithful one within the fidelity margin), the same one at every start and in every worker of the host.
Blocking: the registry (app.registry) runs it in a thread.

Which engine serves is measured here, never assumed (the machine may be an Intel CPU with AMX, one without, an
AMD CPU, or a GPU), and recorded (app.engine_cache), so that a restart or another worker does not measure again:
0. The engine cache: an entry for this version and host (keyed by CPU, cores, layout, runtimes, artifact digests and
   the settings the choice depends on) names the engine; only that one is opened and proven on the golden texts.
   Without an entry (or with --remeasure, or when the recorded engine fails its proof now), steps 1-3 run under the
   host's measuring lock, one process at a time, and the result is recorded.
1. Candidates, by BERTSERVE_PROVIDER. `auto`: onnxruntime's CPU provider on its preferred CPU artifact that passes
   the gate (INT8 when published, else fp32) and OpenVINO's own runtime on the fp32 artifact (Intel and AMD alike);
   where onnxruntime has CUDA, CUDA on each CUDA artifact (fp16, fp32) first, the CPU ones only if none of those
   passes. A provider this machine lacks is skipped with the reason (OpenVINO when its package is missing; one that
   lists no CPU device fails as a candidate when it opens: its libraries load only for a candidate that opens).
2. Each candidate opens with the layout it would serve with, warms up, then runs the version's golden texts in
   length-sorted batches on all its sessions at once: the proof (agreement and largest probability difference
   against the fp32 PyTorch reference, within the version's gate). When several pass, they are timed side by side
   in rounds over the same texts, chunk by chunk in alternating order (A B, B A, ...: `time_rounds`), so load from
   elsewhere on the machine falls on all alike; each one's rate takes each chunk's best time over the rounds.
3. Among the candidates that pass, `pick` chooses: the most faithful to the golden outputs (the most of their
   decisions made too; scores within the gate do not rank), unless another is faster by more than the fidelity
   margin (BERTSERVE_FIDELITY_MARGIN) and by more than the confidence margin (the spread of the rounds' ratios, at
   least 25 %: measurement noise never decides); equally faithful ones in the fixed candidate order, unless a
   later one is faster beyond the confidence margin. A failing one is named in a warning with its figures.
   Versions exported without golden outputs still load: the gate is skipped (log, /models), synthetic texts time
   them.
4. The batch caps are autotuned on the chosen engine. A model served by per-core onnxruntime CPU sessions gets one
   more session on all those cores, for a batch that runs alone (the low-load path, app.batching).
5. The memory the losing candidates, the proof and autotune used is handed back to the system
   (`release_freed_memory`): freed to the allocator is not enough, glibc keeps it (docs/memory.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import functools
import gc
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.engine import ORT_PROVIDER, Session, autotune, available, cpu_name, open_engine, openvino_missing
from app.engine_cache import EngineCache, cache_key
from app.errors import ModelLoadError
from app.guard import open_guard
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
# Timing when several candidates pass: ROUNDS rounds each over at most ROUND_TEXTS of the texts, side by side; a
# candidate counts as faster only beyond the confidence margin: the spread of the rounds' ratios, at least this.
ROUNDS = 3
ROUND_TEXTS = 256  # golden.json holds at most 256: every round runs them all, as the proof did
ROUND_CHUNK = 32  # texts run on one candidate before the next one's turn
# 25 %: between starts of one machine the gap between the same two engines moved by up to 16 points (the demo
# model on a 2-core AMD EPYC with AVX512-BF16: INT8 3 % faster than OpenVINO when the cores were quiet, 19 % with
# other work on them): a smaller gap is not a property of the engines, and serving the more faithful one costs less.
CONFIDENCE_FLOOR = 0.25


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
            # OpenVINO is looked up, not loaded: a worker the engine cache sends to onnxruntime never loads it
            why = openvino_missing() if provider == "openvino" else available(provider)
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
    length-sorted batches and run on all of the model's sessions at once, as the batcher would. A token model:
    the scores of every token of every text, one row per token, texts in order (app.tokens.score_token_texts)."""
    if model.token_model:
        from app.tokens import score_token_texts

        return score_token_texts(model, texts, batch_size, on_batch)
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
    # An INT8 artifact's guard: its fp32 referee with one session's threads, shared by the sessions: it runs on the
    # calling session's core. On all the worker's cores it took cores the other sessions were using (c=64: 0.91 of
    # the unguarded rate, against 0.94 with one thread; AMD EPYC Zen 4, 2 cores).
    guard = open_guard(path, config, artifact, provider, threads, **engine_options)
    if guard is not None:
        warm(guard.referee, tokenizer)
    return ServedModel(name, version, path, config, tokenizer, engines, guard=guard)


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
    reference = golden.reference()
    if reference.shape != probs.shape:  # a token model's tokens counted otherwise than at export: no proof
        why = f"the golden outputs have {len(reference)} rows, this tokenizer makes {len(probs)}"
        return trial | {"passed": False, "why": why}
    trial |= model.config.head.drift(reference, probs)
    why = golden.verdict(trial)
    return trial | {"passed": why is None, "why": why}


def fidelity(trial: dict[str, Any]) -> float:
    """How faithful a candidate is to the golden outputs, larger is better: the share of their decisions it makes
    too. Scores do not rank: every passing candidate's are within the gate's bound, and ranking by them kept a
    slower engine serving the same decisions (OpenVINO bf16 over the guarded INT8, whose near-ties fp32 decides).
    Without golden outputs every candidate is equally unknown."""
    return trial.get("agreement", 0.0)


def compare(faster: dict[str, Any], slower: dict[str, Any]) -> tuple[float, float]:
    """How much faster `faster` ran than `slower` (the ratio of their rates, `sequences_per_s`) and the confidence
    margin of that figure: the spread ((max - min) / median) of the ratios of their timing rounds (run side by side,
    `time_rounds`), at least CONFIDENCE_FLOOR; without rounds, the floor."""
    ratio = faster["sequences_per_s"] / slower["sequences_per_s"]
    a, b = faster.get("rounds") or [], slower.get("rounds") or []
    if len(a) > 1 and len(a) == len(b) and all(b):
        ratios = [x / y for x, y in zip(a, b)]
        return ratio, round(max(CONFIDENCE_FLOOR, (max(ratios) - min(ratios)) / statistics.median(ratios)), 3)
    return ratio, CONFIDENCE_FLOOR


def pick(trials: list[dict[str, Any]], margin: float) -> tuple[int, str]:
    """Which passing candidate serves (its index) and by what rule. Pure, over each one's fidelity and measured rates
    (`sequences_per_s`; with `rounds`, `compare`), and deterministic: the candidates are walked from the most
    faithful to the least (equally faithful ones in their given order); the first serves, and gives way only to one
    faster than it (`compare`) by more than both the fidelity margin (1: never; 0: any faster one, unless equally
    faithful) and the confidence margin, so noise within that margin cannot change the choice."""
    rate = [t["sequences_per_s"] for t in trials]
    order = sorted(range(len(trials)), key=lambda i: (-fidelity(trials[i]), i))
    chosen = order[0]
    for i in order[1:]:
        ratio, conf = compare(trials[i], trials[chosen])
        same = fidelity(trials[i]) == fidelity(trials[chosen])
        need = 1 + conf if same else (math.inf if margin >= 1 else max(1 / (1 - margin), 1 + conf))
        if ratio > need:
            chosen = i
    fastest = max(range(len(trials)), key=lambda i: (rate[i], -i))
    first = order[0]
    if len(trials) == 1:
        return 0, "fastest"
    if chosen == first:
        if chosen == fastest:
            return chosen, "fastest and most faithful"
        ratio, conf = compare(trials[fastest], trials[chosen])
        slower = 1 - 1 / ratio
        if fidelity(trials[first]) == fidelity(trials[fastest]):
            return chosen, (f"first of the equally faithful, {slower:.1%} slower than the fastest, within the "
                            f"confidence margin {conf:.0%}")
        return chosen, f"most faithful, {slower:.1%} slower than the fastest, within the {_within(margin, conf)}"
    ratio, conf = compare(trials[chosen], trials[first])
    slower = 1 - 1 / ratio
    if fidelity(trials[first]) == fidelity(trials[chosen]):
        return chosen, (f"fastest: the first of the equally faithful is {slower:.1%} slower, beyond the confidence "
                        f"margin {conf:.0%}")
    return chosen, (f"{'fastest' if chosen == fastest else 'faster'}: the most faithful is {slower:.1%} slower, "
                    f"beyond the fidelity margin {margin} and the confidence margin {conf:.0%}")


def _within(margin: float, conf: float) -> str:
    """The margin that decides when a more faithful candidate keeps its place: the wider one."""
    if margin >= 1 or 1 / (1 - margin) >= 1 + conf:
        return f"fidelity margin {margin}"
    return f"confidence margin {conf:.0%} (measurement noise)"


def _margin_shown(trials: list[dict[str, Any]]) -> float:
    """The confidence margin between the fastest and the most faithful candidate (the comparison that matters)."""
    if len(trials) < 2:
        return CONFIDENCE_FLOOR
    fastest = max(trials, key=lambda t: t["sequences_per_s"])
    faithful = max(trials, key=fidelity)
    return CONFIDENCE_FLOOR if fastest is faithful else compare(fastest, faithful)[1]


def round_texts(golden: Golden | None) -> list[Any]:
    """The texts of each timing round: at most ROUND_TEXTS of the golden (or synthetic) ones, evenly spaced."""
    texts = golden.texts if golden else SYNTHETIC_TEXTS
    step = max(1, len(texts) // ROUND_TEXTS)
    return list(texts[::step][:ROUND_TEXTS])


def time_rounds(models: list[ServedModel], texts: list[Any],
                rounds: int = ROUNDS) -> tuple[list[float], list[list[float]]]:
    """Each model's rate (sequences/s) over the texts, and its rate in each of `rounds` rounds, the candidates side
    by side: the length-sorted texts in chunks of ROUND_CHUNK, each chunk run on every candidate in turn, in
    alternating order (A B, B A, ...), so load from elsewhere on the machine falls on every candidate alike. The rate
    takes each chunk's best time over the rounds: work elsewhere on the machine only ever slows a run down, so the
    best time is the engine's own and the most repeatable figure (as autotune's best-of-N)."""
    lengths = [len(e.ids) for e in models[0].encode(texts)]
    ordered = [texts[i] for i in sorted(range(len(texts)), key=lambda i: lengths[i])]
    chunks = [ordered[k : k + ROUND_CHUNK] for k in range(0, len(ordered), ROUND_CHUNK)]
    spent = [[[0.0] * len(chunks) for _ in range(rounds)] for _ in models]  # model, round, chunk: seconds
    turn = 0
    for r in range(rounds):
        for c, chunk in enumerate(chunks):
            order = list(range(len(models)))
            for i in order if turn % 2 == 0 else order[::-1]:
                spent[i][r][c] = score_texts(models[i], chunk, TRIAL_BATCH[models[i].engine.provider])[1]
            turn += 1
    best = [round(len(texts) / sum(min(per_round[c] for per_round in spent[i]) for c in range(len(chunks))), 1)
            for i in range(len(models))]
    return best, [[round(len(texts) / sum(per_round), 1) for per_round in spent[i]] for i in range(len(models))]


def measure(name: str, version: int, path: Path, config: ModelConfig, tokenizer: TextTokenizer,
            golden: Golden | None, settings: Settings, groups: list[list[tuple[Provider, Artifact]]],
            skipped: list[dict[str, str]], **engine_options: Any) -> ServedModel:
    """Open and prove every candidate, time those that pass in alternating rounds, keep the one `pick` chooses (see
    the module docstring); the others are dropped."""
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
                log.info("model %s version %d: candidate %s: gate %s, %.1f sequences/s in its proof", name, version,
                         model.engine, _gate_figures(trial) if golden else "skipped (no golden outputs)",
                         trial["sequences_per_s"])
            else:
                log.warning("model %s version %d: %s fails the golden gate (%s) and will not serve; %s",
                            name, version, model.engine, trial["why"], _gate_figures(trial))
        if passing:
            if len(passing) > 1:
                texts = round_texts(golden)
                best, rounds = time_rounds([m for _, m in passing], texts)
                for (trial, model), rate, rates in zip(passing, best, rounds):
                    trial |= {"proof_sequences_per_s": trial["sequences_per_s"], "rounds": rates,
                              "sequences_per_s": rate, "round_texts": len(texts)}
                    log.info("model %s version %d: %s timed side by side in %d rounds: %s sequences/s, best of each "
                             "chunk %.1f", name, version, model.engine, len(rates), rates, rate)
            index, rule = pick([trial for trial, _ in passing], settings.fidelity_margin)
            chosen_trial, chosen = passing[index]
            for trial in trials:
                trial["chosen"] = trial is chosen_trial
            chosen.engine_choice = {
                "setting": settings.provider, "cpu": cpu_name(), "candidates": trials, "skipped": skipped,
                "rule": rule, "fidelity_margin": settings.fidelity_margin,
                "confidence_margin": _margin_shown([trial for trial, _ in passing]),
                "gate": {"texts": len(golden.texts), "min_agreement": golden.min_agreement,
                         "max_prob_diff": golden.max_prob_diff} if golden else "skipped: no golden outputs",
            }
            return chosen
    reasons = [f"{t['provider']} on {t['artifact']}: {t['why']}" for t in trials]
    reasons += [f"{s['provider']}: {s['why']}" for s in skipped]
    gate = any("agreement" in t and not t["passed"] for t in trials)  # an engine ran but missed the golden outputs
    raise ModelLoadError(f"{path}: no engine can serve it with provider={settings.provider}: {'; '.join(reasons)}",
                         "golden_gate" if gate else "load_failed")


def recorded(name: str, version: int, path: Path, config: ModelConfig, tokenizer: TextTokenizer,
             golden: Golden | None, settings: Settings, entry: dict[str, Any], file: Path,
             **engine_options: Any) -> ServedModel | None:
    """The engine an entry of the cache names, opened and proven on the golden texts; None (logged) when it cannot
    serve now: the caller measures again."""
    choice = entry["choice"]
    artifact = next((a for a in config.artifacts_for(choice["provider"]) if a.file == choice["artifact"]), None)
    if artifact is None:
        log.warning("model %s version %d: the engine cache names %s on %s, which the version does not offer: "
                    "measuring again", name, version, choice["provider"], choice["artifact"])
        return None
    try:
        model = open_candidate(name, version, path, config, tokenizer, choice["provider"], artifact, settings,
                               **engine_options)
    except ModelLoadError as exc:
        log.warning("model %s version %d: the engine cache's %s on %s cannot open now (%s): measuring again",
                    name, version, choice["provider"], choice["artifact"], exc)
        return None
    proof = prove(model, golden)
    if not proof["passed"]:
        log.warning("model %s version %d: the engine cache's %s fails the golden gate now (%s): measuring again",
                    name, version, model.engine, proof["why"])
        return None
    model.engine_choice = {**entry["engine_choice"], "proof": proof}
    return model


def choose_engine(name: str, version: int, path: Path, config: ModelConfig, tokenizer: TextTokenizer,
                  golden: Golden | None, settings: Settings, remeasure: bool = False,
                  **engine_options: Any) -> ServedModel:
    """The engine the cache records for this version and host, proven now; else measured (one process of the host
    at a time) and recorded. See the module docstring."""
    groups, skipped = candidate_groups(settings.provider, config.artifacts_for)
    args = (name, version, path, config, tokenizer, golden, settings)
    cache, origin = EngineCache.for_repository(settings, path.parent.parent)
    if cache is None:
        log.warning("model %s version %d: no engine cache (%s): the engines are measured at every load", name,
                    version, origin)
        model = measure(*args, groups, skipped, **engine_options)
        model.engine_choice["cache"] = {"source": "measured now, not recorded", "why": origin}
        return model
    key = cache_key(settings, path, [candidate for group in groups for candidate in group])
    file = cache.entry_path(name, version, key)
    entry = None if remeasure else cache.read(file, key)
    if entry and (model := recorded(*args, entry, file, **engine_options)):
        return _from_cache(model, name, version, entry, file, waited=0.0)
    with cache.measuring() as waited:
        entry = None if remeasure or entry else cache.read(file, key)  # written while this process waited?
        if entry is None:
            started, load_before = time.monotonic(), os.getloadavg()[0]
            model = measure(*args, groups, skipped, **engine_options)
            # The machine's other work while measuring (1-minute load average, before and after, on these cores):
            # figures taken on a busy host say so.
            model.engine_choice["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2),
                                                   os.cpu_count()]
            entry = {
                "key": key, "model": name, "version": version, "path": str(path),
                "choice": {"provider": model.engine.provider, "artifact": model.engine.artifact.file,
                           "precision": model.engine.precision},
                "rule": model.engine_choice["rule"], "candidates": model.engine_choice["candidates"],
                "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "measured_by": os.getpid(), "measure_s": round(time.monotonic() - started, 1),
                "engine_choice": model.engine_choice,
            }
            try:
                cache.write(file, entry)
            except OSError as exc:
                log.warning("model %s version %d: the engine choice cannot be recorded in %s: %s", name, version,
                            file, exc)
            model.engine_choice = {**model.engine_choice, "cache": {
                "source": "measured now", "entry": file.name, "folder": origin, "measured_at": entry["measured_at"],
                "waited_s": round(waited, 1)}}
            log.info("model %s version %d: engine measured now (%.1f s) and recorded in %s: %s, %s", name, version,
                     entry["measure_s"], file, model.engine, model.engine_choice["rule"])
            if max(model.engine_choice["load_average"][:2]) > (os.cpu_count() or 1):
                log.warning("model %s version %d: the host was busy while measuring (load average %s on %d cores): "
                            "the rates reflect that; `bertserve engines --remeasure` on a quieter host measures "
                            "again", name, version, model.engine_choice["load_average"][:2], os.cpu_count() or 1)
            return model
    model = recorded(*args, entry, file, **engine_options)  # another process measured it while this one waited
    if model is not None:
        return _from_cache(model, name, version, entry, file, waited)
    return choose_engine(*args, remeasure=True, **engine_options)


def _from_cache(model: ServedModel, name: str, version: int, entry: dict[str, Any], file: Path,
                waited: float) -> ServedModel:
    model.engine_choice["cache"] = {"source": "engine cache", "entry": file.name,
                                    "measured_at": entry.get("measured_at"), "measured_by": entry.get("measured_by"),
                                    "waited_s": round(waited, 1)}
    log.info("model %s version %d: engine from the engine cache %s (measured %s): %s, %s", name, version, file,
             entry.get("measured_at"), model.engine, entry["rule"])
    return model


def load_model(name: str, version: int, path: Path, settings: Settings, remeasure: bool = False,
               **engine_options: Any) -> ServedModel:
    """Open, prove, choose (or read the recorded choice; remeasure: measure again) and warm one model version, then
    autotune its batch caps."""
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
    model = choose_engine(name, version, path, config, tokenizer, golden, settings, remeasure, **engine_options)
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
    release_freed_memory()
    return model


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (another C library: musl returns freed memory by itself)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand the memory freed while loading back to the system. The losing candidates' sessions, the proof's and
    autotune's batches are freed when their last reference goes (the cycle collector first, for any in cycles), but
    glibc keeps freed blocks in its heaps, where they count in the worker's RSS for good: malloc_trim(0) returns
    them (on the demo, 100-115 MB after a cold start that measured both engines: docs/memory.md)."""
    gc.collect()
    if (trim := _malloc_trim()) is not None:
        trim(0)


def _gate_figures(trial: dict[str, Any]) -> str:
    if "agreement" not in trial:
        return "no figures"
    return f"agreement {trial['agreement']:.4f}, max score difference {trial['max_prob_diff']:.4f}"

