"""`bertserve evaluate`: score a published model on labelled data through the serving code path.

Figures by the model's head (app.scores.Head decides, as when serving): a single-label (softmax) head -> accuracy,
macro-F1, per class, confusion; a multi-label head -> exact-set accuracy (the labels over 0.5 are exactly the row's
labels, written separated by '|'), macro/micro-F1, per label; a one-logit head -> accuracy of score > 0.5 against
0/1 labels, per class; a regression head -> mean and largest absolute error (numbers; several outputs separated by
'|'), and the share of rows within the head's agreement bound."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.errors import ModelLoadError
from app.lifecycle import LifecycleError
from app.lifecycle.data import read_labelled
from app.lifecycle.figures import classification_figures, format_confusion, multilabel_figures, regression_figures
from app.lifecycle.listing import find_version
from app.lifecycle.runner import probabilities
from app.repository import read_config, read_golden
from app.scores import Head

LABEL_SEPARATOR = "|"  # between a multi-label row's labels (and a multi-output regression row's values)
ONE_LOGIT_CLASSES = ["0", "1"]


def reads_pairs(path: Path) -> bool:
    """Whether the version was published for text pairs: its golden inputs (the export's gate sample, pairs for a
    checkpoint trained on pairs or gated on pair data) are pairs."""
    golden = read_golden(path, len(read_config(path).labels))
    return golden is not None and any(isinstance(text, tuple) for text in golden.texts)


def read_truth(labels: list[str], head: Head, where: str) -> np.ndarray:
    """The rows' labels as the head's figures need them: class indices, 0/1, a [n, labels] boolean matrix, or
    [n, labels] numbers. A value the head cannot have is refused, naming what it takes."""
    names, how = list(head.labels), head.kind
    if how in ("single-label", "one-logit"):
        classes = names if how == "single-label" else ONE_LOGIT_CLASSES
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise LifecycleError(f"{where}: labels {unknown[:5]} are not the model's labels {classes}")
        return np.array([classes.index(lab) for lab in labels])
    rows = [[part.strip() for part in lab.split(LABEL_SEPARATOR)] for lab in labels]
    if how == "multi-label":
        unknown = sorted({part for row in rows for part in row} - set(names))
        if unknown:
            raise LifecycleError(f"{where}: labels {unknown[:5]} are not the model's labels {names} (a row's "
                                 f"labels are separated by {LABEL_SEPARATOR!r})")
        return np.array([[name in row for name in names] for row in rows])
    try:
        values = np.array([[float(part) for part in row] for row in rows], dtype=np.float64)
    except ValueError:  # also rows of unequal length
        raise LifecycleError(f"{where}: a regression model's labels are numbers, {len(names)} per row "
                             f"(separated by {LABEL_SEPARATOR!r})") from None
    if values.shape[1] != len(names):
        raise LifecycleError(f"{where}: {values.shape[1]} number(s) per row; the model gives {len(names)} ({names})")
    return values


def report(head: Head, truth: np.ndarray, scores: np.ndarray) -> None:
    """Print the head's figures (see the module's docstring)."""
    names, how = list(head.labels), head.kind
    if how == "regression":
        within, _ = head.decisions(truth, scores)
        figures = regression_figures(truth, scores, within)
        print(f"mean absolute error {figures['mean_abs_error']:.5f}  max absolute error "
              f"{figures['max_abs_error']:.5f}  within the bound {head.bound}: {figures['within_bound']:.4f}")
        return
    decided = head.decide(scores)
    if how == "multi-label":
        figures = multilabel_figures(truth, decided, names)
        print(f"exact-set accuracy {figures['accuracy']:.4f}  macro-F1 {figures['macro_f1']:.4f}  micro-F1 "
              f"{figures['micro_f1']:.4f}")
    else:
        predicted = decided[:, 0].astype(int) if how == "one-logit" else decided.argmax(1)
        classes = ONE_LOGIT_CLASSES if how == "one-logit" else names
        figures = classification_figures(truth.tolist(), predicted.tolist(), classes)
        print(f"accuracy {figures['accuracy']:.4f}  macro-F1 {figures['macro_f1']:.4f}")
    width = max(9, *(len(n) for n in figures["per_class"])) + 1
    print("class".ljust(width) + "precision  recall      f1  support")
    for label, row in figures["per_class"].items():
        print(f"{label.ljust(width)}{row['precision']:9.4f}{row['recall']:8.4f}{row['f1']:8.4f}{row['support']:9d}")
    if "confusion_matrix" in figures:
        print(format_confusion(figures["confusion_matrix"], list(figures["per_class"])))


def main(args: argparse.Namespace) -> None:
    """args.settings: the serving settings to load with (the CLI's, app.lifecycle.commands)."""
    from app.loader import load_model

    name, version, path = find_version(Path(args.model_repository), args.model)
    if args.text_pair_column is None and reads_pairs(path):  # else each row's first text would be scored alone
        raise LifecycleError(f"{name}:{version} scores text pairs (its golden inputs are pairs): name the column "
                             "of each row's second text with --text-pair-column")
    texts, labels = read_labelled(Path(args.data), args.text_column, args.label_column, args.text_pair_column)
    try:
        model = load_model(name, version, path, args.settings)
    except (ModelLoadError, ValueError) as exc:
        raise LifecycleError(str(exc)) from None
    head = model.config.head
    truth = read_truth(labels, head, args.data)
    scores, seconds = probabilities(model, texts, progress="evaluating")
    print(f"{name}:{version} ({model.engine.artifact.file}, {model.engine.provider}) on {len(texts)} "
          f"{'pairs' if isinstance(texts[0], tuple) else 'texts'} from {args.data}: a {head.kind} head "
          f"({head.function}), {len(texts) / seconds:.1f} sequences/s (encode + infer, length-sorted batches of 8)")
    report(head, truth, scores)
