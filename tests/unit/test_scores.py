"""Scores from logits and the drift figures, by tables."""

from __future__ import annotations

import numpy as np
import pytest

from app.scores import apply_function, decisions, drift, softmax


def test_softmax_rows_sum_to_one_and_survive_large_logits():
    probabilities = softmax(np.array([[0.0, 0.0], [1000.0, 0.0], [-5.0, 5.0]]))
    assert np.allclose(probabilities.sum(1), 1.0) and np.isfinite(probabilities).all()
    assert np.allclose(probabilities[0], [0.5, 0.5]) and probabilities[1, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("function, expected", [
    ("softmax", [[0.5, 0.5], [1 / (1 + np.e ** -2), 1 / (1 + np.e ** 2)]]),
    ("sigmoid", [[0.5, 0.5], [1 / (1 + np.e ** -1), 1 / (1 + np.e)]]),
    ("none", [[0.0, 0.0], [1.0, -1.0]]),
])
def test_score_functions(function, expected):
    assert np.allclose(apply_function(np.array([[0.0, 0.0], [1.0, -1.0]]), function), expected)


def test_drift_and_decisions_agree_on_the_same_rows():
    reference = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    candidate = np.array([[0.8, 0.2], [0.55, 0.45], [0.7, 0.3]])
    assert drift(reference, candidate) == {"agreement": round(2 / 3, 4), "max_prob_diff": 0.15, "mean_prob_diff": 0.08333}
    agreed, differences = decisions(reference, candidate)
    assert agreed.tolist() == [True, False, True] and np.allclose(differences, [0.1, 0.15, 0.0])


@pytest.mark.parametrize("labels, problem_type, single_label, kind", [
    (("neg", "pos"), None, True, "single-label"),
    (("neg", "pos"), "single_label_classification", True, "single-label"),
    (("a", "b", "c"), "multi_label_classification", False, "multi-label"),
    (("relevant",), None, False, "one-logit"),
    (("score",), "regression", False, "regression"),
])
def test_a_head_says_whether_it_is_single_label_and_its_kind(labels, problem_type, single_label, kind):
    from app.scores import Head

    head = Head(labels, problem_type)
    assert (head.single_label, head.kind) == (single_label, kind)
