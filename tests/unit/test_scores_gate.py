"""The tolerances and bounds a head gives the export's parity check, its INT8 gate and the golden gate at load."""

from __future__ import annotations

import numpy as np
import pytest

from app.lifecycle.data import GateData
from app.lifecycle.gate import Gate, compare, verdict
from app.scores import BOUND_SAFETY, Head

REGRESSION = Head(("rating",), "regression")
ONE_LOGIT = Head(("LABEL_0",))
SOFTMAX = Head(("a", "b", "c"))


def data(n: int) -> GateData:
    return GateData(texts=[f"text {i}" for i in range(n)], truth=None, source="test")


def test_parity_tolerance_is_relative_for_raw_values_and_absolute_for_probabilities():
    """A regression value of 3000 differs by ~1.7e-3 between two correct fp32 graphs: within 1e-3 relative."""
    values = np.array([[3000.0], [0.2], [-50.0]])
    assert REGRESSION.tolerance(values, 1e-3).ravel().tolist() == pytest.approx([3.0, 1e-3, 0.05])
    assert (np.abs(1.7e-3) <= REGRESSION.tolerance(values, 1e-3)[0]).all()
    probabilities = np.array([[0.9, 0.05, 0.05]])
    assert SOFTMAX.tolerance(probabilities, 1e-3).tolist() == [[1e-3] * 3]
    assert ONE_LOGIT.tolerance(np.array([[0.99]]), 1e-3).tolist() == [[1e-3]]


def test_regression_bound_covers_the_int8_drift_with_a_margin_and_large_values():
    reference = np.array([[1.0], [2.0], [3.0], [5.0]])  # spread 4: 5 % of it is 0.2
    assert REGRESSION.with_bound(reference).bound == pytest.approx(0.2)
    drifted = reference + np.array([[0.0], [0.3], [0.0], [0.0]])
    assert REGRESSION.with_bound(reference, drifted).bound == pytest.approx(BOUND_SAFETY * 0.3)
    # Nearly constant values of ~3000: the bound is the parity tolerance at that magnitude, not 1e-3 absolute.
    large = np.array([[3000.0], [3000.001], [3000.002]])
    bound = REGRESSION.with_bound(large).bound
    assert bound == pytest.approx(3.000002) and REGRESSION.with_bound(large).decisions(large, large + 2e-3)[0].all()
    assert ONE_LOGIT.with_bound(reference) is ONE_LOGIT


def test_one_logit_gate_refuses_a_drift_large_against_the_scores_spread():
    """Scores moving only 0.07 between texts, INT8 off by up to 0.05: every decision is the same side of 0.5, but
    INT8 could reorder the results of a reranker."""
    reference = np.array([[0.60], [0.62], [0.65], [0.67]])
    candidate = reference + np.array([[0.05], [-0.01], [0.0], [0.0]])
    figures = compare(reference, candidate, data(4), ONE_LOGIT)
    assert figures["agreement"] == 1.0 and figures["score_spread"] == pytest.approx(0.07)
    why = verdict(figures, Gate())
    assert why is not None and why.startswith("score drift 0.05 is 71.4% of the fp32 scores' spread 0.07 (> 2%)")
    small = reference + 0.001  # 1.4 % of the spread: passes
    assert verdict(compare(reference, small, data(4), ONE_LOGIT), Gate()) is None
    # A distilled student is not held to it (its teacher is another model): agreement only.
    assert verdict(figures, Gate(), bound_drift=False) is None


def test_regression_gate_refuses_a_drift_large_against_the_values_spread():
    reference = np.array([[0.0], [1.0], [2.0], [6.0]])  # spread 6, bound 0.3
    head = REGRESSION.with_bound(reference)
    candidate = reference + np.array([[0.28], [0.0], [0.0], [0.0]])  # within ±0.3 everywhere: agreement 1.0
    figures = compare(reference, candidate, data(4), head)
    assert figures["agreement"] == 1.0
    assert "4.7% of the fp32 scores' spread 6 (> 2%)" in verdict(figures, Gate())
    assert verdict(compare(reference, reference + 0.1, data(4), head), Gate()) is None


def test_multi_label_and_softmax_heads_keep_their_decision_gate():
    reference = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    figures = compare(reference, reference + 0.01, data(2), SOFTMAX)
    assert "drift_share" not in figures and verdict(figures, Gate()) is None
