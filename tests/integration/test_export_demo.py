"""The published demo model (built by `bertserve build-demo` before the suite): its report and its accuracy."""

from __future__ import annotations

import csv

import pytest

from app.cli import main as cli
from app.repository import read_config
from tests.support.paths import DEMO_MODEL

pytestmark = pytest.mark.slow


def test_demo_report_holds_the_gate_and_test_figures(demo_repository):
    config = read_config(demo_repository / DEMO_MODEL / "1")
    assert config.labels == ["negative", "neutral", "positive"] and config.max_length == 128
    report = config.report
    assert report["parity_max_prob_diff"] < 1e-4
    fp32 = report["evaluation"]["fp32"]
    assert 0.6 <= fp32["accuracy"] <= 0.85
    if config.artifacts[0].precision == "int8":
        chosen = next(a for a in report["gate"]["attempts"] if a.get("passed"))
        assert chosen["recipe"] == config.artifacts[0].quantization == report["gate"]["chosen"]
        assert chosen["agreement"] >= report["gate"]["min_agreement"]
        assert fp32["accuracy"] - report["evaluation"]["int8"]["accuracy"] <= report["gate"]["max_accuracy_loss"]


def test_evaluate_reproduces_the_published_int8_accuracy(demo_repository, tmp_path, capsys):
    from app.lifecycle.data import demo_split

    texts, labels = demo_split("test")
    data = tmp_path / "test.tsv"
    with data.open("w", newline="") as out:
        writer = csv.writer(out, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels))
    cli(["evaluate", DEMO_MODEL, "--data", str(data), "--provider", "cpu", "--model-repository", str(demo_repository)])
    out = capsys.readouterr().out
    report = read_config(demo_repository / DEMO_MODEL / "1").report
    served = report["evaluation"]["int8" if "int8" in report["evaluation"] else "fp32"]
    assert f"accuracy {served['accuracy']:.4f}" in out
