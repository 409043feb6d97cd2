"""Classification figures (accuracy, macro-F1, per class, confusion) shared by train, distill, the export gate and
evaluate; evaluate's multi-label and regression figures. Scores themselves (a head's function, decisions, drift)
are app.scores."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def classification_figures(truth: list[int], predicted: list[int], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = truth)."""
    indices = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=indices, zero_division=0
    )
    return {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(float(f1_score(truth, predicted, labels=indices, average="macro", zero_division=0)), 4),
        "per_class": {
            label: {
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(truth, predicted, labels=indices).tolist(),
    }


def format_confusion(matrix: list[list[int]], labels: list[str]) -> str:
    width = max(8, *(len(lab) for lab in labels)) + 1
    lines = ["truth \\ predicted".ljust(width + 8) + "".join(lab.rjust(width) for lab in labels)]
    for label, row in zip(labels, matrix):
        lines.append(label.ljust(width + 8) + "".join(str(n).rjust(width) for n in row))
    return "\n".join(lines)


def multilabel_figures(truth: np.ndarray, decided: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """A multi-label head's figures from [n, labels] booleans: exact-set accuracy (the labels over 0.5 are exactly
    the row's labels), macro- and micro-F1, per-label precision/recall/F1/support."""
    precision, recall, f1, support = precision_recall_fscore_support(truth, decided, zero_division=0)
    return {
        "accuracy": round(float((truth == decided).all(1).mean()), 4),
        "macro_f1": round(float(f1_score(truth, decided, average="macro", zero_division=0)), 4),
        "micro_f1": round(float(f1_score(truth, decided, average="micro", zero_division=0)), 4),
        "per_class": {
            label: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                    "f1": round(float(f1[i]), 4), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
    }


def regression_figures(truth: np.ndarray, values: np.ndarray, within: np.ndarray) -> dict[str, Any]:
    """A regression head's figures: mean and largest absolute error, and the share of rows within the head's bound
    (`within`: app.scores.Head.decisions)."""
    error = np.abs(truth - values)
    return {"mean_abs_error": round(float(error.mean()), 5), "max_abs_error": round(float(error.max()), 5),
            "within_bound": round(float(within.mean()), 4)}
