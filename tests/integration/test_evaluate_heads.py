"""`bertserve evaluate` by the model's head (app.scores.Head), not argmax: a multi-label head's exact-set accuracy
(labels over 0.5 vs the row's labels, separated by '|'), a regression head's absolute errors. Tiny random BERT
checkpoints exported with --quantize none, evaluated through the serving code; the printed figures are checked
against the checkpoint's own PyTorch scores."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from app.cli import main as cli
from tests.support.tiny import CORPUS, HEADS, make_head_checkpoint

pytestmark = pytest.mark.slow

TEXTS = [f"{a} {b}".replace(",", "") for a in CORPUS for b in CORPUS[:3]]  # 18 texts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-heads")
    checkpoints = {}
    for seed, name in enumerate(("multilabel4", "regression")):
        labels, problem_type, _ = HEADS[name]
        checkpoints[name] = make_head_checkpoint(root / name, labels, problem_type, seed)
        cli(["export", str(checkpoints[name]), "--name", name, "--model-repository", str(root / "repo"),
             "--quantize", "none"])
    return root, checkpoints


def scores(checkpoint) -> np.ndarray:
    from transformers import AutoTokenizer

    from app.lifecycle.golden import pytorch_probabilities

    return pytorch_probabilities(checkpoint, AutoTokenizer.from_pretrained(checkpoint), TEXTS, 64)


def write(path, labels: list[str]):
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows(zip(TEXTS, labels))
    return path


def evaluate(root, name, data, capsys) -> str:
    capsys.readouterr()
    cli(["evaluate", name, "--data", str(data), "--model-repository", str(root / "repo"), "--provider", "cpu"])
    return capsys.readouterr().out


def test_multi_label_accuracy_is_the_set_of_labels_over_one_half(exported, tmp_path, capsys):
    root, checkpoints = exported
    names = HEADS["multilabel4"][0]
    decided = scores(checkpoints["multilabel4"]) > 0.5
    # half the rows labelled exactly as the model decides, the other half with one label flipped (never empty)
    truth = decided.copy()
    for row in range(1, len(TEXTS), 2):
        truth[row, row % 4] = not truth[row, row % 4]
    truth[~truth.any(1), 0] = True
    labels = ["|".join(n for n, on in zip(names, row) if on) for row in truth]
    out = evaluate(root, "multilabel4", write(tmp_path / "ml.csv", labels), capsys)
    expected = float((truth == decided).all(1).mean())
    assert 0 < expected < 1
    assert "a multi-label head (sigmoid)" in out and f"exact-set accuracy {expected:.4f}" in out
    assert "micro-F1" in out and all(n in out for n in names)

    bad = write(tmp_path / "bad.csv", ["nausea;rash"] * len(TEXTS))
    with pytest.raises(SystemExit) as exit_info:
        evaluate(root, "multilabel4", bad, capsys)
    assert exit_info.value.code == 1
    assert "separated by '|'" in capsys.readouterr().err


def test_regression_reports_absolute_errors_not_accuracy(exported, tmp_path, capsys):
    root, checkpoints = exported
    values = scores(checkpoints["regression"])[:, 0]
    truth = np.round(values + np.linspace(-1, 1, len(TEXTS)), 3)
    out = evaluate(root, "regression", write(tmp_path / "reg.csv", [str(v) for v in truth]), capsys)
    error = np.abs(truth - values)
    assert "a regression head (none)" in out
    mean, largest = (float(out.split(f"{what} absolute error ")[1].split()[0]) for what in ("mean", "max"))
    assert mean == pytest.approx(error.mean(), abs=1e-4) and largest == pytest.approx(error.max(), abs=1e-4)
    assert "accuracy" not in out

    with pytest.raises(SystemExit):
        evaluate(root, "regression", write(tmp_path / "words.csv", ["high"] * len(TEXTS)), capsys)
    assert "a regression model's labels are numbers" in capsys.readouterr().err
