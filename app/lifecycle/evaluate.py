"""`bertserve evaluate`: score a published model on labelled data through the serving code path."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.errors import ModelLoadError
from app.lifecycle import LifecycleError
from app.lifecycle.data import read_labelled
from app.lifecycle.runner import probabilities
from app.lifecycle.figures import classification_figures, format_confusion
from app.repository import version_dirs


def find_version(repository: Path, reference: str) -> tuple[str, int, Path]:
    """NAME or NAME:VERSION -> (name, version, folder); the latest version when none is named."""
    name, _, wanted = reference.partition(":")
    versions = version_dirs(repository).get(name)
    if not versions:
        published = sorted(version_dirs(repository)) or "none"
        raise LifecycleError(f"no model {name!r} in {repository}; published models: {published}")
    if not wanted:
        return name, *versions[-1]
    if not wanted.isdigit() or int(wanted) not in dict(versions):
        raise LifecycleError(f"{name} has no version {wanted!r}; versions: {[v for v, _ in versions]}")
    return name, int(wanted), dict(versions)[int(wanted)]


def main(args: argparse.Namespace) -> None:
    from app.loader import load_model
    from app.settings import Settings

    repository = Path(args.model_repository)
    name, version, path = find_version(repository, args.model)
    texts, labels = read_labelled(Path(args.data), args.text_column, args.label_column)
    try:
        model = load_model(name, version, path, Settings(model_repository=repository, provider=args.provider,
                                                         batch_autotune=False))
    except (ModelLoadError, ValueError) as exc:
        raise LifecycleError(str(exc)) from None
    names = model.config.labels
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise LifecycleError(f"{args.data}: labels {unknown[:5]} are not the model's labels {names}")
    probs, seconds = probabilities(model, texts, progress="evaluating")
    figures = classification_figures([names.index(lab) for lab in labels], probs.argmax(1).tolist(), names)
    print(f"{name}:{version} ({model.engine.artifact.file}, {model.engine.provider}) on {len(texts)} texts "
          f"from {args.data}")
    print(f"accuracy {figures['accuracy']:.4f}  macro-F1 {figures['macro_f1']:.4f}  "
          f"{len(texts) / seconds:.1f} sequences/s (encode + infer, length-sorted batches of 8)")
    width = max(9, *(len(n) for n in names)) + 1
    print("class".ljust(width) + "precision  recall      f1  support")
    for label, row in figures["per_class"].items():
        print(f"{label.ljust(width)}{row['precision']:9.4f}{row['recall']:8.4f}{row['f1']:8.4f}{row['support']:9d}")
    print(format_confusion(figures["confusion_matrix"], names))
