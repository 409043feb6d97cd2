"""Fine-tune a BERT-family checkpoint as a sequence classifier: seeded, class-weighted, early-stopped. On texts or
text pairs (NLI, cross-encoders: the tokenizer's pair template); a softmax head over the labels, or with one_logit a
single logit trained with binary cross-entropy on 0/1 labels (a reranker: served with sigmoid, the pipeline's rule).
With --task token-classification: a token classifier (NER) on BIO-tagged words (train_token_classifier)."""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from app.lifecycle import LifecycleError
from app.lifecycle.architectures import check_architecture  # what optimum-onnx exports: trainable here
from app.lifecycle.checkpoint import data_record, tokenize
from app.lifecycle.data import (
    OUTSIDE,
    TaggedWords,
    TokenExample,
    check_trainable,
    example_types,
    label_order,
    read_labelled,
    read_token_data,
    token_label_order,
    word_tags,
)
from app.lifecycle.figures import classification_figures
from app.tokenizer import TextInput

BINARY = ["0", "1"]  # a one-logit head's labels in the data: not relevant / relevant


@dataclass
class TrainOptions:
    epochs: int = 4
    learning_rate: float = 8e-5
    batch_size: int = 16
    max_length: int = 128
    validation_fraction: float = 0.15
    patience: int = 2  # epochs without a better validation macro-F1 before stopping
    seed: int = 13
    threads: int = 2


def load_base_config(base: str):
    try:
        return AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise LifecycleError(f"cannot load {base!r} ({first}); give a local Hugging Face model folder") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar lengths: little padding, yet a different mix every epoch."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 8
    batches = []
    for start in range(0, len(order), chunk):
        group = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def encode(tokenizer, inputs: list[TextInput], max_length: int) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of each text or pair, and their token_type_ids where the tokenizer makes them for pairs (a
    pair's second text is type 1); None otherwise (all zero)."""
    encoded = tokenize(tokenizer, inputs, max_length)
    pairs = any(isinstance(one, tuple) for one in inputs)
    return encoded["input_ids"], encoded["token_type_ids"] if pairs and "token_type_ids" in encoded else None


def collate(encoded: list[list[int]], indices: list[int], pad_id: int,
            types: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
    longest = max(len(encoded[i]) for i in indices)
    ids = torch.full((len(indices), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), longest), dtype=torch.long)
    for row, i in enumerate(indices):
        ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        mask[row, : len(encoded[i])] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = torch.zeros_like(ids)
        for row, i in enumerate(indices):
            batch["token_type_ids"][row, : len(types[i])] = torch.tensor(types[i])
    return batch


@torch.no_grad()
def predict(model, encoded: list[list[int]], pad_id: int, batch_size: int = 32,
            types: list[list[int]] | None = None) -> np.ndarray:
    """Logits in input order, computed on length-sorted batches."""
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    logits = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        logits[batch] = model(**collate(encoded, batch, pad_id, types)).logits.float().numpy()
    return logits


def split_validation(texts, targets, fraction: float, seed: int):
    n_classes = len(set(targets))
    n_validation = max(n_classes, round(fraction * len(texts)))
    if len(texts) - n_validation < n_classes:
        raise LifecycleError(f"only {len(texts)} examples: too few to keep a validation split; add data")
    return train_test_split(texts, targets, test_size=n_validation, stratify=targets, random_state=seed)


def balanced_weights(targets: list[int], classes: int) -> torch.Tensor:
    """Balanced class weights: rare classes count as much as common ones in the loss."""
    counts = np.bincount(targets, minlength=classes).astype(np.float64)
    return torch.tensor(len(targets) / (classes * np.maximum(counts, 1)), dtype=torch.float32)


def fit(
    model, lengths: list[int], batch_loss: Callable[[list[int]], torch.Tensor],
    validate: Callable[[], dict[str, Any]], options: TrainOptions, best_by: str,
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """The training loop of `train` and `distill`: AdamW with linear warm-up and decay over length-grouped batches
    of the examples (`lengths` = their token counts), a progress bar per epoch, `validate()` after each epoch,
    early stop after `options.patience` epochs without a better `validate()[best_by]` (ties: the lower
    `validate()["divergence"]` where there is one). The model ends with the best epoch's weights. Returns the
    history, the best epoch and its validation figures."""
    rng = random.Random(options.seed)
    steps_per_epoch = -(-len(lengths) // options.batch_size)
    # A few hundred examples cannot teach a whole vocabulary; freezing it also saves a third of the optimizer work.
    model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all parameters, about 10x faster than the per-tensor loop on CPU.
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.01, fused=True)
    schedule = get_linear_schedule_with_warmup(
        optimizer, int(0.1 * steps_per_epoch * options.epochs), steps_per_epoch * options.epochs
    )
    history, best, best_state, stale = [], None, None, 0

    def rank(figures: dict[str, Any]) -> tuple[float, float]:
        # Equal figures (a few dozen texts tie often): the lower divergence from the teacher, where one is reported.
        return figures[best_by], -figures.get("divergence", 0.0)

    for epoch in range(1, options.epochs + 1):
        model.train()
        total = 0.0
        bar = tqdm(length_grouped_batches(lengths, options.batch_size, rng), desc=f"epoch {epoch}/{options.epochs}",
                   unit="batch", file=sys.stderr, mininterval=1.0)
        for batch in bar:
            loss = batch_loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        figures = validate()
        scalars = {k: v for k, v in figures.items() if isinstance(v, float)}
        history.append({"epoch": epoch, "train_loss": round(total / len(bar), 4),
                        **{f"val_{k}": v for k, v in scalars.items()}})
        print(f"epoch {epoch}: train loss {history[-1]['train_loss']:.4f}, validation "
              + ", ".join(f"{k.replace('_', '-')} {v:.4f}" for k, v in scalars.items()), file=sys.stderr)
        if best is None or rank(figures) > rank(best[1]):
            best, best_state, stale = (epoch, figures), copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= options.patience:
                print(f"early stop: no better validation {best_by.replace('_', '-')} for {stale} epochs",
                      file=sys.stderr)
                break
    model.load_state_dict(best_state)
    return history, best[0], best[1]


def train_classifier(
    texts: list[TextInput], labels: list[str], base: str, output: Path, options: TrainOptions | None = None,
    label_names: list[str] | None = None, one_logit: bool = False, data: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` on (texts or pairs, labels); save the best epoch to `output` with report.json. Returns the
    report. one_logit: labels "0"/"1", one logit named label_names[0] (default LABEL_0), binary cross-entropy.
    data: the files the examples came from (checkpoint.data_record), recorded for the model card."""
    options = options or TrainOptions()
    started = time.perf_counter()
    check_trainable(labels, "training data")
    if one_logit:
        other = sorted(set(labels) - set(BINARY))
        if other:
            raise LifecycleError(f"--one-logit trains on 0/1 labels; the data also has {other[:5]}")
        label_names = label_names or ["LABEL_0"]
        if len(label_names) != 1:
            raise LifecycleError(f"a one-logit head has one label name, not {label_names}")
    label_names = label_names or label_order(labels)
    classes = BINARY if one_logit else label_names  # what validation counts decisions over
    unknown = set(labels) - set(classes)
    if unknown:
        raise LifecycleError(f"training data has labels {sorted(unknown)} outside {label_names}")
    config = load_base_config(base)
    check_architecture(config, base)

    torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    hf_logging.set_verbosity_error()  # the "newly initialised head" warning is expected here
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        # One logit: no problem_type, so the pipeline's rule gives sigmoid (a "regression" one gives raw values).
        **({"problem_type": None} if one_logit else {}),
        ignore_mismatched_sizes=True,
    )

    targets = [classes.index(lab) for lab in labels]
    train_texts, val_texts, train_y, val_y = split_validation(texts, targets, options.validation_fraction, options.seed)
    (train_ids, train_types), (val_ids, val_types) = (encode(tokenizer, part, options.max_length)
                                                      for part in (train_texts, val_texts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    weights = balanced_weights(train_y, len(classes))
    # One logit: the positive class weighted against the negative as balanced class weights would.
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=weights[1] / weights[0]) if one_logit else None
    cross_entropy = torch.nn.CrossEntropyLoss(weight=weights)
    target_tensor = torch.tensor(train_y)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        logits = model(**collate(train_ids, batch, pad_id, train_types)).logits
        if bce is not None:
            return bce(logits[:, 0], target_tensor[batch].float())
        return cross_entropy(logits, target_tensor[batch])

    def validate() -> dict[str, Any]:
        logits = predict(model, val_ids, pad_id, types=val_types)
        predicted = (logits[:, 0] > 0).astype(int) if one_logit else logits.argmax(axis=1)  # sigmoid > 0.5
        return classification_figures(val_y, predicted.tolist(), classes)

    history, best_epoch, best_figures = fit(model, [len(x) for x in train_ids], batch_loss, validate, options,
                                            best_by="macro_f1")
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    report = {
        "base": str(base),
        "labels": label_names,
        "one_logit": one_logit,
        "pairs": any(isinstance(t, tuple) for t in texts),  # export's built-in gate sample is then pairs
        # Names, row counts and sha256 of the data files, never a text: the published version's card quotes them.
        "data": data if data is not None else "unknown",
        "options": asdict(options),
        "train_size": len(train_ids),
        "validation_size": len(val_ids),
        "best_epoch": best_epoch,
        "validation": best_figures,
        "history": history,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ---- token classification (NER) ----

TOKEN_TASK = "token-classification"
IGNORED = -100  # no loss on this token: special tokens and every sub-word but a word's first (transformers' rule)


@dataclass
class Aligned:
    """An example encoded for a token classifier: token ids; the index of each kept word's first sub-word; that
    word's tag. Words past max_length (and any word the tokenizer makes no token of) are not kept."""

    ids: list[int]
    firsts: list[int]
    tags: list[str]
    cut: bool  # the example was truncated at max_length


def _first_subwords(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """(token index, word index) of each word's first sub-word; special tokens (word id None) are skipped."""
    firsts, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            firsts.append((position, word))
        previous = word
    return firsts


def align(tokenizer, example: TokenExample, max_length: int) -> Aligned:
    """Encode an example and put its word tags on the first sub-word of each word, as transformers' run_ner.py does
    (the fast tokenizer's word_ids()). CoNLL words are given (is_split_into_words); a JSONL text is split into words
    by the tokenizer's own pre-tokenizer, each word's tag read off the entity spans by its characters
    (offset_mapping): a word overlapping an entity is in it, the first such word B-, the others I-."""
    if isinstance(example, TaggedWords):
        encoded = tokenizer(example.words, is_split_into_words=True, truncation=True, max_length=max_length)
        full = len(tokenizer(example.words, is_split_into_words=True)["input_ids"])
        firsts = _first_subwords(encoded.word_ids())
        return Aligned(encoded["input_ids"], [p for p, _ in firsts], [example.tags[w] for _, w in firsts],
                       full > len(encoded["input_ids"]))
    encoded = tokenizer(example.text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    full = len(tokenizer(example.text)["input_ids"])
    word_ids, offsets = encoded.word_ids(), encoded["offset_mapping"]
    firsts = _first_subwords(word_ids)
    ranges = {}  # word -> its characters, from its first sub-word's start to its last one's end
    for position, word in enumerate(word_ids):
        if word is not None:
            start, end = offsets[position]
            ranges[word] = (ranges[word][0], end) if word in ranges else (start, end)
    tags = word_tags(example.spans, [ranges[w] for _, w in firsts])
    return Aligned(encoded["input_ids"], [p for p, _ in firsts], tags, full > len(encoded["input_ids"]))


def token_labels(aligned: Aligned, label2id: dict[str, int], where: str) -> list[int]:
    labels = [IGNORED] * len(aligned.ids)
    for position, tag in zip(aligned.firsts, aligned.tags):
        if tag not in label2id:
            raise LifecycleError(f"{where}: tag {tag!r} is not one of the model's labels {list(label2id)}")
        labels[position] = label2id[tag]
    return labels


@torch.no_grad()
def predict_word_tags(model, aligned: list[Aligned], pad_id: int, batch_size: int = 32) -> list[list[str]]:
    """Each example's predicted tag per kept word: the argmax label of the word's first sub-word."""
    model.eval()
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    encoded = [a.ids for a in aligned]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    tags: list[list[str]] = [[] for _ in aligned]
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        best = model(**collate(encoded, batch, pad_id)).logits.argmax(-1).numpy()
        for row, i in enumerate(batch):
            tags[i] = [id2label[int(best[row, p])] for p in aligned[i].firsts]
    return tags


def train_token_classifier(
    examples: list[TokenExample], base: str, output: Path, options: TrainOptions | None = None,
    label_names: list[str] | None = None, data: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` as a token classifier (AutoModelForTokenClassification) on BIO-tagged examples; save the
    best epoch (by validation entity micro-F1, seqeval) to `output` with report.json. Labels: `label_names`, else
    O first, then B-TYPE, I-TYPE per entity type in sorted order. Cross-entropy over the first sub-word of each word
    (transformers' run_ner.py), its classes weighted by the square root of balanced weights. Returns the report."""
    from seqeval.metrics.sequence_labeling import get_entities

    from app.lifecycle.evaluate import token_figures

    options = options or TrainOptions()
    started = time.perf_counter()
    if not example_types(examples):
        raise LifecycleError("training data: no entity at all (every tag O); a token classifier needs entities")
    label_names = label_names or token_label_order(example_types(examples))
    if label_names[0] != OUTSIDE or len(set(label_names)) != len(label_names):
        raise LifecycleError(f"token labels {label_names}: O first, each label once")
    label2id = {name: i for i, name in enumerate(label_names)}
    config = load_base_config(base)
    check_architecture(config, base, TOKEN_TASK)  # what optimum-onnx exports for token classification

    torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    hf_logging.set_verbosity_error()  # the "newly initialised head" warning is expected here
    tokenizer = AutoTokenizer.from_pretrained(base, use_fast=True)
    if not tokenizer.is_fast:
        raise LifecycleError(f"{base}: no fast tokenizer (tokenizer.json); token labels are aligned with word_ids()")
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(label_names), id2label=dict(enumerate(label_names)), label2id=label2id,
        ignore_mismatched_sizes=True,
    )
    aligned = [align(tokenizer, example, options.max_length) for example in examples]
    labels = [token_labels(a, label2id, e.where) for a, e in zip(aligned, examples)]
    n_validation = max(1, round(options.validation_fraction * len(examples)))
    if len(examples) - n_validation < 1:
        raise LifecycleError(f"only {len(examples)} examples: too few to keep a validation split; add data")
    order = list(range(len(examples)))
    random.Random(options.seed).shuffle(order)
    val_idx, train_idx = sorted(order[:n_validation]), sorted(order[n_validation:])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_ids = [aligned[i].ids for i in train_idx]
    # Entity words are rare (under 1 % of the words in the demo's reviews): the square root of balanced class
    # weights, so the head does not settle on all-O, without the false alarms of full balancing.
    counted = [y for i in train_idx for y in labels[i] if y != IGNORED]
    weights = balanced_weights(counted, len(label_names)).sqrt()
    cross_entropy = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORED)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        inputs = collate(train_ids, batch, pad_id)
        target = torch.full(inputs["input_ids"].shape, IGNORED, dtype=torch.long)
        for row, i in enumerate(batch):
            target[row, : len(train_ids[i])] = torch.tensor(labels[train_idx[i]])
        logits = model(**inputs).logits
        return cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))

    def validate() -> dict[str, Any]:
        part = [aligned[i] for i in val_idx]
        return token_figures([a.tags for a in part], predict_word_tags(model, part, pad_id))

    history, best_epoch, best_figures = fit(model, [len(x) for x in train_ids], batch_loss, validate, options,
                                            best_by="micro_f1")
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    report = {
        "base": str(base),
        "task": TOKEN_TASK,
        "labels": label_names,
        "scheme": "BIO (IOB2); evaluated with seqeval's default (lenient) mode",
        "alignment": "first sub-word of each word labelled, the other sub-words and special tokens -100",
        "class_weights": dict(zip(label_names, [round(float(w), 3) for w in weights])),
        "data": data if data is not None else "unknown",
        "options": asdict(options),
        "train_size": len(train_idx),
        "validation_size": len(val_idx),
        "truncated_examples": sum(a.cut for a in aligned),
        # Entities per type in the kept words (seqeval's reading of the tags: an I- after O starts one)
        "entities": dict(sorted(Counter(kind for kind, _, _ in get_entities([a.tags for a in aligned])).items())),
        "best_epoch": best_epoch,
        "validation": best_figures,
        "history": history,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(args: argparse.Namespace) -> None:
    if getattr(args, "from_log", None):
        main_from_log(args)
        return
    if args.data is None or args.base is None:
        raise LifecycleError("give --data and --base (or --from-log LOGDIR, training on the prediction log)")
    data = Path(args.data)
    if getattr(args, "task", "text-classification") == TOKEN_TASK:
        main_tokens(args, data)
        return
    texts, labels = read_labelled(data, args.text_column, args.label_column, args.text_pair_column)
    check_trainable(labels, args.data)
    options = TrainOptions(
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed,
    )
    # One logit: named after the label column (e.g. "relevance"), as it answers under that name.
    report = train_classifier(texts, labels, args.base, Path(args.output), options,
                              label_names=[args.label_column] if args.one_logit else None, one_logit=args.one_logit,
                              data=[data_record(data, len(texts))])
    best = report["validation"]
    print(f"trained {args.output}: best epoch {report['best_epoch']}, validation accuracy {best['accuracy']:.4f}, "
          f"macro-F1 {best['macro_f1']:.4f} ({report['elapsed_s']:.0f} s)")


def main_tokens(args: argparse.Namespace, data: Path) -> None:
    if args.one_logit or args.text_pair_column:
        raise LifecycleError("--one-logit and --text-pair-column are for text classification, not "
                             f"--task {TOKEN_TASK}")
    examples = read_token_data(data)
    options = TrainOptions(
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
        max_length=args.max_length, seed=args.seed,
    )
    report = train_token_classifier(examples, args.base, Path(args.output), options,
                                    data=[data_record(data, len(examples))])
    best = report["validation"]
    print(f"trained {args.output}: {report['labels']}, best epoch {report['best_epoch']}, validation entity "
          f"micro-F1 {best['micro_f1']:.4f}, token accuracy {best['accuracy']:.4f} ({report['elapsed_s']:.0f} s)")


# ---- train --from-log: the next version from production ----


def serving_version(repository: Path, model: str, version: str) -> tuple[Path, dict[str, Any] | None]:
    """The published version's folder and its bertserve.json (None where this repository does not hold it)."""
    folder = repository / model / version
    try:
        return folder, json.loads((folder / "bertserve.json").read_text())
    except (OSError, ValueError):
        return folder, None


def report_source(folder: Path, config: dict[str, Any] | None, repository: Path) -> Path:
    """The checkpoint a published version was exported from: report.source of its bertserve.json, as written
    (relative to where export ran) or relative to the repository's parent folder (where `make demo` runs)."""
    if config is None:
        raise LifecycleError(f"{folder}: no published version here (--model-repository {repository}); give --base, "
                             "the checkpoint to start from")
    source = (config.get("report") or {}).get("source")
    if not isinstance(source, str) or not source:
        raise LifecycleError(f"{folder / 'bertserve.json'} names no checkpoint (report.source); give --base, the "
                             "checkpoint to start from")
    for candidate in (Path(source), repository.parent / source):
        if (candidate / "config.json").is_file():
            return candidate
    raise LifecycleError(f"{folder / 'bertserve.json'}: its checkpoint {source} (report.source) is not on this machine "
                         "(model images ship no checkpoints); give --base with a copy of it")


def main_from_log(args: argparse.Namespace) -> None:
    """Fine-tune the serving version's checkpoint on the logged texts labelled by their feedback (and --data)."""
    from app.lifecycle.prediction_log_data import PredictionLog

    if getattr(args, "task", "text-classification") == TOKEN_TASK:
        raise LifecycleError(f"--from-log trains text classifiers; a token classifier (--task {TOKEN_TASK}) trains "
                             "from a CoNLL/JSONL file (--data)")
    log = PredictionLog(Path(args.from_log))
    name, _, version = (args.model or "").partition(":")
    model = log.model(name or None)
    log.texts(model)  # a log without texts (text mode hash or none) is refused first: nothing else would help
    version = version or log.models()[model][-1]  # the newest version that answered logged requests
    repository = Path(args.model_repository)
    folder, published = serving_version(repository, model, version)
    base = Path(args.base) if args.base else report_source(folder, published, repository)
    # The head keeps the served labels, in their order: the new version answers as the old one did.
    if published is not None:
        labels, problem = published.get("labels"), published.get("problem_type")
    else:
        base_config = load_base_config(str(base))
        labels = [base_config.id2label[i] for i in range(base_config.num_labels)]
        problem = base_config.problem_type
    if problem in ("multi_label_classification", "regression"):
        raise LifecycleError(f"{model}:{version} is a {problem} head; bertserve train fits single-label and one-logit "
                             "heads: fine-tune it with transformers on the log's texts (log_texts)")
    one_logit = len(labels) == 1
    found = log.labelled(model, labels, one_logit)
    print(found.summary())
    texts, targets, data = list(found.texts), list(found.labels), [found.data_record()]
    if args.data:
        path = Path(args.data)
        more, more_labels = read_labelled(path, args.text_column, args.label_column, args.text_pair_column)
        texts, targets, data = texts + more, targets + more_labels, data + [data_record(path, len(more))]
        print(f"with {len(more)} rows of {path}: {len(texts)} examples")
    if len({isinstance(t, tuple) for t in texts}) > 1:
        raise LifecycleError("the examples mix single texts and text pairs; a model reads one or the other")
    options = TrainOptions(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_length=args.max_length, seed=args.seed)
    print(f"starting from {base}" + ("" if args.base else f" (report.source of {model}:{version})"))
    report = train_classifier(texts, targets, str(base), Path(args.output), options, label_names=labels,
                              one_logit=one_logit, data=data)
    best = report["validation"]
    print(f"trained {args.output}: best epoch {report['best_epoch']}, validation accuracy {best['accuracy']:.4f}, "
          f"macro-F1 {best['macro_f1']:.4f} ({report['elapsed_s']:.0f} s); publish it with: bertserve export "
          f"{args.output} --name {model}")
