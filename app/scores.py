"""Scores from logits, and how far one engine's scores drift from a reference: the one place for both, used by
serving (the golden gate at load, shadow agreement, prediction metrics, explanations) and by the model lifecycle
(the export gate).

A model's `Head` says how its logits become scores, by transformers' text-classification pipeline rule
(`TextClassificationPipeline.postprocess`): problem_type "regression" -> none; "multi_label_classification" or a
single logit -> sigmoid; otherwise (single-label, two or more labels) -> softmax. What counts as the same decision
follows the function: softmax -> the same top label; sigmoid -> the same set of labels over 0.5; none -> values
within an absolute bound. Raw values (regression) are compared relative to their magnitude where two correct engines
may differ by float32 rounding (`Head.tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

ScoreFunction = Literal["softmax", "sigmoid", "none"]
ProblemType = Literal["single_label_classification", "multi_label_classification", "regression"]
HeadKind = Literal["single-label", "multi-label", "one-logit", "regression"]
# How a long text's windows (truncate false) make its one answer: the mean of their scores, each label's highest
# score (a reranker: the best window, MaxP), or the first window's (what truncate true reads, with a stride).
WindowAggregation = Literal["mean", "max", "first"]

THRESHOLD = 0.5  # a sigmoid head's label is chosen when its score is over this
REGRESSION_BOUND = 0.1  # a regression head's agreement bound when its export recorded none
# A regression head's recorded bound: 5 % of the fp32 values' spread on the gate texts, and at least BOUND_SAFETY
# times the drift its published INT8 showed there (dynamic INT8 drifts more on texts the gate never saw: 1.6x on a
# tiny ModernBERT), and never under the parity tolerance at the values' magnitude.
BOUND_SHARE, BOUND_SAFETY = 0.05, 2.5


def aggregate(scores: np.ndarray, counts: list[int], how: WindowAggregation) -> np.ndarray:
    """One row per text from its consecutive `counts` rows of window scores (already through the score function:
    the mean of probabilities, not of logits)."""
    bounds = np.cumsum([0, *counts])
    if how == "first":
        return scores[bounds[:-1]]
    reduce = np.mean if how == "mean" else np.max
    return np.stack([reduce(scores[a:b], axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Stable for any finite logit: exp of a non-positive number never overflows (np.exp(1e4) would, and warn)."""
    small = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + small), small / (1.0 + small)).astype(logits.dtype, copy=False)


def apply_function(logits: np.ndarray, function: ScoreFunction) -> np.ndarray:
    """Scores from logits, row-wise ([n, labels])."""
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return sigmoid(logits)
    return logits


def pipeline_function(num_labels: int, problem_type: str | None) -> ScoreFunction:
    """The score function transformers' text-classification pipeline applies by default to such a head."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def spread(scores: np.ndarray) -> float:
    """How far scores move between texts: the largest minus the smallest."""
    return float(scores.max() - scores.min()) if scores.size else 0.0


def drift(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Share of equal decisions (top label) and the largest and mean probability differences (a softmax head's
    figures; Head.drift gives any head's)."""
    diff = np.abs(reference - candidate)
    return {
        "agreement": round(float((reference.argmax(1) == candidate.argmax(1)).mean()), 4),
        "max_prob_diff": round(float(diff.max()), 4),
        "mean_prob_diff": round(float(diff.mean()), 5),
    }


def decisions(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row by row: whether the candidate's top label is the reference's, and the absolute difference between the
    two probabilities of the reference's top label (a softmax head's shadow figures; Head.decisions: any head's)."""
    top = reference.argmax(1)
    rows = np.arange(len(reference))
    return candidate.argmax(1) == top, np.abs(reference[rows, top] - candidate[rows, top])


@dataclass(frozen=True)
class Head:
    """A classifier's head: its labels (id2label order), problem_type, the score function derived from both, and,
    for a regression head, the absolute difference within which two values count as the same decision."""

    labels: tuple[str, ...]
    problem_type: ProblemType | None = None
    bound: float | None = None

    @cached_property  # read per request and per row of the metrics: derived once
    def function(self) -> ScoreFunction:
        return pipeline_function(len(self.labels), self.problem_type)

    @property
    def single_label(self) -> bool:
        """Each text gets exactly one label, the top one (softmax): decisions are class labels, as in accuracy."""
        return self.function == "softmax"

    @property
    def kind(self) -> HeadKind:
        """What the head answers, in words (evaluate's figures, `bertserve models`)."""
        if self.single_label:
            return "single-label"
        if self.function == "none":
            return "regression"
        return "multi-label" if self.problem_type == "multi_label_classification" else "one-logit"

    def scores(self, logits: np.ndarray, function: ScoreFunction | None = None) -> np.ndarray:
        """Scores [n, labels]: the head's function, or `function` when a request asks for another."""
        return apply_function(logits, function or self.function)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """The labels chosen per row of the head's scores, [n, labels] booleans: the top one (softmax), those over
        0.5 (sigmoid), or every one (a regression value is always answered)."""
        if self.single_label:
            return np.arange(scores.shape[1]) == scores.argmax(1)[:, None]
        if self.function == "sigmoid":
            return scores > THRESHOLD
        return np.ones(scores.shape, dtype=bool)

    def chosen(self, row: list[float]) -> list[int]:
        """decide() for one row in plain Python (the per-request metrics: numpy's call cost dominates there)."""
        if self.single_label:
            return [max(range(len(row)), key=row.__getitem__)]
        if self.function == "sigmoid":
            return [i for i, value in enumerate(row) if value > THRESHOLD]
        return list(range(len(row)))

    def decisions(self, reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row by row: whether the candidate decides as the reference does, and how far its scores are (softmax:
        on the reference's top label; otherwise: the largest difference over the labels)."""
        if self.single_label:
            return decisions(reference, candidate)
        diff = np.abs(reference - candidate).max(1)
        if self.function == "sigmoid":
            return (self.decide(reference) == self.decide(candidate)).all(1), diff
        return diff <= (REGRESSION_BOUND if self.bound is None else self.bound), diff

    def drift(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
        """Share of equal decisions and the largest and mean score differences."""
        if self.single_label:
            return drift(reference, candidate)
        agreed, _ = self.decisions(reference, candidate)
        diff = np.abs(reference - candidate)
        return {
            "agreement": round(float(agreed.mean()), 4),
            "max_prob_diff": round(float(diff.max()), 4),
            "mean_prob_diff": round(float(diff.mean()), 5),
        }

    @property
    def one_value(self) -> bool:
        """One score per text (one logit, or regression): what matters is the value itself and how texts rank by it,
        not a decision, so the INT8 gate also bounds its drift (app.lifecycle.gate)."""
        return self.function == "none" or len(self.labels) == 1

    def tolerance(self, reference: np.ndarray, absolute: float) -> np.ndarray:
        """The largest acceptable difference per score between two fp32 engines: `absolute` for probabilities; for
        raw values, `absolute` times max(1, |value|) (float32 keeps ~7 digits: a value of 3000 differs by ~2e-3
        between two correct graphs)."""
        if self.function != "none":
            return np.full(reference.shape, absolute, dtype=np.float64)
        return absolute * np.maximum(1.0, np.abs(reference.astype(np.float64)))

    def with_bound(self, reference: np.ndarray, candidate: np.ndarray | None = None, floor: float = 1e-3) -> Head:
        """A regression head with its agreement bound, recorded by the export: BOUND_SHARE of the fp32 reference
        values' spread, at least BOUND_SAFETY times the largest drift of `candidate` (the published INT8's values),
        and at least the parity tolerance (`floor` relative to the values' magnitude). Other heads need none."""
        if self.function != "none":
            return self
        bound = max(BOUND_SHARE * spread(reference), float(self.tolerance(reference, floor).max(initial=floor)))
        if candidate is not None:
            bound = max(bound, BOUND_SAFETY * float(np.abs(reference - candidate).max(initial=0.0)))
        return Head(self.labels, self.problem_type, round(bound, 6))
