"""`bertserve evaluate`: score a published model on labelled data through the serving code path.

Figures by the model's head (app.scores.Head decides, as when serving): a single-label (softmax) head -> accuracy,
macro-F1, per class, confusion; a multi-label head -> exact-set accuracy (the labels over 0.5 are exactly the row's
labels, written separated by '|'), macro/micro-F1, per label; a one-logit head -> accuracy of score > 0.5 against
0/1 labels, per class; a regression head -> mean and largest absolute error (numbers; several outputs separated by
'|'), and the share of rows within the head's agreement bound.

A token classifier (NER), published (NAME: the engine the server would load) or from its checkpoint folder
(`--checkpoint`, PyTorch fp32), on CoNLL or JSONL data, each word's tag from its first sub-word either way:
entity-level precision, recall and F1 per type, micro and macro, by seqeval in its default (lenient, conlleval-like)
mode as Hugging Face's `evaluate` seqeval metric computes them, and token (word) accuracy. token_figures takes BIO
tag lists, whatever predicted them: the served path plugs in there."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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


def token_figures(truth: list[list[str]], predicted: list[list[str]]) -> dict[str, Any]:
    """Entity-level figures of BIO tag sequences (one list per example, a tag per word) by seqeval's
    classification_report in its default mode (lenient: an I- after O or another type starts an entity, as
    conlleval and Hugging Face's `evaluate` read it): precision, recall, micro_f1 (the micro average over entities),
    macro_f1 (the mean of the types' F1), per_type {precision, recall, f1, support}; accuracy: share of words
    whose tag is right."""
    from seqeval.metrics import accuracy_score, classification_report
    from seqeval.metrics.sequence_labeling import get_entities

    if len(truth) != len(predicted) or any(len(t) != len(p) for t, p in zip(truth, predicted)):
        raise ValueError("truth and predictions differ in examples or words")
    # No entity on either side: nothing to average (seqeval's macro mean would be NaN, with warnings).
    any_entity = bool(get_entities(truth) or get_entities(predicted))
    table = classification_report(truth, predicted, output_dict=True, zero_division=0) if any_entity else {}
    averages = ("micro avg", "macro avg", "weighted avg")
    micro, macro = table.get("micro avg", {}), table.get("macro avg", {})
    words = sum(len(t) for t in truth)
    return {
        "precision": round(float(micro.get("precision", 0.0)), 4),
        "recall": round(float(micro.get("recall", 0.0)), 4),
        "micro_f1": round(float(micro.get("f1-score", 0.0)), 4),
        "macro_f1": round(float(macro.get("f1-score", 0.0)), 4),
        "accuracy": round(float(accuracy_score(truth, predicted)) if words else 0.0, 4),
        "per_type": {kind: {"precision": round(float(row["precision"]), 4), "recall": round(float(row["recall"]), 4),
                            "f1": round(float(row["f1-score"]), 4), "support": int(row["support"])}
                     for kind, row in table.items() if kind not in averages},
        "entities": int(micro.get("support", 0)),
        "words": words,
    }


def print_token_figures(figures: dict[str, Any]) -> None:
    print(f"entity micro-F1 {figures['micro_f1']:.4f} (precision {figures['precision']:.4f}, recall "
          f"{figures['recall']:.4f})  macro-F1 {figures['macro_f1']:.4f}  token accuracy {figures['accuracy']:.4f}  "
          f"({figures['entities']} entities, {figures['words']} words; seqeval, default mode)")
    width = max(9, *(len(n) for n in figures["per_type"])) + 1 if figures["per_type"] else 10
    print("type".ljust(width) + "precision  recall      f1  support")
    for kind, row in figures["per_type"].items():
        print(f"{kind.ljust(width)}{row['precision']:9.4f}{row['recall']:8.4f}{row['f1']:8.4f}{row['support']:9d}")


def evaluate_token_checkpoint(checkpoint: Path, data: Path, max_length: int | None = None) -> dict[str, Any]:
    """A token-classification checkpoint's figures (token_figures) on a CoNLL or JSONL file, PyTorch fp32. Words
    past max_length (the training length from report.json, else the tokenizer's limit, at most 512) are not scored."""
    from transformers import AutoConfig

    from app.lifecycle.data import read_token_data

    if not (checkpoint / "config.json").is_file():
        raise LifecycleError(f"{checkpoint}: no config.json; give a token-classification checkpoint folder "
                             "(bertserve train --task token-classification)")
    config = AutoConfig.from_pretrained(checkpoint)
    if not any(a.endswith("ForTokenClassification") for a in config.architectures or []):
        raise LifecycleError(f"{checkpoint}: a {config.architectures} checkpoint, not a token classifier; evaluate "
                             "a text classifier by its published name (bertserve export, then evaluate NAME)")
    return token_checkpoint_figures(checkpoint, read_token_data(data), max_length)


def token_checkpoint_figures(checkpoint: Path, examples: list, max_length: int | None = None) -> dict[str, Any]:
    """evaluate_token_checkpoint on examples already read (app.lifecycle.data's TaggedWords / SpanText)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from app.lifecycle.checkpoint import training_report
    from app.lifecycle.train import align, predict_word_tags

    tokenizer = AutoTokenizer.from_pretrained(checkpoint, use_fast=True)
    if max_length is None:
        trained = (training_report(checkpoint) or {}).get("options", {}).get("max_length")
        max_length = int(trained or min(tokenizer.model_max_length, 512))
    torch.set_num_threads(2)
    model = AutoModelForTokenClassification.from_pretrained(checkpoint).eval()
    aligned = [align(tokenizer, example, max_length) for example in examples]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    figures = token_figures([a.tags for a in aligned], predict_word_tags(model, aligned, pad_id))
    return {**figures, "examples": len(examples), "truncated_examples": sum(a.cut for a in aligned),
            "max_length": max_length}


def main_token_checkpoint(args: argparse.Namespace) -> None:
    figures = evaluate_token_checkpoint(Path(args.checkpoint), Path(args.data), args.max_length)
    print(f"{args.checkpoint} (PyTorch fp32) on {figures['examples']} examples from {args.data}, {figures['max_length']}"
          f" tokens each ({figures['truncated_examples']} cut there: their later words are not scored)")
    print_token_figures(figures)


def served_token_figures(model, examples: list, batch_size: int = 8) -> dict[str, Any]:
    """A published token classifier's figures (token_figures) on examples (app.lifecycle.data's TaggedWords /
    SpanText) through its served engine (a ServedModel from app.loader.load_model: the artifact the server would
    choose): each example aligned to its words exactly as the checkpoint evaluator aligns them (app.lifecycle.train's
    align on the version's own tokenizer, cut at the version's max_length), and each word's tag the argmax label of
    its first sub-word, from the engine's logits."""
    from transformers import AutoTokenizer

    from app.lifecycle.train import align

    tokenizer = AutoTokenizer.from_pretrained(model.path, use_fast=True)
    max_length = model.config.max_length
    labels = model.config.labels
    aligned = [align(tokenizer, example, max_length) for example in examples]
    order = sorted(range(len(aligned)), key=lambda i: len(aligned[i].ids))
    predicted: list[list[str]] = [[] for _ in aligned]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, logits in zip(batch, model.infer([aligned[i].ids for i in batch]), strict=True):
            best = np.asarray(logits).argmax(-1)
            predicted[i] = [labels[int(best[p])] for p in aligned[i].firsts]
    figures = token_figures([a.tags for a in aligned], predicted)
    return {**figures, "examples": len(examples), "truncated_examples": sum(a.cut for a in aligned),
            "max_length": max_length}


def main_token_version(args: argparse.Namespace, name: str, version: int, path: Path) -> None:
    """`bertserve evaluate NAME` on a published token classifier: CoNLL or JSONL data, seqeval figures as
    --checkpoint prints them, from the engine the server would load."""
    import time

    from app.lifecycle.data import read_token_data
    from app.loader import load_model

    examples = read_token_data(Path(args.data))
    try:
        model = load_model(name, version, path, args.settings)
    except (ModelLoadError, ValueError) as exc:
        raise LifecycleError(str(exc)) from None
    started = time.perf_counter()
    figures = served_token_figures(model, examples)
    seconds = time.perf_counter() - started
    print(f"{name}:{version} ({model.engine.artifact.file}, {model.engine.provider}) on {figures['examples']} "
          f"examples from {args.data}, {figures['max_length']} tokens each ({figures['truncated_examples']} cut "
          f"there: their later words are not scored), {figures['examples'] / seconds:.1f} examples/s")
    print_token_figures(figures)


def main(args: argparse.Namespace) -> None:
    """args.settings: the serving settings to load with (the CLI's, app.lifecycle.commands)."""
    from app.loader import load_model

    if getattr(args, "checkpoint", None):
        if args.model:
            raise LifecycleError("give a published model NAME or --checkpoint DIR, not both")
        main_token_checkpoint(args)
        return
    if not args.model:
        raise LifecycleError("give a published model NAME[:VERSION] (or a token classifier's --checkpoint DIR)")
    name, version, path = find_version(Path(args.model_repository), args.model)
    if getattr(read_config(path), "task", "text-classification") == "token-classification":
        main_token_version(args, name, version, path)
        return
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
