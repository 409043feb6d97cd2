"""Explanation wire schemas: bertserve's /explain request and answer, and KServe V1's :explain verb."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.predict.schemas import LabelScore, Text
from app.api.schemas import JsonInt

MAX_FEATURES = 256


class ExplainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: StrictStr | None = Field(None, description="The label to explain; default: the predicted (top) one.")
    max_features: JsonInt = Field(
        64, ge=1, le=MAX_FEATURES, description="At most this many features: one per word, or, for longer texts, "
        "groups of consecutive words. The cost is one engine pass over max_features + 1 sequences.",
    )


class ExplainRequest(ExplainOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "This medicine worked wonders, no side effects at all."}]},
    )

    inputs: Text = Field(description="The text to explain.")
    truncate: StrictBool = Field(True, description="Cut inputs longer than the model's max length; false: 422 (an "
                                 "explanation reads one window).")
    model: StrictStr | None = Field(None, description="Model name; may be left out when one model is served.")
    version: JsonInt | None = Field(None, ge=1, description="Model version; default: as for /predict.")
    timeout_ms: JsonInt | None = Field(
        None, ge=10, description="Answer 504 and drop the work if no result within this time (capped by "
        "BERTSERVE_MAX_REQUEST_TIMEOUT_MS). Default: BERTSERVE_REQUEST_TIMEOUT_MS.",
    )


class FeatureWeight(BaseModel):
    start: int = Field(description="Offset of the feature's first character in the text sent.")
    end: int = Field(description="Offset just past its last character: text[start:end] is the feature.")
    text: str = Field(description="text[start:end]: a word, or several consecutive words for a long text.")
    weight: float = Field(description="The explained label's probability with the whole text minus without this "
                                      "feature: positive when the feature supports the label.")


class ExplainResponse(BaseModel):
    prediction: list[LabelScore] = Field(description="As /predict answers this text: every label, best first.")
    label: str = Field(description="The label explained.")
    score: float = Field(description="Its probability for the whole text.")
    features: list[FeatureWeight] = Field(description="In text order, within text[:read].")
    read: int = Field(description="How much of the text was explained: text[:read], the words the model reads. "
                                  "The whole text's length unless it is longer than the model's max length.")


class V1ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"instances": ["Worked wonders."]}]})

    instances: Annotated[list[Text], Field(min_length=1)]
    parameters: ExplainOptions | None = None


class V1ExplainResponse(BaseModel):
    predictions: list[str] = Field(description="The predicted label of each instance.")
    explanations: list[dict[str, Any]] = Field(description="Per instance: label, score, features and read, as "
                                               "/explain.")
