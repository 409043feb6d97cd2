"""/predict wire schemas: the request (the Hugging Face Inference API's text-classification form, plus bertserve's
own fields) and the ranked labels it answers with."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.scores import ScoreFunction

Text = Annotated[StrictStr, Field(min_length=1)]


class PredictParameters(BaseModel):
    """The Hugging Face Inference API's text-classification parameters, so its clients work unchanged."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(None, ge=1, description="Return only the k best labels.")
    function_to_apply: ScoreFunction | None = Field(
        None, description="Score function; by default the model head's, as transformers' text-classification "
        "pipeline chooses it: none for regression, sigmoid for multi-label or a single logit, else softmax."
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "This medicine worked wonders, no side effects at all."}]},
    )

    inputs: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="One text, or a list of texts (answered with one list of scores per text)."
    )
    truncate: StrictBool = Field(True, description="Cut inputs longer than the model's max length; false: 422.")
    raw_scores: StrictBool = Field(False, description="Return logits instead of probabilities.")
    model: StrictStr | None = Field(None, description="Model name; may be left out when one model is served.")
    version: int | None = Field(None, ge=1, description="Model version; default: the highest one serving.")
    parameters: PredictParameters | None = Field(
        None,
        description="Hugging Face Inference API form. When present, the answer uses that API's shape: "
        "a list of score lists even for a single text.",
    )
    timeout_ms: int | None = Field(
        None, ge=10, description="Answer 504 and drop the work if no result within this time (capped by the "
        "server's BERTSERVE_MAX_REQUEST_TIMEOUT_MS). Default: BERTSERVE_REQUEST_TIMEOUT_MS.",
    )


class LabelScore(BaseModel):
    label: str
    score: float


PredictResponse = list[LabelScore] | list[list[LabelScore]]
