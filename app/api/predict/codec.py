"""/predict codec: the request validated from raw JSON bytes in one pass, and scores shaped as ranked labels. No
HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np

from app import tokens, zeroshot
from app.api.predict.schemas import PredictRequest
from app.errors import InvalidInput, parse_json, validation_message

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


# ---- zero-shot classification (parameters.candidate_labels; the rules are app.zeroshot's) ----

def zero_shot(req: PredictRequest) -> bool:
    """Whether the request asks for zero-shot classification; a 422 for options that do not go with it (or that
    go with it only)."""
    params = req.parameters
    if params is None or params.candidate_labels is None:
        if params is not None and (params.hypothesis_template is not None or params.multi_label is not None):
            raise InvalidInput("parameters.hypothesis_template and parameters.multi_label apply to zero-shot "
                               "classification only: send parameters.candidate_labels too")
        return False
    if isinstance(req.inputs, tuple) or (isinstance(req.inputs, list) and
                                         any(not isinstance(text, str) for text in req.inputs)):
        raise InvalidInput("inputs: zero-shot classification takes texts, not pairs (each text is paired with "
                           "each candidate label's hypothesis)")
    if token_options_given(req):
        raise InvalidInput("parameters.aggregation_strategy, ignore_labels and stride apply to token classification "
                           "only: not taken with parameters.candidate_labels")
    clashing = [name for name, given in (("raw_scores", req.raw_scores), ("parameters.top_k", params.top_k),
                                         ("parameters.function_to_apply", params.function_to_apply)) if given]
    if clashing:
        raise InvalidInput(f"{', '.join(clashing)}: not taken with parameters.candidate_labels (zero-shot scores "
                           "are the pipeline's: every label, best first)")
    return True


def encode_zero_shot(req: PredictRequest, labels: list[str], scores: np.ndarray) -> Any:
    """The zero-shot pipeline's answer: {sequence, labels, scores} (labels best first) for one text, a list of
    them for a list, as the Hugging Face Inference API answers."""
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    answers = []
    for text, row in zip(texts, scores, strict=True):
        _, ordered, values = zeroshot.ranked(labels, row)
        answers.append({"sequence": text, "labels": ordered, "scores": values})
    return answers[0] if isinstance(req.inputs, str) else answers


# ---- token classification (a token model, or parameters.aggregation_strategy; the rules are app.tokens's) ----

def token_options_given(req: PredictRequest) -> bool:
    """Whether the request names an option of token classification (then it must go to a token model)."""
    params = req.parameters
    return params is not None and any(v is not None for v in (params.aggregation_strategy, params.ignore_labels,
                                                               params.stride))


def token_request(req: PredictRequest) -> dict[str, Any]:
    """label_tokens()'s arguments from the request; a 422 for options of the sequence tasks or pairs."""
    params = req.parameters
    clashing = [name for name, given in (
        ("raw_scores", req.raw_scores), ("parameters.top_k", params and params.top_k),
        ("parameters.function_to_apply", params and params.function_to_apply),
        ("window_aggregation", req.window_aggregation != "mean"),
        ("parameters.candidate_labels", params and params.candidate_labels is not None)) if given]
    if clashing:
        raise InvalidInput(f"{', '.join(clashing)}: not taken by a token-classification model (it answers entities:"
                           " parameters.aggregation_strategy, ignore_labels, stride)")
    stride = params.stride if params else None
    if stride is not None and req.stride is not None and stride != req.stride:
        raise InvalidInput("stride and parameters.stride differ: send one")
    texts = [req.inputs] if isinstance(req.inputs, (str, tuple)) else req.inputs
    if any(not isinstance(text, str) for text in texts):
        raise InvalidInput("inputs: a token-classification model labels texts, not pairs")
    return {"texts": texts, "aggregation_strategy": tokens.check_strategy(params and params.aggregation_strategy),
            "ignore_labels": params and params.ignore_labels, "stride": req.stride if stride is None else stride,
            "truncate": req.truncate}


def encode_entities(req: PredictRequest, found: tokens.Entities) -> Any:
    """The Hugging Face Inference API's token-classification answer: a flat list of entities for one text, a
    list of them per text for a list."""
    return found.entities[0] if isinstance(req.inputs, str) else found.entities
