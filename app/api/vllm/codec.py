"""vLLM codec: requests validated from raw JSON bytes in one pass, text_1/text_2 paired as vLLM pairs them, and
the answers shaped as vLLM v0.10.2 shapes them (serving_classification.py, serving_score.py). No HTTP here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.api.vllm.schemas import ClassificationRequest, Common, ScoreRequest
from app.errors import InvalidInput, M, parse_json, validation_message
from app.served import ServedModel


def parse(schema: type[M], body: bytes) -> M:
    return parse_json(schema, body, _message)


def _message(errors: list) -> str:
    # A wrong item in a list of texts: said once, by its place (pydantic reports each branch of the union).
    for e in errors:
        loc = e["loc"]
        if loc[:1] in (("input",), ("text_1",), ("text_2",)) and len(loc) > 2 and isinstance(loc[2], int):
            return f"{loc[0]}[{loc[2]}]: each text is a non-empty string"
    for e in errors:
        if e["loc"][:1] in (("input",), ("text_1",), ("text_2",)) and e["type"] != "missing":
            return f"{e['loc'][0]}: a non-empty string or a list of them is expected"
    return validation_message(errors)


def texts_of(req: ClassificationRequest) -> list[str]:
    return [req.input] if isinstance(req.input, str) else req.input


def pairs_of(req: ScoreRequest) -> list[tuple[str, str]]:
    """vLLM's pairing (score_utils._validate_score_input_lens): one text_1 with each text_2 (1:1, 1:N), or equal
    lists paired in order (N:N); its errors, in its words."""
    texts_1 = [req.text_1] if isinstance(req.text_1, str) else req.text_1
    texts_2 = [req.text_2] if isinstance(req.text_2, str) else req.text_2
    if len(texts_1) > 1 and len(texts_1) != len(texts_2):
        raise InvalidInput(f"Input lengths must be either 1:1, 1:N or N:N (text_1 has {len(texts_1)} texts, "
                           f"text_2 {len(texts_2)})")
    if not texts_1:
        raise InvalidInput("At least one text element must be given (text_1 is empty)")
    if not texts_2:
        raise InvalidInput("At least one text_pair element must be given (text_2 is empty)")
    if len(texts_1) == 1:
        texts_1 = texts_1 * len(texts_2)
    return list(zip(texts_1, texts_2, strict=True))


def check_truncation(req: Common, served: ServedModel) -> None:
    """vLLM's truncate_prompt_tokens: -1 is the model's max length; fewer tokens than that bertserve cannot cut to."""
    asked = req.truncate_prompt_tokens
    if asked is not None and asked != -1 and asked < served.max_length:
        raise InvalidInput(f"truncate_prompt_tokens {asked}: bertserve cuts inputs only to the model's max length "
                           f"({served.max_length} tokens for model {served.name}); send -1 or leave it out")


def check_scorer(served: ServedModel) -> None:
    """vLLM scores pairs with a cross-encoder only: a classifier with one label (num_labels 1)."""
    labels = served.config.labels
    if len(labels) != 1:
        raise InvalidInput(
            f"model {served.name} (version {served.version}) does not score pairs: its head has {len(labels)} "
            f"labels ({', '.join(labels)}; {served.head.function}); /score needs a one-logit head (a "
            "cross-encoder), as vLLM's score task does; /classify or /predict answer every label"
        )


def usage(rows: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """vLLM's UsageInfo: every sequence's tokens (special tokens included, after truncation) as prompt tokens."""
    tokens = sum(timing.tokens for _, timing in rows)
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0, "prompt_tokens_details": None}


def _head(request_id: str | None, served: ServedModel) -> dict[str, Any]:
    return {"id": request_id or str(uuid.uuid4()), "object": "list", "created": int(time.time()),
            "model": served.name}


def encode_classify(served: ServedModel, scores: np.ndarray, rows: Sequence, request_id: str | None) -> dict:
    labels = served.config.labels
    data = []
    for index, row in enumerate(scores.tolist()):
        top = max(range(len(row)), key=row.__getitem__)  # the first of equal maxima, as numpy's argmax
        data.append({"index": index, "label": labels[top], "probs": row, "num_classes": len(row)})
    return {**_head(request_id, served), "data": data, "usage": usage(rows)}


def encode_score(served: ServedModel, scores: np.ndarray, rows: Sequence, request_id: str | None) -> dict:
    data = [{"index": index, "object": "score", "score": score} for index, score in enumerate(scores[:, 0].tolist())]
    return {**_head(request_id, served), "data": data, "usage": usage(rows)}
