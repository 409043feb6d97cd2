"""The accuracy gate: how far a quantized artifact's decisions and scores drift from the fp32 reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.lifecycle.scores import classification_figures
from app.scores import drift


@dataclass
class Gate:
    min_agreement: float = 0.97
    max_accuracy_loss: float = 0.01


@dataclass
class GateData:
    texts: list[str]
    truth: list[int] | None  # class indices, when the evaluation data has labels
    source: str  # where the texts came from, for the report


def compare(reference: np.ndarray, candidate: np.ndarray, data: GateData, labels: list[str]) -> dict[str, Any]:
    """Decision agreement, probability drift and, with labels, accuracy / macro-F1 of both."""
    figures: dict[str, Any] = drift(reference, candidate)
    if data.truth is not None:
        for key, probs in (("fp32", reference), ("candidate", candidate)):
            scored = classification_figures(data.truth, probs.argmax(1).tolist(), labels)
            figures[f"{key}_accuracy"], figures[f"{key}_macro_f1"] = scored["accuracy"], scored["macro_f1"]
    return figures


def verdict(figures: dict[str, Any], gate: Gate) -> str | None:
    """None when the figures pass, else why not."""
    if figures["agreement"] < gate.min_agreement:
        return f"agreement {figures['agreement']:.4f} < {gate.min_agreement}"
    if "fp32_accuracy" in figures and figures["fp32_accuracy"] - figures["candidate_accuracy"] > gate.max_accuracy_loss:
        return (f"accuracy {figures['candidate_accuracy']:.4f} is more than {gate.max_accuracy_loss} below "
                f"fp32 {figures['fp32_accuracy']:.4f}")
    return None
