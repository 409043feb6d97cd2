"""The accuracy gate: how far a quantized artifact's decisions and scores drift from the fp32 reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from app.lifecycle.data import GateData
from app.lifecycle.figures import classification_figures
from app.scores import Head, spread


@dataclass
class Gate:
    min_agreement: float = 0.97
    max_accuracy_loss: float = 0.01
    # A one-value head (one logit: a reranker / cross-encoder; regression): INT8's largest score drift on the gate
    # texts, as a share of how far the fp32 scores move between those texts. At 2 %, INT8 cannot swap two texts whose
    # scores are more than 4 % of that spread apart, and a regression drift stays 2.5x inside its recorded bound
    # (app.scores.BOUND_SHARE, 5 % of the spread).
    max_drift_share: float = 0.02


def compare(reference: np.ndarray, candidate: np.ndarray, data: GateData, head: Head) -> dict[str, Any]:
    """Decision agreement and score drift by the model's head (app.scores.Head) and, with labels for a single-label
    (softmax) head, accuracy / macro-F1 of both."""
    figures: dict[str, Any] = head.drift(reference, candidate)
    if head.one_value:
        moved = spread(reference)
        figures["score_spread"] = float(f"{moved:.4g}")
        drifted = float(np.abs(reference - candidate).max(initial=0.0))
        figures["drift_share"] = round(drifted / max(moved, 1e-9), 4)  # finite: the report is JSON
    if data.truth is not None and head.single_label:
        for key, probs in (("fp32", reference), ("candidate", candidate)):
            scored = classification_figures(data.truth, probs.argmax(1).tolist(), list(head.labels))
            figures[f"{key}_accuracy"], figures[f"{key}_macro_f1"] = scored["accuracy"], scored["macro_f1"]
    return figures


def verdict(figures: dict[str, Any], gate: Gate, reference: str = "fp32", bound_drift: bool = True) -> str | None:
    """None when the figures pass, else why not (`reference`: what the candidate was compared with; `bound_drift`:
    hold a one-value head's drift to gate.max_drift_share, as for a quantized artifact, not a distilled student)."""
    if figures["agreement"] < gate.min_agreement:
        return f"agreement {figures['agreement']:.4f} < {gate.min_agreement}"
    if bound_drift and figures.get("drift_share", 0.0) > gate.max_drift_share:
        return (f"score drift {figures['max_prob_diff']:.4g} is {figures['drift_share']:.1%} of the {reference} "
                f"scores' spread {figures['score_spread']:.4g} (> {gate.max_drift_share:.0%})")
    if "fp32_accuracy" in figures and figures["fp32_accuracy"] - figures["candidate_accuracy"] > gate.max_accuracy_loss:
        return (f"accuracy {figures['candidate_accuracy']:.4f} is more than {gate.max_accuracy_loss} below "
                f"{reference} {figures['fp32_accuracy']:.4f}")
    return None


# A token classifier's INT8 gate (app.lifecycle.export): entity-level micro-F1 of INT8's entities against fp32's
# on the gate texts, at least this unless --min-agreement says otherwise (sequence models: Gate.min_agreement).
TOKEN_MIN_ENTITY_F1 = 0.95


def token_tags(flat: np.ndarray, encoded: list, labels: list[str]) -> list[list[str]]:
    """Per text, the argmax label of each of its tokens that is not special (app.tokens.score_token_texts' rows,
    one per token of each text in order, split back by the texts' encodings)."""
    tags, start = [], 0
    for one in encoded:
        count = len(one.ids)
        special = one.special or [0] * count
        best = flat[start:start + count].argmax(1)
        tags.append([labels[int(best[i])] for i in range(count) if not special[i]])
        start += count
    if start != len(flat):
        raise ValueError(f"{len(flat)} token rows for {start} tokens")
    return tags


def compare_entities(reference: np.ndarray, candidate: np.ndarray, encoded: list, head: Head) -> dict[str, Any]:
    """A token classifier's INT8 against fp32: token-label agreement (every token, as Head.drift) and, by seqeval
    (app.lifecycle.evaluate.token_figures, default mode) on the BIO tags of the texts' tokens (special tokens left
    out), the entity micro precision / recall / F1 of the candidate's entities with fp32's as the truth. With no
    entity on either side the entity F1 is 1.0 (nothing differs)."""
    from seqeval.metrics.sequence_labeling import get_entities

    from app.lifecycle.evaluate import token_figures

    figures: dict[str, Any] = head.drift(reference, candidate)
    truth = token_tags(reference, encoded, list(head.labels))
    predicted = token_tags(candidate, encoded, list(head.labels))
    scored = token_figures(truth, predicted)
    none = not get_entities(truth) and not get_entities(predicted)
    figures.update({
        "token_agreement": figures["agreement"],
        "entity_f1": 1.0 if none else scored["micro_f1"],
        "entity_precision": 1.0 if none else scored["precision"],
        "entity_recall": 1.0 if none else scored["recall"],
        "fp32_entities": len(get_entities(truth)),
        "candidate_entities": len(get_entities(predicted)),
    })
    return figures


def entity_verdict(figures: dict[str, Any], gate: Gate) -> str | None:
    """None when a token classifier's candidate passes (entity F1 against fp32 >= gate.min_agreement), else why."""
    if figures["entity_f1"] < gate.min_agreement:
        return (f"entity F1 {figures['entity_f1']:.4f} against fp32's entities < {gate.min_agreement} (token "
                f"agreement {figures['token_agreement']:.4f})")
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
    why = verdict(figures, teacher.gate, reference="the teacher's", bound_drift=False)
    named = {k.replace("fp32_", "teacher_").replace("candidate_", "student_"): v for k, v in figures.items()}
    return {**asdict(teacher.gate), "teacher": teacher.source, **named, "passed": why is None, "why": why}
