"""/predict wire schemas: the request (the Hugging Face Inference API's text-classification form, plus bertserve's
own fields) and the ranked labels it answers with."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.schemas import JsonInt
from app.scores import ScoreFunction, WindowAggregation

Text = Annotated[StrictStr, Field(min_length=1)]


class TextPair(BaseModel):
    """The Hugging Face form of a pair (what `pipeline("text-classification")` takes)."""

    model_config = ConfigDict(extra="forbid")

    text: Text
    text_pair: Text


# A pair of texts (NLI premise and hypothesis, a cross-encoder's query and passage), validated straight into the
# tokenizer's (text, text_pair) tuple: as two strings in a list, or in the Hugging Face form.
Pair = tuple[Text, Text] | Annotated[TextPair, AfterValidator(lambda pair: (pair.text, pair.text_pair))]


class PredictParameters(BaseModel):
    """The Hugging Face Inference API's text-classification parameters, so its clients work unchanged."""

    model_config = ConfigDict(extra="forbid")

    top_k: JsonInt | None = Field(None, ge=1, description="Return only the k best labels.")
    function_to_apply: ScoreFunction | None = Field(
        None, description="Score function; by default the model head's, as transformers' text-classification "
        "pipeline chooses it: none for regression, sigmoid for multi-label or a single logit, else softmax."
    )
    # Zero-shot classification (the Inference API's zero-shot-classification parameters; app.zeroshot).
    candidate_labels: list[StrictStr] | StrictStr | None = Field(
        None, description="Zero-shot classification with an NLI model: the labels to score each text against (a "
        "string is comma-separated labels). Answers {sequence, labels, scores} per text, labels best first."
    )
    hypothesis_template: StrictStr | None = Field(
        None, description="Zero-shot: each label's hypothesis, the label in place of {}. Default: "
        "\"This example is {}.\""
    )
    multi_label: StrictBool | None = Field(
        None, description="Zero-shot: false (default): scores over the labels sum to 1; true: each label scored on "
        "its own (entailment against contradiction)."
    )
    # Token classification (the Inference API's token-classification parameters; app.tokens).
    aggregation_strategy: StrictStr | None = Field(
        None, description="A token-classification model: none (one entity per token), simple (default), first, "
        "average or max, as transformers' token-classification pipeline groups tokens into entities."
    )
    ignore_labels: list[StrictStr] | None = Field(
        None, description="A token-classification model: labels left out of the answer (default [\"O\"]).")
    stride: JsonInt | None = Field(
        None, ge=0, description="A token-classification model: tokens consecutive windows of a long text share "
        "(default a quarter of the model's max length, given in /models as default_stride).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "This medicine worked wonders, no side effects at all."}]},
    )

    # A JSON array of strings is always a list of texts (a flat ["a", "b"] is two texts, as for the Hugging Face
    # Inference API); pairs are lists of two strings inside it, or {"text", "text_pair"} objects.
    inputs: Text | Annotated[list[Text], Field(min_length=1)] | Annotated[
        TextPair, AfterValidator(lambda pair: (pair.text, pair.text_pair))
    ] | Annotated[list[Annotated[Text | Pair, Field(union_mode="left_to_right")]], Field(min_length=1)] = Field(
        # The first branch that fits, texts first: a list of texts costs what it did before pairs existed; a list
        # holding a pair fails the second branch at that pair and is read again by the last.
        union_mode="left_to_right",
        description="One text, one pair ({\"text\": ..., \"text_pair\": ...}), or a list of texts and pairs "
        "(each pair a list of two strings or such an object; answered with one list of scores per input)."
    )
    truncate: StrictBool | None = Field(
        None, description="Cut inputs longer than the model's max length (the answer's X-Truncated-Texts header "
        "counts them); false: read them whole, in overlapping windows (a pair: its second text), whose scores make "
        "one answer. Default: true, except for a token-classification model (false: no entity past the max length "
        "is lost).")
    stride: JsonInt | None = Field(None, ge=0, description="truncate false: tokens consecutive windows share (below "
                               "what a window holds). Default: a quarter of the model's max length.")
    window_aggregation: WindowAggregation = Field(
        "mean", description="truncate false: a long text's answer from its windows' scores: their mean, each "
        "label's highest (max), or the first window's.")
    raw_scores: StrictBool = Field(False, description="Return logits instead of probabilities.")
    model: StrictStr | None = Field(None, description="Model name; may be left out when one model is served.")
    version: JsonInt | None = Field(None, ge=1, description="Model version; default: the highest one serving.")
    parameters: PredictParameters | None = Field(
        None,
        description="Hugging Face Inference API form. When present, the answer uses that API's shape: "
        "a list of score lists even for a single text.",
    )
    timeout_ms: JsonInt | None = Field(
        None, ge=10, description="Answer 504 and drop the work if no result within this time (capped by the "
        "server's BERTSERVE_MAX_REQUEST_TIMEOUT_MS). Default: BERTSERVE_REQUEST_TIMEOUT_MS.",
    )


class LabelScore(BaseModel):
    label: str
    score: float


PredictResponse = list[LabelScore] | list[list[LabelScore]]
