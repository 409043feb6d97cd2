"""Text pairs through the lifecycle, on tiny random BERT checkpoints (type ids) trained for a few steps: `train
--text-pair-column` (NLI-style) and `--one-logit` (a reranker), `export` (golden pairs, parity, INT8 gate), the
golden gate at load fed pairs, and `evaluate` on a pair CSV. Real torch, optimum and onnxruntime; seconds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from app.cli import main as cli
from app.repository import read_config, read_golden
from app.settings import Settings
from tests.support.tiny import CORPUS, LABELS, make_tiny_checkpoint

pytestmark = pytest.mark.slow

NLI = ["contradiction", "entailment", "neutral"]
PAIRS = [(a.replace(",", ""), b.replace(",", "")) for a in CORPUS for b in CORPUS]  # 36 pairs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny BERT with its type embeddings and classifier made larger than their random init, so a pair's
    type ids (and the scores) clearly matter."""
    import torch
    from transformers import AutoModelForSequenceClassification

    path = make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "bert", "bert")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.bert.embeddings.token_type_embeddings.weight.mul_(50)
        model.classifier.weight.mul_(20)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    with (folder / "nli.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["premise", "hypothesis", "label"])
        writer.writerows((a, b, NLI[i % 3]) for i, (a, b) in enumerate(PAIRS))
    with (folder / "rerank.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["query", "document", "relevance"])
        writer.writerows((a, b, int(a == b or i % 3 == 0)) for i, (a, b) in enumerate(PAIRS))
    return folder


def reference(checkpoint, pairs, pair_ids=True):
    """The checkpoint's logits as transformers computes them on pairs (token_type_ids, or without them)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", padding=True,
                      return_tensors="pt")
    if not pair_ids:
        del batch["token_type_ids"]
    with torch.no_grad():
        return AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()(**batch).logits.numpy()


def test_a_pair_classifier_is_trained_exported_proven_and_evaluated_on_pairs(tmp_path, base, data, capsys):
    from app.loader import load_model

    output, repo = tmp_path / "nli", tmp_path / "repo"
    cli(["train", "--data", str(data / "nli.csv"), "--text-column", "premise", "--text-pair-column", "hypothesis",
         "--base", str(base), "--output", str(output), "--epochs", "1"])
    report = json.loads((output / "report.json").read_text())
    assert report["labels"] == NLI and report["pairs"] is True and report["one_logit"] is False

    cli(["export", str(output), "--name", "nli", "--model-repository", str(repo), "--eval-data",
         str(data / "nli.csv"), "--text-column", "premise", "--text-pair-column", "hypothesis",
         "--min-agreement", "0", "--max-accuracy-loss", "1"])
    path = repo / "nli" / "1"
    config = read_config(path)
    assert config.labels == NLI and config.function == "softmax"
    assert config.report["parity_max_prob_diff"] <= 1e-3  # the fp32 graph, fed pairs with their type ids
    assert "fp32_accuracy" in config.report["gate"]["attempts"][0]  # labelled pairs: accuracy in the INT8 gate
    assert (path / "golden.json").read_text().startswith('{"texts":[["')  # pairs in JSON: two-string lists
    golden = read_golden(path, 3)
    assert golden.texts == PAIRS
    expected = reference(output, PAIRS)
    probs = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(golden.probabilities, probs / probs.sum(1, keepdims=True), atol=1e-5)
    # the second text's type ids matter to this model: golden outputs without them would be another model's
    assert np.abs(reference(output, PAIRS, pair_ids=False) - expected).max() > 1e-3

    # the golden gate at load feeds the pairs as pairs: each engine passes
    model = load_model("nli", 1, path, Settings(provider="cpu", batch_autotune=False))
    trials = model.describe()["engine"]["candidates"]
    assert trials and all(t["passed"] and "agreement" in t for t in trials)  # proven on the pairs, not skipped

    capsys.readouterr()
    cli(["evaluate", "nli", "--data", str(data / "nli.csv"), "--text-column", "premise", "--text-pair-column",
         "hypothesis", "--model-repository", str(repo), "--provider", "cpu"])
    out = capsys.readouterr().out
    assert "on 36 pairs from" in out and "a single-label head (softmax)" in out
    from app.lifecycle.runner import probabilities

    served, _ = probabilities(model, PAIRS)  # the same engine, through the same serving code
    accuracy = float((served.argmax(1) == np.array([i % 3 for i in range(36)])).mean())
    assert f"accuracy {accuracy:.4f}" in out


def test_a_one_logit_reranker_is_trained_with_binary_cross_entropy_and_served_with_sigmoid(tmp_path, base, data,
                                                                                            capsys):
    """R's build: train --one-logit on (query, document, relevance), export with no evaluation data (its golden
    outputs are then built-in pairs), evaluate on 0/1 labels."""
    from transformers import AutoConfig, AutoTokenizer

    from app.lifecycle.golden import pytorch_probabilities

    output, repo = tmp_path / "reranker", tmp_path / "repo"
    cli(["train", "--data", str(data / "rerank.csv"), "--text-column", "query", "--text-pair-column", "document",
         "--label-column", "relevance", "--one-logit", "--base", str(base), "--output", str(output),
         "--epochs", "2"])
    hf = AutoConfig.from_pretrained(output)
    assert (hf.num_labels, hf.id2label, hf.problem_type) == (1, {0: "relevance"}, None)
    report = json.loads((output / "report.json").read_text())
    assert report["one_logit"] is True and set(report["validation"]["per_class"]) == {"0", "1"}

    cli(["export", str(output), "--name", "reranker", "--model-repository", str(repo), "--quantize", "none"])
    path = repo / "reranker" / "1"
    config = read_config(path)
    assert (config.labels, config.problem_type, config.function) == (["relevance"], None, "sigmoid")
    golden = read_golden(path, 1)
    assert all(isinstance(t, tuple) and len(t) == 2 for t in golden.texts)  # built-in sample pairs
    assert config.report["gate"]["data"] == "built-in sample pairs"

    capsys.readouterr()
    cli(["evaluate", "reranker", "--data", str(data / "rerank.csv"), "--text-column", "query", "--text-pair-column",
         "document", "--label-column", "relevance", "--model-repository", str(repo), "--provider", "cpu"])
    out = capsys.readouterr().out
    assert "a one-logit head (sigmoid)" in out
    scores = pytorch_probabilities(output, AutoTokenizer.from_pretrained(output), PAIRS, config.max_length)
    truth = np.array([int(a == b or i % 3 == 0) for i, (a, b) in enumerate(PAIRS)])
    assert f"accuracy {float(((scores[:, 0] > 0.5) == truth).mean()):.4f}" in out


def test_one_logit_training_refuses_labels_other_than_0_and_1(tmp_path, base, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("query,document,relevance\n" + "".join(f"q{i},d{i},{LABELS[i % 3]}\n" for i in range(12)))
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--data", str(path), "--text-column", "query", "--text-pair-column", "document",
             "--label-column", "relevance", "--one-logit", "--base", str(base), "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    assert "--one-logit trains on 0/1 labels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
