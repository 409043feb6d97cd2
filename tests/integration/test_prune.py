"""`bertserve prune` on tiny random BERT, DistilBERT and RoBERTa teachers: the importance measured is Michel et al.'s,
pruning is masking made dense, the published checkpoint keeps `pruned_heads` and a narrower feed-forward, its ONNX
matches transformers, bad input publishes nothing. Real torch training, real optimum export, real onnxruntime."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from app.cli import main as cli
from app.lifecycle.prune import apply, gradient_importance
from app.lifecycle.train import encode
from app.repository import read_config
from tests.support.tiny import CORPUS, LABELS, make_head_checkpoint, make_tiny_checkpoint

pytestmark = pytest.mark.slow

ARCHS = ["bert", "distilbert", "roberta"]


def texts(count: int, offset: int) -> list[str]:
    return [f"{CORPUS[(i + offset) % 6]} , {CORPUS[(3 * i + offset + 1) % 6]}" for i in range(count)]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {arch: make_tiny_checkpoint(root / arch, arch, seed=5, layers=3) for arch in ARCHS}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    for name, rows in (("train.csv", texts(40, 0)), ("test.csv", texts(24, 2))):
        with (folder / name).open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows((t, LABELS[i % 3]) for i, t in enumerate(rows))
    return folder


def leftovers(repo):
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []


OPEN_GATE = ["--min-agreement", "0", "--max-accuracy-loss", "1", "--int8-min-agreement", "0",
             "--int8-max-accuracy-loss", "1", "--speed-rounds", "1"]


def test_gradient_importance_is_michels_head_mask_gradient(teachers):
    path = teachers["bert"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    sample = texts(6, 1)
    encoded, _ = encode(tokenizer, sample, 32)
    decisions = torch.tensor([1, 0, 2, 2, 1, 0])
    heads, _ = gradient_importance(model, encoded, decisions, tokenizer.pad_token_id, batch_size=4)
    expected = np.zeros((3, 2))
    for i, text in enumerate(sample):  # one text at a time: |dL/dxi| per text, summed
        mask = torch.ones(3, 2, requires_grad=True)
        logits = model(**tokenizer([text], return_tensors="pt", truncation=True, max_length=32), head_mask=mask).logits
        torch.nn.functional.cross_entropy(logits, decisions[i : i + 1]).backward()
        expected += mask.grad.abs().numpy()
    np.testing.assert_allclose(np.stack(heads), expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_equals_masking_the_same_heads_and_neurons(teachers, arch):
    path = teachers[arch]
    tokenizer = AutoTokenizer.from_pretrained(path)
    original = AutoModelForSequenceClassification.from_pretrained(path, attn_implementation="eager").eval()
    pruned = apply(AutoModelForSequenceClassification.from_pretrained(path), {0: [1], 2: [0]},
                   [list(range(0, 64, 2))] * 3).eval()
    assert pruned.config.pruned_heads == {0: [1], 2: [0]}
    # the same function: the removed heads masked, the removed neurons' output weights zeroed
    lin2 = [layer.ffn.lin2 for layer in original.distilbert.transformer.layer] if arch == "distilbert" else [
        layer.output.dense for layer in original.base_model.encoder.layer]
    with torch.no_grad():
        for linear in lin2:
            linear.weight[:, 1::2] = 0
    mask = torch.ones(3, 2)
    mask[0, 1] = mask[2, 0] = 0
    batch = tokenizer(texts(5, 0), return_tensors="pt", padding=True)
    with torch.no_grad():
        np.testing.assert_allclose(pruned(**batch).logits.numpy(), original(**batch, head_mask=mask).logits.numpy(),
                                   atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_model_is_published_with_onnx_parity_and_a_report(teachers, data, arch, tmp_path, capsys):
    repo, checkpoint = tmp_path / "repo", tmp_path / "pruned"
    cli(["prune", str(teachers[arch]), "--heads", "0.5", "--ffn", "0.5", "--name", "p", "--data",
         str(data / "train.csv"), "--eval-data", str(data / "test.csv"), "--epochs", "1", "--output", str(checkpoint),
         "--model-repository", str(repo), *OPEN_GATE])
    out = capsys.readouterr().out
    path = repo / "p" / "1"
    assert f"published {path}" in out and "feed-forward width 32 (of 64)" in out
    config = read_config(path)
    report = config.report
    pruning = report["pruning"]
    assert pruning["heads_fraction"] == 0.5 and pruning["ffn_fraction"] == 0.5
    assert pruning["importance"] in ("gradient", "magnitude")
    assert set(pruning["agreement_before_recovery"]) == {"gradient", "magnitude"}
    assert sum(pruning["shape"]["heads_per_layer"]) == 3 and min(pruning["shape"]["heads_per_layer"]) == 1
    assert pruning["shape"]["parameters"] < pruning["teacher_shape"]["parameters"]
    assert report["teacher_gate"]["passed"] and "speedup" in report["speed"]
    card = (path / "README.md").read_text()
    assert "published by `bertserve prune`" in card and "Pruned from" in card and "recovered by distillation" in card
    # a checkpoint transformers loads: pruned_heads and the narrower feed-forward in its config
    saved = json.loads((checkpoint / "config.json").read_text())
    assert sum(len(v) for v in saved["pruned_heads"].values()) == 3
    assert saved["hidden_dim" if arch == "distilbert" else "intermediate_size"] == 32
    # its ONNX graph answers as transformers does
    assert report["parity_max_prob_diff"] <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    batch = tokenizer(texts(7, 3), padding=True, truncation=True, max_length=48, return_tensors="np")
    feed = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    with torch.no_grad():
        expected = torch.softmax(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits, -1).numpy()
    got = torch.softmax(torch.from_numpy(session.run(None, feed)[0]), -1).numpy()
    assert np.abs(got - expected).max() <= 1e-4


def test_prune_without_recovery_and_with_fewer_layers(teachers, data, tmp_path, capsys):
    repo = tmp_path / "repo"
    cli(["prune", str(teachers["bert"]), "--heads", "0.25", "--ffn", "0.75", "--layers", "2", "--importance",
         "magnitude", "--epochs", "0", "--quantize", "none", "--name", "p", "--data", str(data / "train.csv"),
         "--model-repository", str(repo), *OPEN_GATE])
    pruning = read_config(repo / "p" / "1").report["pruning"]
    assert pruning["layers_kept"] == [0, 2] and pruning["importance"] == "magnitude"
    assert pruning["history"] == [] and pruning["best_epoch"] == 0
    assert pruning["shape"]["ffn_width"] == 16 and sum(pruning["shape"]["heads_per_layer"]) == 3


def test_augmented_students_learn_from_teacher_labelled_variants(teachers, data, tmp_path):
    repo = tmp_path / "repo"
    cli(["distill", str(teachers["bert"]), "--layers", "1", "--augment", "2", "--epochs", "1", "--quantize", "none",
         "--name", "s", "--data", str(data / "train.csv"), "--model-repository", str(repo), *OPEN_GATE])
    distilled = read_config(repo / "s" / "1").report["distillation"]
    assert distilled["augmented"] == 2 * distilled["train_size"] and distilled["options"]["augment"] == 2
    # The epoch is chosen on the held-out texts and their own variants: agreement over all, the divergence for ties.
    figures = distilled["history"][0]
    assert {"val_agreement", "val_agreement_all", "val_divergence"} <= set(figures) and figures["val_divergence"] >= 0


def test_a_prediction_log_folder_gives_the_students_production_text(teachers, data, tmp_path):
    """--unlabeled LOGDIR: every text the server logged in full (text mode "full") joins the training texts,
    labelled by the teacher alone; hashed ones cannot teach and pairs do not fit a single-text teacher."""
    logs = tmp_path / "log"
    logs.mkdir()
    items = [{"index": 0, "label": "positive", "score": 0.9, "text": text} for text in texts(5, 900)]
    records = [{"type": "prediction", "id": f"r{k}", "time": f"2026-12-08T10:00:0{k}.000000+00:00", "model": "m",
                "version": "1", "route": "/predict", "protocol": "http", "task": "text-classification",
                "latency_ms": 3.0, "truncated": 0, "items": [item]} for k, item in enumerate(items)]
    records.append({**records[0], "id": "hashed", "items": [{"index": 0, "label": "positive", "text_hash": "ab"}]})
    records.append({**records[0], "id": "pair", "items": [{"index": 0, "label": "positive", "text": "q",
                                                           "text_pair": "d"}]})
    (logs / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    repo = tmp_path / "repo"
    cli(["distill", str(teachers["bert"]), "--layers", "1", "--epochs", "1", "--quantize", "none", "--name", "s",
         "--data", str(data / "train.csv"), "--unlabeled", str(logs), "--model-repository", str(repo), *OPEN_GATE])
    distilled = read_config(repo / "s" / "1").report["distillation"]
    [logged] = [d for d in distilled["data"] if d["file"].startswith("prediction log")]
    assert logged["rows"] == 5 and logged["file"] == "prediction log log"
    train_rows = next(d["rows"] for d in distilled["data"] if d["file"] == "train.csv")
    assert distilled["train_size"] + distilled["validation_size"] == train_rows + 5
    assert distilled["labelled"] < distilled["train_size"]  # the logged texts have no label: the teacher's alone


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_layerwise_distillation_pulls_the_pruned_layers_towards_the_teachers(teachers, data, tmp_path, arch):
    """--hidden-weight: each pruned layer learns the teacher layer's hidden states too; after recovery they are
    closer to the teacher's than those of the same pruned model recovered from the logits alone."""
    from app.lifecycle.distill import hidden_loss, layer_pairs

    moved = {}
    for weight in ("0", "5"):
        repo, output = tmp_path / f"repo{weight}", tmp_path / f"pruned{weight}"
        cli(["prune", str(teachers[arch]), "--heads", "0.5", "--ffn", "0.5", "--importance", "magnitude",
             "--epochs", "2", "--hidden-weight", weight, "--quantize", "none", "--name", "p", "--data",
             str(data / "train.csv"), "--output", str(output), "--model-repository", str(repo), *OPEN_GATE])
        assert read_config(repo / "p" / "1").report["pruning"]["options"]["hidden_weight"] == float(weight)
        tokenizer = AutoTokenizer.from_pretrained(output)
        batch = tokenizer(texts(16, 5), padding=True, return_tensors="pt")
        models = [AutoModelForSequenceClassification.from_pretrained(m).eval() for m in (teachers[arch], output)]
        with torch.no_grad():
            teacher, student = (m(**batch, output_hidden_states=True).hidden_states for m in models)
        moved[weight] = float(hidden_loss(student, teacher, layer_pairs(list(range(3))), batch["attention_mask"]))
    assert moved["5"] < moved["0"], moved


@pytest.mark.parametrize("flags, message", [
    (["--heads", "1.0", "--ffn", "0.5"], "--heads 1.0: the fraction removed must be in [0, 1)"),
    (["--heads", "0.5", "--ffn", "-0.1"], "--ffn -0.1: the fraction removed must be in [0, 1)"),
    (["--heads", "0.9", "--ffn", "0.5"], "would prune every head of a layer"),
    (["--heads", "0.5", "--ffn", "0.5", "--layers", "3"], "keep between 1 and 2"),
])
def test_bad_fractions_are_refused_before_any_work(teachers, data, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["prune", str(teachers["bert"]), *flags, "--name", "p", "--data", str(data / "train.csv"),
             "--model-repository", str(tmp_path)])
    assert exit_info.value.code == 1 and message in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("problem_type, labels", [("multi_label_classification", ["a", "b"]),
                                                  ("regression", ["score"])])
def test_a_teacher_without_a_softmax_head_is_refused(tmp_path, data, capsys, problem_type, labels):
    teacher = make_head_checkpoint(tmp_path / "teacher", labels, problem_type, seed=1)
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as exit_info:
        cli(["prune", str(teacher), "--heads", "0.5", "--ffn", "0.5", "--name", "p", "--data",
             str(data / "train.csv"), "--model-repository", str(repo)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "prune takes a single-label (softmax) classifier" in err
    assert leftovers(repo) == []
