"""Every classifier head served as transformers' text-classification pipeline serves it: tiny random BERT checkpoints
(3-label softmax, 4-label multi-label, one logit, regression), exported with `bertserve export --quantize none`,
served in-process and compared with `pipeline("text-classification", top_k=None)` on the same texts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.cli import main as cli
from app.repository import read_config, read_golden
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.tiny import CORPUS, HEADS, make_head_checkpoint

pytestmark = pytest.mark.slow

TEXTS = CORPUS[:4]
@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Checkpoints and one repository holding each head's exported version (built once for the module)."""
    root = tmp_path_factory.mktemp("heads")
    repo = root / "repo"
    checkpoints = {}
    for seed, (name, (labels, problem_type, _)) in enumerate(HEADS.items()):
        checkpoints[name] = make_head_checkpoint(root / name, labels, problem_type, seed)
        cli(["export", str(checkpoints[name]), "--name", name, "--model-repository", str(repo), "--quantize", "none"])
    return checkpoints, repo


@pytest.fixture(scope="module")
def call(heads):
    yield from in_process(Settings(model_repository=heads[1], poll_interval_s=0, batch_autotune=False, provider="cpu",
                                   log_level="warning"))


def pipeline_answers(checkpoint) -> list[list[dict]]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), top_k=None,
                        device="cpu")
    return classify(TEXTS)


@pytest.mark.parametrize("name", HEADS)
def test_the_version_records_its_head(heads, name):
    labels, problem_type, function = HEADS[name]
    config = read_config(heads[1] / name / "1")
    assert (config.labels, config.problem_type, config.function) == (labels, problem_type, function)
    assert config.head.function == function
    assert (config.regression_bound is not None) == (function == "none")
    golden = read_golden(heads[1] / name / "1", len(labels))
    assert golden is not None and len(golden.probabilities[0]) == len(labels)


@pytest.mark.parametrize("name", HEADS)
def test_answers_match_the_pipeline(heads, call, name):
    r = call("POST", "/predict", json={"inputs": TEXTS, "model": name})
    assert r.status_code == 200, r.text
    served, expected = r.json(), pipeline_answers(heads[0][name])
    for ours, theirs in zip(served, expected, strict=True):
        assert [s["label"] for s in ours] == [s["label"] for s in theirs]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)) <= 1e-3
    _, _, function = HEADS[name]
    if function == "softmax":
        assert all(math.isclose(sum(s["score"] for s in row), 1.0, rel_tol=1e-5) for row in served)
    if name == "multilabel4":  # each label its own probability, best first: not a distribution
        assert all(len(row) == 4 and all(0 < s["score"] < 1 for s in row) for row in served)
        assert any(abs(sum(s["score"] for s in row) - 1) > 0.05 for row in served)
    if name == "regression":  # one raw value under its label name: not squashed into (0, 1)
        assert all(len(row) == 1 and row[0]["label"] == "rating" for row in served)


@pytest.mark.parametrize("name", HEADS)
def test_models_lists_the_head(call, name):
    [described] = call("GET", f"/models/{name}").json()
    assert (described["labels"], described["problem_type"], described["function"]) == HEADS[name]


def test_function_to_apply_still_overrides_the_head(heads, call):
    logits = call("POST", "/predict", json={"inputs": TEXTS[0], "model": "multilabel4", "raw_scores": True}).json()
    soft = call("POST", "/predict", json={"inputs": TEXTS[0], "model": "multilabel4",
                                          "parameters": {"function_to_apply": "softmax"}}).json()[0]
    by_label = {s["label"]: s["score"] for s in logits}
    values = np.array(list(by_label.values()))
    expected = dict(zip(by_label, np.exp(values - values.max()) / np.exp(values - values.max()).sum()))
    assert max(abs(s["score"] - expected[s["label"]]) for s in soft) <= 1e-5


def test_kserve_v2_scores_have_one_column_for_a_one_logit_head(call):
    r = call("POST", "/v2/models/onelogit/infer", json={
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}]})
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["scores"]["shape"] == [2, 1] and all(0 < v < 1 for v in outputs["scores"]["data"])
    assert outputs["label"]["data"] == ["LABEL_0", "LABEL_0"]
    predict = call("POST", "/predict", json={"inputs": TEXTS[:2], "model": "onelogit"}).json()
    assert np.allclose([row[0]["score"] for row in predict], outputs["scores"]["data"], atol=1e-6)


def test_explanations_weigh_the_heads_own_scores(call):
    r = call("POST", "/explain", json={"inputs": TEXTS[0], "model": "multilabel4"})
    assert r.status_code == 200, r.text
    predicted = call("POST", "/predict", json={"inputs": TEXTS[0], "model": "multilabel4"}).json()[0]
    body = r.json()
    assert json.dumps(body)  # plain JSON
    assert body["score"] == pytest.approx(predicted["score"], abs=1e-5) and body["label"] == predicted["label"]


@pytest.mark.parametrize("name", ["multilabel4", "regression"])
def test_the_int8_gate_and_the_golden_gate_at_load_judge_by_the_head(heads, tmp_path, name):
    from app.loader import load_model

    repo = tmp_path / "repo"
    cli(["export", str(heads[0][name]), "--name", name, "--model-repository", str(repo), "--quantize", "int8",
         "--min-agreement", "0", "--max-drift-share", "100"])
    config = read_config(repo / name / "1")
    attempt = config.report["gate"]["attempts"][0]
    assert attempt["passed"] and 0 <= attempt["agreement"] <= 1 and "fp32_accuracy" not in attempt
    assert config.artifacts[0].precision == "int8"
    golden = read_golden(repo / name / "1", len(config.labels))
    trials = load_model(name, 1, repo / name / "1", Settings(provider="cpu", batch_autotune=False)).engine_choice[
        "candidates"]
    assert "model.int8.onnx" in {t["artifact"] for t in trials}
    assert all(t["passed"] and t["agreement"] >= golden.min_agreement for t in trials), trials
    if name == "regression":  # values, not probabilities: the bound comes from their spread, recorded
        assert config.regression_bound and config.report["golden"]["max_prob_diff"] == golden.max_prob_diff
