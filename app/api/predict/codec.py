"""/predict codec: the request validated from raw JSON bytes in one pass, and scores shaped as ranked labels. No
HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ValidationError

from app.api.predict.schemas import PredictRequest
from app.errors import InvalidInput, validation_message


def parse_predict(body: bytes) -> PredictRequest:
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(validation_message(exc.errors())) from None


def ranked(labels: list[str], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    """Every label (or the top_k), best first: the Hugging Face text-classification shape. Plain Python: for a
    handful of labels numpy's per-call cost (and its GIL release) is most of the work."""
    pairs = sorted(zip(scores.tolist(), labels), key=lambda pair: -pair[0])[:top_k]
    return [{"label": label, "score": score} for score, label in pairs]


def encode_predict(req: PredictRequest, labels: list[str], scores: np.ndarray) -> Any:
    """One ranked list for a single text; a list of them for a batch, or whenever the Hugging Face `parameters`
    form was used (that API answers a list even for one text)."""
    top_k = req.parameters.top_k if req.parameters else None
    answers = [ranked(labels, row, top_k) for row in scores]
    return answers[0] if isinstance(req.inputs, str) and req.parameters is None else answers
