"""The accuracy gate: how far a quantized artifact's decisions and scores drift from the fp32 reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.lifecycle.figures import classification_figures
from app.scores import Head


@dataclass
class Gate:
    min_agreement: float = 0.97
    max_accuracy_loss: float = 0.01


@dataclass
class GateData:
    texts: list[str]
    truth: list[int] | None  # class indices, when the evaluation data has labels
    source: str  # where the texts came from, for the report


def compare(reference: np.ndarray, candidate: np.ndarray, data: GateData, head: Head) -> dict[str, Any]:
    """Decision agreement and score drift by the model's head (app.scores.Head) and, with labels for a single-label
    (softmax) head, accuracy / macro-F1 of both."""
    figures: dict[str, Any] = head.drift(reference, candidate)
    if data.truth is not None and head.function == "softmax":
        for key, probs in (("fp32", reference), ("candidate", candidate)):
            scored = classification_figures(data.truth, probs.argmax(1).tolist(), list(head.labels))
            figures[f"{key}_accuracy"], figures[f"{key}_macro_f1"] = scored["accuracy"], scored["macro_f1"]
    return figures


def verdict(figures: dict[str, Any], gate: Gate, reference: str = "fp32") -> str | None:
    """None when the figures pass, else why not (`reference`: what the candidate was compared with)."""
    if figures["agreement"] < gate.min_agreement:
        return f"agreement {figures['agreement']:.4f} < {gate.min_agreement}"
    if "fp32_accuracy" in figures and figures["fp32_accuracy"] - figures["candidate_accuracy"] > gate.max_accuracy_loss:
        return (f"accuracy {figures['candidate_accuracy']:.4f} is more than {gate.max_accuracy_loss} below "
                f"{reference} {figures['fp32_accuracy']:.4f}")
    return None


@dataclass
class TeacherReference:
    """Distillation: the teacher's fp32 scores on the gate data. The student's fp32 model is held to them
    (decision agreement, and accuracy loss when labels are known) instead of to itself."""

    source: str
    probabilities: np.ndarray
    gate: Gate


def judge_student(teacher: TeacherReference, student: np.ndarray, data: GateData, head: Head) -> dict[str, Any]:
    """The student's figures against its teacher, with the gate's verdict."""
    figures = compare(teacher.probabilities, student, data, head)
    why = verdict(figures, teacher.gate, reference="the teacher's")
    named = {k.replace("fp32_", "teacher_").replace("candidate_", "student_"): v for k, v in figures.items()}
    return {**asdict(teacher.gate), "teacher": teacher.source, **named, "passed": why is None, "why": why}
