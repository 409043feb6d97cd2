"""`bertserve distill` on the demo model: its fine-tuned MiniLM-L6 (the teacher, kept by build-demo) to 3 layers,
published with its gate figures and its speed beside the teacher. The figures are reported, not held to targets."""

from __future__ import annotations

import json

import pytest

from app.cli import main as cli
from app.repository import read_config
from tests.support.paths import DEMO_MODEL

pytestmark = pytest.mark.slow


def test_demo_teacher_distils_to_three_layers_and_is_published_with_its_gate_figures(demo_repository, tmp_path, capsys):
    from transformers import AutoTokenizer

    from app.lifecycle.demo import teacher_checkpoint
    from app.lifecycle.speed import published_teacher

    teacher = teacher_checkpoint(demo_repository)  # kept by build-demo (trained again once if built before that)
    published = demo_repository / DEMO_MODEL / "1"
    # The teacher is recognised as the published demo version by its golden outputs.
    labels = read_config(published).labels
    assert published_teacher(demo_repository, teacher, AutoTokenizer.from_pretrained(teacher), labels) == published

    data, repo = tmp_path / "data", tmp_path / "repo"
    cli(["demo-data", str(data)])
    cli(["distill", str(teacher), "--layers", "3", "--name", DEMO_MODEL, "--data", str(data / "train.csv"),
         "--eval-data", str(data / "test.csv"), "--epochs", "2", "--min-agreement", "0", "--max-accuracy-loss", "1",
         "--teacher-version", str(published), "--speed-rounds", "1", "--model-repository", str(repo)])
    out = capsys.readouterr().out
    config = read_config(repo / DEMO_MODEL / "1")
    report = config.report
    assert config.labels == read_config(published).labels and config.max_length == 128
    distilled, gate, speed = report["distillation"], report["teacher_gate"], report["speed"]
    assert distilled["teacher"] == str(teacher)
    assert (distilled["teacher_layers"], distilled["layers"], distilled["layers_kept"]) == (6, 3, [0, 3, 5])
    assert gate["teacher"] == str(teacher) and gate["passed"] and gate["why"] is None
    for key in ("agreement", "max_prob_diff", "teacher_accuracy", "student_accuracy", "teacher_macro_f1",
                "student_macro_f1"):
        assert 0 <= gate[key] <= 1, key
    assert report["evaluation"]["fp32"]["accuracy"] == gate["student_accuracy"]
    assert speed["teacher_artifacts"] == f"published {published}"
    assert speed["teacher"]["sequences_per_s"] > 0 and speed["student"]["sequences_per_s"] > 0
    assert f"published {repo / DEMO_MODEL / '1'}" in out
    with capsys.disabled():
        print("\n" + out.strip())
        print(json.dumps({k: gate[k] for k in ("agreement", "teacher_accuracy", "student_accuracy",
                                               "teacher_macro_f1", "student_macro_f1")}
                         | {"int8_agreement": gate.get("int8", {}).get("agreement"),
                            "speedup": speed["speedup"], "cpu": speed["cpu"]}))
