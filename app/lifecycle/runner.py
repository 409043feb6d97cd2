"""Run an artifact through the serving code (TextTokenizer + Engine + ServedModel), not a separate path."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from app.engine import Engine
from app.guard import open_guard
from app.loader import score_texts
from app.repository import TOKENIZER_FILE, Artifact, ModelConfig
from app.served import ServedModel
from app.tokenizer import TextTokenizer


def open_artifact(folder: Path, config: ModelConfig, artifact: Artifact, provider: str = "cpu", threads: int = 2):
    """A ServedModel on exactly this artifact (an fp16 graph is measured on CPU when asked for cpu), with its guard
    (app.guard) when it names one: what a CPU serves."""
    measured = artifact.model_copy(update={"providers": [provider]})
    only = config.model_copy(update={"artifacts": [measured]})
    engine = Engine(folder, only, provider=provider, threads=threads)
    tokenizer = TextTokenizer(folder / TOKENIZER_FILE, config.max_length)
    guard = open_guard(folder, config, artifact, provider, threads)  # type: ignore[arg-type]
    return ServedModel(artifact.file, 0, folder, only, tokenizer, [engine], guard=guard)


def probabilities(
    model: ServedModel, texts: list[str], batch_size: int = 8, progress: str | None = None
) -> tuple[np.ndarray, float]:
    """The head's scores in input order, and the seconds spent in encode + infer: the loader's own pass (length-sorted
    batches, as served). With `progress`, a progress bar of that name."""
    with tqdm(total=-(-len(texts) // batch_size), desc=progress, unit="batch", disable=progress is None,
              file=sys.stderr, leave=False) as bar:
        return score_texts(model, texts, batch_size, on_batch=lambda: bar.update())
