"""`bertserve distill`'s speed figures: the teacher's and the student's served CPU artifacts timed side by side."""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from app.lifecycle.export import ARTIFACTS, export_fp32, say
from app.lifecycle.golden import PARITY_TOLERANCE, pytorch_probabilities
from app.lifecycle.listing import find_version
from app.repository import (
    CONFIG_FILE,
    TOKENIZER_FILE,
    ModelConfig,
    read_config,
    read_golden,
    version_dirs,
    write_config,
)
from app.settings import Settings

SPEED_ROUNDS = 3


def published_teacher(repository: Path, teacher: Path, tokenizer, labels: list[str]) -> Path | None:
    """The published version whose golden outputs the teacher checkpoint reproduces (its export), whatever its
    model's name: sought among the repository's versions with the teacher's labels, the highest version first."""
    for versions in version_dirs(repository).values():
        for _, path in reversed(versions):
            try:
                config = read_config(path)
                golden = read_golden(path, len(config.labels))
            except Exception:  # noqa: BLE001 - an unreadable version is simply not the teacher
                continue
            if golden is None or config.labels != labels or golden.token_probabilities is not None:
                continue  # (a token model's golden rows are per token: never a sequence teacher's)
            texts = golden.texts[:16]
            probs = pytorch_probabilities(teacher, tokenizer, texts, config.max_length)
            if np.abs(probs - golden.probabilities[:16]).max() <= PARITY_TOLERANCE:
                return path
    return None


def named_version(repository: Path, reference: str) -> Path:
    """A published version given as a version folder, or as NAME or NAME:VERSION of the repository."""
    folder = Path(reference)
    path = folder if (folder / CONFIG_FILE).is_file() else find_version(repository, reference)[2]
    read_config(path)  # a broken version fails here, before any training
    return path


def teacher_artifacts(teacher: Path, published: Path | None, repository: Path, tokenizer, labels: list[str],
                      max_length: int, int8: bool, work: Path) -> tuple[Path, str]:
    """A folder holding the teacher's artifacts to time, and what it is: the given published version, else the
    version of the repository the teacher was published as, else a scratch export (int8 per-channel, not gated)."""
    from app.lifecycle.quantize import Recipe, quantize

    if published is not None:
        return published, f"published {published}"
    found = published_teacher(repository, teacher, tokenizer, labels)
    if found is not None:
        return found, f"published {found} (its golden outputs match the teacher)"
    say("the teacher has no published version here: exporting it to a scratch folder to time it ...")
    folder = work / "teacher"
    fp32_graph = export_fp32(teacher, work / "teacher-export", "none")
    folder.mkdir()
    shutil.copyfile(fp32_graph, folder / ARTIFACTS["fp32"].file)
    tokenizer.save_pretrained(folder)
    artifacts = [ARTIFACTS["fp32"]]
    if int8:
        quantize(fp32_graph, folder / ARTIFACTS["int8"].file, Recipe(), optimized=False)
        artifacts.insert(0, ARTIFACTS["int8"].model_copy(update={"quantization": Recipe().describe()}))
    write_config(folder, ModelConfig(labels=labels, max_length=max_length, artifacts=artifacts))
    return folder, f"scratch export ({'int8 per-channel, not gated' if int8 else 'fp32'})"


def side_by_side(models: dict[str, tuple[Path, ModelConfig]], texts: list[str], settings: Settings,
                 rounds: int = SPEED_ROUNDS) -> dict[str, Any]:
    """Raw sequences/s of each model's served CPU artifacts on every CPU engine this machine has (onnxruntime CPU
    on the INT8 artifact when there is one, else fp32; the OpenVINO provider on fp32 when its plugin lists a CPU
    device), each with the layout it would serve with, in length-sorted batches, rounds alternating between the
    models. Per model: the median rate of each engine and the fastest engine. `settings`: the serving layout's
    (the CLI's, from BERTSERVE_* variables)."""
    from app.engine import available, cpu_name
    from app.lifecycle.runner import probabilities
    from app.loader import TRIAL_BATCH, open_candidate
    from app.tokenizer import TextTokenizer

    skipped = {p: why for p in ("cpu", "openvino") if (why := available(p)) is not None}
    runs = []
    for who, (folder, config) in models.items():
        tokenizer = TextTokenizer(folder / TOKENIZER_FILE, config.max_length)
        for provider in ("cpu", "openvino"):
            artifact = config.artifact_for(provider)
            if provider not in skipped and artifact is not None:
                model = open_candidate(who, 0, folder, config, tokenizer, provider, artifact, settings)
                runs.append((who, f"{model.engine}, {len(model.engines)}x{model.engine.threads} threads", model))
    files = {(who, engine): model.engine.artifact.file for who, engine, model in runs}
    rates: dict[tuple[str, str], list[float]] = {(who, engine): [] for who, engine, _ in runs}
    for _ in range(rounds):
        for who, engine, model in runs:
            _, seconds = probabilities(model, texts, TRIAL_BATCH[model.engine.provider])
            rates[who, engine].append(len(texts) / seconds)
    result: dict[str, Any] = {"cpu": cpu_name(), "texts": len(texts), "rounds": rounds, "skipped": skipped}
    for who, (folder, config) in models.items():
        engines = {engine: round(statistics.median(r), 1) for (w, engine), r in rates.items() if w == who}
        best = max(engines, key=engines.__getitem__)
        result[who] = {"engines": engines, "best_engine": best, "sequences_per_s": engines[best],
                       "size_mb": round((folder / files[who, best]).stat().st_size / 1e6, 1)}  # of best's artifact
    if "teacher" in models and "student" in models:
        result["speedup"] = round(result["student"]["sequences_per_s"] / result["teacher"]["sequences_per_s"], 2)
    return result
