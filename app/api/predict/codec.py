"""/predict codec: the request validated from raw JSON bytes in one pass, and scores shaped as ranked labels. No
HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.api.predict.schemas import PredictRequest
from app.errors import parse_json, validation_message

TEXTS_ONLY = "list[constrained-str]"  # the texts-only branch of `inputs`: the mixed list's errors say more
INPUT_FORMS = 'a text, a pair (a list of two texts, or {"text": ..., "text_pair": ...})'


def parse_predict(body: bytes) -> PredictRequest:
    return parse_json(PredictRequest, body, _message)


def _message(errors: list) -> str:
    """Pydantic's errors in one line; for `inputs`, only the union branch the value's JSON type picks (pydantic
    reports every branch: a three-string pair would read "Input should be a valid string"). Error path only."""
    if not all(e["loc"][:1] == ("inputs",) and len(e["loc"]) > 1 for e in errors):
        return validation_message(errors)
    values = {e["loc"][:-1]: e["input"] for e in errors if e["loc"][-1] == "constrained-str"}  # a value per place
    kept = []
    for e in errors:
        loc = e["loc"]
        if loc[1] == TEXTS_ONLY or not _picks(loc[1], values.get(loc[:1])) or (
                len(loc) > 3 and not _picks(loc[3], values.get(loc[:3]))):
            continue
        if loc[3:4] and loc[3].startswith("tuple[") and e["type"] in ("too_long", "too_short", "missing"):
            return f"inputs[{loc[2]}]: a pair is a list of exactly two texts"
        kept.append(e)
    if not kept:
        where = next((f"inputs[{loc[2]}]" for loc in values if len(loc) == 3), "inputs")
        return f"{where}: each input is {INPUT_FORMS}" + ("" if where != "inputs" else ", or a list of them")
    return validation_message(kept)


def _picks(tag: str, value: Any) -> bool:
    """Whether the union branch `tag` is the one for this JSON value."""
    if isinstance(value, str):
        return tag.startswith("constrained-str")
    if isinstance(value, list):
        return tag.startswith(("list[", "tuple["))
    return isinstance(value, dict) and "TextPair" in tag


def ranked(labels: list[str], scores: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
    """Every label (or the top_k), best first: the Hugging Face text-classification shape. Plain Python: for a
    handful of labels numpy's per-call cost (and its GIL release) is most of the work."""
    pairs = sorted(zip(scores.tolist(), labels), key=lambda pair: -pair[0])[:top_k]
    return [{"label": label, "score": score} for score, label in pairs]


def encode_predict(req: PredictRequest, labels: list[str], scores: np.ndarray) -> Any:
    """One ranked list for a single text (or pair); a list of them for a batch, or whenever the Hugging Face
    `parameters` form was used (that API answers a list even for one text)."""
    top_k = req.parameters.top_k if req.parameters else None
    answers = [ranked(labels, row, top_k) for row in scores]
    return answers[0] if isinstance(req.inputs, (str, tuple)) and req.parameters is None else answers
