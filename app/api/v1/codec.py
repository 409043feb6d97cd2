"""KServe V1 `:predict` codec: the request validated from raw JSON bytes, the head refused where the V1 shape says
nothing, and scores shaped as huggingfaceserver's predictions (release v0.20.0, commit 1fb7810,
`HuggingfaceEncoderModel._process_sequence_classification`): the argmax class id of each instance, or, with its
`return_probabilities` option, `{class id: softmax probability rounded to 4 decimals}` (JSON keys are strings).
Which of the two is a per-model choice: `v1_return_probabilities` in the model's serving.json
(app.repository.ModelServing), as the registry last read it (app.registry.Registry.serving_of). No HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.api.v1.schemas import V1PredictRequest
from app.errors import InvalidInput, parse_json, validation_message
from app.served import ServedModel


def parse_predict(body: bytes, model: str) -> V1PredictRequest:
    req = parse_json(V1PredictRequest, body, _message)
    if req.model_name and req.model_name != model:
        raise InvalidInput(f"model_name {req.model_name!r} in the body differs from the model of the path "
                           f"({model!r}): leave it out or make it the same")
    return req


def _message(errors: list) -> str:
    # A pair where a text goes: huggingfaceserver's V1 :predict tokenizes each instance as one text.
    pairs = [e for e in errors if e["type"] == "string_type" and isinstance(e["input"], list | dict)]
    if pairs:
        errors = [{**pairs[0], "msg": "V1 :predict takes single texts, as KServe's huggingfaceserver; classify pairs "
                   "with /predict or V2 infer (the `text_pair` input)"}]
    return validation_message(errors)


def check_head(served: ServedModel) -> None:
    """A head of one logit (a one-logit classifier, a reranker, a regression value) has no class to pick: its V1
    answer would always be class 0 (probability 1.0), so it is refused (422) rather than answered so."""
    labels = served.config.labels
    if len(labels) < 2:
        raise InvalidInput(
            f"model {served.name} (version {served.version}) has a {served.head.kind} head with one output "
            f"({labels[0]}): V1 :predict answers a class id among several labels; read its score with /predict or "
            "V2 infer")


def predictions(scores: np.ndarray, probabilities: bool) -> list[Any]:
    """huggingfaceserver's predictions from softmax scores [n, labels]: class ids, or probabilities by class id."""
    if not probabilities:
        return scores.argmax(axis=-1).tolist()
    return [{str(j): float(f"{p:.4f}") for j, p in enumerate(row)} for row in scores.tolist()]
