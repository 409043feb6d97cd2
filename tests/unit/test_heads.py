"""The classifier head (app.scores.Head) by tables: the pipeline's rule for the score function, scores that stay
finite and warning-free at extreme logits, decisions and drift per head, and bertserve.json recording it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app.repository import Artifact, ModelConfig
from app.scores import Head, pipeline_function
from app.served import ModelMetrics

SOFTMAX = Head(("negative", "neutral", "positive"))
MULTI = Head(("drowsy", "nausea", "headache", "rash"), "multi_label_classification")
ONE_LOGIT = Head(("LABEL_0",))
REGRESSION = Head(("rating",), "regression", bound=0.1)
ARTIFACTS = [Artifact(file="model.onnx", precision="fp32", providers=["cpu"])]


@pytest.mark.parametrize("labels, problem_type, function", [
    # transformers' TextClassificationPipeline.postprocess, in its order
    (1, "regression", "none"),
    (3, "regression", "none"),
    (4, "multi_label_classification", "sigmoid"),
    (1, None, "sigmoid"),
    (1, "single_label_classification", "sigmoid"),  # one logit wins over single_label, as in the pipeline
    (2, None, "softmax"),
    (3, "single_label_classification", "softmax"),
])
def test_the_score_function_follows_the_pipelines_rule(labels, problem_type, function):
    assert pipeline_function(labels, problem_type) == function
    assert Head(tuple(f"L{i}" for i in range(labels)), problem_type).function == function


EXTREME = [[-100.0, 5.0], [1e4, -1e4], [-1e4, -1e4], [1e4, 1e4], [0.0, -0.0], [1e30, -1e30]]


@pytest.mark.parametrize("head", [Head(("a", "b")), Head(("a", "b"), "multi_label_classification"),
                                  Head(("a", "b"), "regression")], ids=["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_heads_scores_stay_finite_and_warning_free_at_extreme_logits(head, dtype):
    logits = np.array(EXTREME, dtype=dtype)
    # Every floating-point error raises but underflow: a score rounding to 0 (exp(-1e4)) is the right answer, and
    # numpy never reports it by default.
    with np.errstate(all="raise", under="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = head.scores(logits)
    assert np.isfinite(scores).all() and scores.dtype == dtype
    if head.single_label:
        assert np.allclose(scores.sum(1), 1.0) and scores[0, 1] == pytest.approx(1.0) and scores[1, 0] == 1.0
    if head.function == "sigmoid":
        assert ((scores >= 0) & (scores <= 1)).all() and scores[0, 0] == pytest.approx(np.exp(-100.0), rel=1e-3)
        assert scores[1].tolist() == [1.0, 0.0] and scores[4].tolist() == [0.5, 0.5]
    if head.function == "none":
        assert (scores == logits).all()


def test_the_one_logit_sigmoid_matches_the_textbook_formula_where_it_is_safe():
    logits = np.linspace(-30, 30, 61).reshape(-1, 1)
    assert np.allclose(ONE_LOGIT.scores(logits), 1 / (1 + np.exp(-logits)), rtol=1e-12, atol=0)


def test_a_request_function_overrides_the_head():
    logits = np.array([[0.0, 1.0, -1.0, 2.0]])
    assert np.allclose(MULTI.scores(logits, "softmax").sum(), 1.0)
    assert (MULTI.scores(logits, "none") == logits).all()
    assert not np.isclose(MULTI.scores(logits).sum(), 1.0)


@pytest.mark.parametrize("head, scores, decided", [
    (SOFTMAX, [[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]], [[False, False, True], [True, False, False]]),
    (MULTI, [[0.9, 0.1, 0.6, 0.5], [0.2, 0.2, 0.2, 0.2]], [[True, False, True, False], [False] * 4]),
    (ONE_LOGIT, [[0.7], [0.3]], [[True], [False]]),
    (REGRESSION, [[3.2], [-1.0]], [[True], [True]]),
])
def test_decide_per_head(head, scores, decided):
    assert head.decide(np.array(scores)).tolist() == decided
    assert [head.chosen(row) for row in scores] == [[i for i, d in enumerate(row) if d] for row in decided]


@pytest.mark.parametrize("head, reference, candidate, agreed, differences, figures", [
    # softmax: the same top label; the difference on the reference's top label
    (SOFTMAX, [[0.2, 0.3, 0.5], [0.4, 0.35, 0.25]], [[0.1, 0.3, 0.6], [0.3, 0.45, 0.25]],
     [True, False], [0.1, 0.1], {"agreement": 0.5, "max_prob_diff": 0.1, "mean_prob_diff": 0.06667}),
    # sigmoid: the same set of labels over 0.5; the largest difference over the labels
    (MULTI, [[0.9, 0.1, 0.6, 0.2], [0.9, 0.1, 0.6, 0.2]], [[0.7, 0.3, 0.55, 0.2], [0.9, 0.1, 0.45, 0.2]],
     [True, False], [0.2, 0.15], {"agreement": 0.5, "max_prob_diff": 0.2, "mean_prob_diff": 0.075}),
    (ONE_LOGIT, [[0.7], [0.3], [0.52]], [[0.9], [0.4], [0.49]],
     [True, True, False], [0.2, 0.1, 0.03], {"agreement": 0.6667, "max_prob_diff": 0.2, "mean_prob_diff": 0.11}),
    # regression: within the recorded bound (0.1)
    (REGRESSION, [[3.0], [-1.0], [10.0]], [[3.05], [-1.5], [10.1]],
     [True, False, True], [0.05, 0.5, 0.1], {"agreement": 0.6667, "max_prob_diff": 0.5, "mean_prob_diff": 0.21667}),
])
def test_decisions_and_drift_per_head(head, reference, candidate, agreed, differences, figures):
    reference, candidate = np.array(reference), np.array(candidate)
    same, diff = head.decisions(reference, candidate)
    assert same.tolist() == agreed and np.allclose(diff, differences)
    assert head.drift(reference, candidate) == pytest.approx(figures)


def test_a_regression_bound_comes_from_the_reference_spread():
    assert Head(("r",), "regression").with_bound(np.array([[0.0], [4.0], [2.0]])).bound == 0.2
    assert Head(("r",), "regression").with_bound(np.array([[1.0], [1.0]])).bound == 1e-3
    assert SOFTMAX.with_bound(np.array([[0.1, 0.2, 0.7]])) is SOFTMAX


def test_an_old_bertserve_json_keeps_softmax():
    old = ModelConfig.model_validate({"labels": ["a", "b"], "max_length": 8,
                                      "artifacts": [a.model_dump() for a in ARTIFACTS]})
    assert old.problem_type is None and old.function is None and old.head.function == "softmax"


@pytest.mark.parametrize("labels, problem_type, bound, function", [
    (["LABEL_0"], None, None, "sigmoid"),
    (["rating"], "regression", 0.05, "none"),
    (["a", "b", "c"], "multi_label_classification", None, "sigmoid"),
])
def test_one_label_and_every_problem_type_are_valid_configs(labels, problem_type, bound, function):
    config = ModelConfig(labels=labels, problem_type=problem_type, function=function, regression_bound=bound,
                         max_length=8, artifacts=ARTIFACTS)
    again = ModelConfig.model_validate_json(config.model_dump_json(exclude_none=True))
    assert again.head == Head(tuple(labels), problem_type, bound) and again.head.function == function


def test_a_recorded_function_that_contradicts_the_head_is_refused():
    with pytest.raises(ValueError, match="function 'softmax' is not the one its head implies"):
        ModelConfig(labels=["a", "b"], problem_type="multi_label_classification", function="softmax", max_length=8,
                    artifacts=ARTIFACTS)


def test_prediction_metrics_count_what_the_head_decides():
    def count(model: str, label: str) -> float:
        return REGISTRY.get_sample_value("bertserve_predictions_total",
                                         {"model": model, "version": "1", "label": label}) or 0.0

    def confidence(model: str) -> float:
        return REGISTRY.get_sample_value("bertserve_prediction_confidence_count",
                                         {"model": model, "version": "1"}) or 0.0

    multi = ModelMetrics("heads-multi", list(MULTI.labels), 1, MULTI)
    multi.observe(np.array([[0.9, 0.1, 0.6, 0.5], [0.2, 0.2, 0.2, 0.2]]), [])
    assert [count("heads-multi", label) for label in MULTI.labels] == [1, 0, 1, 0]
    assert confidence("heads-multi") == 2
    regression = ModelMetrics("heads-regression", ["rating"], 1, REGRESSION)
    regression.observe(np.array([[7.5], [-3.0]]), [])
    assert count("heads-regression", "rating") == 2 and confidence("heads-regression") == 0
