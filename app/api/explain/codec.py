"""Explanation codec: requests validated from raw JSON bytes in one pass, explanations shaped for the wire. No
routing here."""

from __future__ import annotations

from typing import Any

from app.api.predict.codec import ranked
from app.errors import M, parse_json, validation_message
from app.inference import Explanation


def parse(schema: type[M], body: bytes) -> M:
    return parse_json(schema, body, _message)


def _message(errors: list) -> str:
    # A pair ([a, b] or {"text", "text_pair"}) where a text goes: said plainly. Occlusion weighs the words of one
    # text; pairs are classified by /predict but not explained.
    pairs = [e for e in errors if e["type"] == "string_type" and isinstance(e["input"], list | dict)]
    if pairs:
        errors = [{**pairs[0], "msg": "explanations take single texts; text pairs are not explained"}]
    return validation_message(errors)


def encode_explanation(text: str, explanation: Explanation) -> dict[str, Any]:
    labels = explanation.served.config.labels
    return {
        "label": labels[explanation.label],
        "score": float(explanation.probabilities[explanation.label]),
        "features": [
            {"start": f.start, "end": f.end, "text": text[f.start:f.end], "weight": w}
            for f, w in zip(explanation.features, explanation.weights)
        ],
        "read": explanation.read,
    }


def encode_prediction(explanation: Explanation) -> list[dict[str, Any]]:
    return ranked(explanation.served.config.labels, explanation.probabilities, None)
