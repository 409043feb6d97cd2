"""`bertserve distill` on a tiny random BERT teacher (4 layers): the student's layers, its parity with its own
PyTorch weights, the gate against the teacher, what the published report records. Real torch training, real
optimum export, real onnxruntime sessions; seconds."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import pytest
import torch

from app.cli import main as cli
from app.lifecycle.distill import DistillOptions, distillation_loss, make_student, spread
from app.repository import read_config
from tests.support.tiny import CORPUS, LABELS, make_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("teacher") / "bert", "bert", seed=3, layers=4)


def texts(count: int, offset: int) -> list[str]:
    return [f"{CORPUS[(i + offset) % 6]} , {CORPUS[(3 * i + offset + 1) % 6]}" for i in range(count)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    with (folder / "train.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        # every fourth row without a label: the teacher alone teaches it
        writer.writerows((t, "" if i % 4 == 3 else LABELS[i % 3]) for i, t in enumerate(texts(48, 0)))
    with (folder / "test.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        writer.writerows((t, LABELS[(i * 7) % 3]) for i, t in enumerate(texts(24, 2)))
    (folder / "extra.txt").write_text("\n".join(texts(12, 4)) + "\n")
    return folder


def leftovers(repo):
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []


@pytest.mark.parametrize("total, keep, kept", [(6, 4, [0, 2, 3, 5]), (6, 3, [0, 3, 5]), (6, 2, [0, 5]),
                                               (12, 6, [0, 2, 4, 7, 9, 11]), (2, 1, [1])])
def test_layers_are_spread_evenly_first_and_last_kept(total, keep, kept):
    assert spread(total, keep) == kept


@pytest.mark.parametrize("keep", [0, 4, 5])
def test_a_student_must_have_fewer_layers_than_its_teacher(teacher, keep, tmp_path, data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["distill", str(teacher), "--layers", str(keep), "--name", "s", "--data", str(data / "train.csv"),
             "--model-repository", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "the teacher has 4 layers; keep between 1 and 3" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_student_starts_as_the_teachers_kept_layers(teacher):
    from transformers import AutoModelForSequenceClassification

    student, kept = make_student(teacher, 2)
    assert kept == [0, 3] and student.config.num_hidden_layers == 2
    original = AutoModelForSequenceClassification.from_pretrained(teacher).state_dict()
    for key, value in student.state_dict().items():
        if ".layer." in key:
            index = int(key.split(".layer.")[1].split(".")[0])
            source = key.replace(f".layer.{index}.", f".layer.{kept[index]}.")
        else:
            source = key
        assert torch.equal(value, original[source]), key
    assert len(student.bert.encoder.layer) == 2


def test_distillation_loss_is_the_soft_targets_mixed_with_labels_where_known():
    options = DistillOptions(temperature=2.0, soft_weight=0.5)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    unknown = torch.tensor([-1, -1])
    assert distillation_loss(logits, logits, unknown, None, options).item() == pytest.approx(0, abs=1e-7)
    other = torch.tensor([[0.0, 2.0, -1.0], [0.1, 0.2, 0.5]])
    soft = distillation_loss(logits, other, unknown, None, options).item()
    assert soft > 0
    labelled = torch.tensor([1, 2])
    mixed = distillation_loss(logits, other, labelled, None, options).item()
    hard = torch.nn.functional.cross_entropy(logits, labelled).item()
    assert mixed == pytest.approx(0.5 * soft + 0.5 * hard, rel=1e-5)


def test_student_is_published_with_parity_and_a_report_naming_teacher_and_layers(teacher, data, tmp_path, capsys):
    repo, kept_checkpoint = tmp_path / "repo", tmp_path / "student"
    cli(["distill", str(teacher), "--layers", "2", "--name", "tiny", "--data", str(data / "train.csv"),
         "--unlabeled", str(data / "extra.txt"), "--eval-data", str(data / "test.csv"), "--epochs", "2",
         "--min-agreement", "0", "--max-accuracy-loss", "1", "--int8-min-agreement", "0",
         "--int8-max-accuracy-loss", "1", "--speed-rounds", "1", "--output", str(kept_checkpoint),
         "--model-repository", str(repo)])
    out = capsys.readouterr().out
    path = repo / "tiny" / "1"
    assert f"published {path}" in out and "2 of 4 layers [0, 3]" in out and "raw sequences/s" in out
    config = read_config(path)
    assert [a.file for a in config.artifacts] == ["model.int8.onnx", "model.onnx"]
    report = config.report

    distilled = report["distillation"]
    assert distilled["teacher"] == str(teacher)
    assert (distilled["teacher_layers"], distilled["layers"], distilled["layers_kept"]) == (4, 2, [0, 3])
    # 48 rows (36 labelled) + 12 unlabeled texts, less the held-out tenth
    assert distilled["train_size"] == 60 - 6 and distilled["labelled"] < distilled["train_size"]
    assert 1 <= len(distilled["history"]) <= 2 and "val_agreement" in distilled["history"][0]

    gate = report["teacher_gate"]
    assert gate["teacher"] == str(teacher) and gate["passed"] is True and gate["min_agreement"] == 0
    assert 0 <= gate["agreement"] <= 1 and "teacher_accuracy" in gate and "student_macro_f1" in gate
    assert 0 <= gate["int8"]["agreement"] <= 1

    speed = report["speed"]
    for who in ("teacher", "student"):
        assert speed[who]["sequences_per_s"] > 0 and speed[who]["best_engine"] in speed[who]["engines"]
    assert speed["teacher_artifacts"].startswith("scratch export")
    assert (path / "model.onnx").stat().st_size < (teacher / "model.safetensors").stat().st_size

    # The ONNX graph has the student's two layers, and gives what the student's own PyTorch weights give.
    graph = onnx.load(str(path / "model.onnx"))
    names = " ".join(node.name for node in graph.graph.node)
    assert "layer.1/" in names and "layer.2/" not in names
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.lifecycle.runner import open_artifact, probabilities

    sample = texts(24, 2)
    student = AutoModelForSequenceClassification.from_pretrained(kept_checkpoint).eval()
    assert student.config.num_hidden_layers == 2
    # the kept checkpoint records its length, as `bertserve train` does: a later `bertserve export` cuts texts there
    assert json.loads((kept_checkpoint / "report.json").read_text())["options"]["max_length"] == config.max_length
    batch = AutoTokenizer.from_pretrained(kept_checkpoint)(sample, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(student(**batch).logits, -1).numpy()
    onnx_probs, _ = probabilities(open_artifact(path, config, config.artifacts[1]), sample)
    assert np.abs(onnx_probs - expected).max() < 1e-4
    assert report["parity_max_prob_diff"] < 1e-3


def test_gate_refuses_a_student_that_cannot_meet_it_and_publishes_nothing(teacher, data, tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)  # an older version stays untouched
    with pytest.raises(SystemExit) as exit_info:
        cli(["distill", str(teacher), "--layers", "1", "--name", "tiny", "--data", str(data / "train.csv"),
             "--epochs", "1", "--min-agreement", "1.01", "--model-repository", str(repo)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bertserve distill: the student misses its gate against the teacher, nothing published "
                           "(agreement ")
    assert last.endswith("< 1.01)")
    figures = json.loads(err[err.rindex("\n{") : err.rindex("}") + 1])  # the measured figures, printed
    assert figures["passed"] is False and figures["min_agreement"] == 1.01 and 0 <= figures["agreement"] <= 1
    assert leftovers(repo) == ["tiny", "tiny/1"]


def test_a_student_without_a_passing_int8_recipe_is_published_fp32_only(teacher, data, tmp_path, capsys):
    """As export: no INT8 recipe passes the INT8 gate (asked for agreement 1.01) -> the student's fp32 is published,
    the report says why INT8 was refused, exit 0."""
    repo = tmp_path / "repo"
    argv = ["distill", str(teacher), "--layers", "2", "--name", "tiny", "--data", str(data / "train.csv"),
            "--epochs", "1", "--min-agreement", "0", "--max-accuracy-loss", "1", "--int8-min-agreement", "1.01",
            "--speed-rounds", "1", "--model-repository", str(repo)]
    cli(argv)  # no SystemExit: exit status 0
    out = capsys.readouterr().out
    config = read_config(repo / "tiny" / "1")
    assert [a.file for a in config.artifacts] == ["model.onnx"]
    assert not (repo / "tiny" / "1" / "model.int8.onnx").exists()
    refused = config.report["gate"]["int8_refused"]
    assert refused.startswith("no int8 recipe passed the accuracy gate") and "< 1.01" in refused
    assert f"int8 refused, fp32 only: {refused}" in out
    assert config.report["teacher_gate"]["passed"] is True

    # --require-int8 asks for the old way (publish nothing, exit 1): refused with another quantization, before work
    with pytest.raises(SystemExit) as exit_info:
        cli([*argv, "--require-int8", "--quantize", "none"])
    assert exit_info.value.code == 1
    assert "--require-int8 cannot go with --quantize none" in capsys.readouterr().err
    assert not (repo / "tiny" / "2").exists()


def test_a_pair_classifier_is_distilled_on_pairs(teacher, tmp_path, capsys):
    """--text-pair-column: the student learns the teacher's scores on pairs (type ids), its golden outputs are
    pairs, and its kept checkpoint says so (a later export's built-in sample is then pairs)."""
    from app.repository import read_golden

    data = tmp_path / "nli.csv"
    with data.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows((a, b, LABELS[i % 3]) for i, (a, b) in enumerate(zip(texts(30, 0), texts(30, 3))))
    repo, kept = tmp_path / "repo", tmp_path / "student"
    cli(["distill", str(teacher), "--layers", "2", "--name", "nli", "--data", str(data), "--text-column", "premise",
         "--text-pair-column", "hypothesis", "--epochs", "1", "--min-agreement", "0", "--max-accuracy-loss", "1",
         "--quantize", "none", "--speed-rounds", "1", "--output", str(kept), "--model-repository", str(repo)])
    golden = read_golden(repo / "nli" / "1", 3)
    assert golden.texts and all(isinstance(t, tuple) and len(t) == 2 for t in golden.texts)
    assert json.loads((kept / "report.json").read_text())["pairs"] is True
    assert read_config(repo / "nli" / "1").report["parity_max_prob_diff"] <= 1e-3


def test_the_teacher_is_found_under_its_own_name_or_named(teacher, tmp_path):
    """The teacher timed beside the student is its published version whatever the model is called (the README's
    example distils `reviews` into `reviews-l4`), or the one --teacher-version names: NAME[:VERSION] or a folder."""
    from transformers import AutoTokenizer

    from app.lifecycle import LifecycleError
    from app.lifecycle.speed import named_version, published_teacher

    repo = tmp_path / "repo"
    cli(["export", str(teacher), "--name", "reviews", "--quantize", "none", "--model-repository", str(repo)])
    published = repo / "reviews" / "1"
    assert published_teacher(repo, teacher, AutoTokenizer.from_pretrained(teacher), LABELS) == published
    assert published_teacher(repo, teacher, AutoTokenizer.from_pretrained(teacher), LABELS[::-1]) is None
    assert [named_version(repo, ref) for ref in ("reviews", "reviews:1", str(published))] == [published] * 3
    with pytest.raises(LifecycleError, match="no model 'reviews-l4'"):
        named_version(repo, "reviews-l4")
