"""Scores from logits, and how far one engine's probabilities drift from a reference: the one place for both,
used by serving (the golden gate at load) and by the model lifecycle (the export gate)."""

from __future__ import annotations

from typing import Literal

import numpy as np

ScoreFunction = Literal["softmax", "sigmoid", "none"]


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def apply_function(logits: np.ndarray, function: ScoreFunction) -> np.ndarray:
    """Scores from logits, row-wise ([n, labels])."""
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def drift(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Share of equal decisions (top label) and the largest and mean probability differences."""
    diff = np.abs(reference - candidate)
    return {
        "agreement": round(float((reference.argmax(1) == candidate.argmax(1)).mean()), 4),
        "max_prob_diff": round(float(diff.max()), 4),
        "mean_prob_diff": round(float(diff.mean()), 5),
    }


def decisions(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row by row: whether the candidate's top label is the reference's, and the absolute difference between the
    two probabilities of the reference's top label (the shadow comparison's figures; drift() aggregates them)."""
    top = reference.argmax(1)
    rows = np.arange(len(reference))
    return candidate.argmax(1) == top, np.abs(reference[rows, top] - candidate[rows, top])
