"""vLLM wire schemas (v0.10.2, vllm/entrypoints/openai/protocol.py): ClassificationRequest and ScoreRequest with
the fields vLLM documents for text (no token ids, no multi-modal content), bertserve's own `version` and
`timeout_ms`; the answers ClassificationResponse and ScoreResponse with their UsageInfo."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.predict.schemas import Text
from app.api.schemas import JsonInt

_MODEL = "Model name; may be left out when one model is served. The answer's `model` is the served model's name."
_VERSION = "Model version (bertserve's field); default: as for /predict (the highest one serving, or the traffic split)."
_TIMEOUT = ("bertserve's field: answer 504 and drop the work if no result within this time (capped by "
            "BERTSERVE_MAX_REQUEST_TIMEOUT_MS). Default: BERTSERVE_REQUEST_TIMEOUT_MS.")
_TRUNCATE = ("vLLM's field. Left out, -1, or at least the model's max length: an input longer than the max length is "
             "cut to it (bertserve's default, as on /predict; vLLM itself refuses a too-long input when the field is "
             "left out). Fewer tokens than the max length: 422 (not supported).")
_PRIORITY = "vLLM's field; only 0: bertserve does not schedule by priority (vLLM refuses others likewise)."
_ACTIVATION = ("vLLM's field: false answers the raw logits; true or left out: the model head's function (softmax, "
               "or sigmoid for a multi-label or one-logit head).")


class Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = Field(None, description=_MODEL)
    truncate_prompt_tokens: JsonInt | None = Field(None, ge=-1, description=_TRUNCATE)
    priority: JsonInt = Field(0, ge=0, le=0, description=_PRIORITY)
    activation: StrictBool | None = Field(None, description=_ACTIVATION)
    user: StrictStr | None = Field(None, description="Accepted, not read (OpenAI's field).")
    version: JsonInt | None = Field(None, ge=1, description=_VERSION)
    timeout_ms: JsonInt | None = Field(None, ge=10, description=_TIMEOUT)


class ClassificationRequest(Common):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model": "tiny", "input": ["Loving vLLM!", "vLLM is awful."]}]})

    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(description="One text or a list of texts (at most "
                                                 "BERTSERVE_MAX_CLIENT_BATCH_SIZE); each non-empty.")


class ScoreRequest(Common):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model": "reranker", "text_1": "What is the capital of France?",
        "text_2": ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]}]})

    text_1: Text | list[Text] = Field(description="The first text of each pair: one text (paired with every text_2), "
                                                  "or a list as long as text_2 (paired in order).")
    text_2: Text | list[Text] = Field(description="The second text of each pair: one text or a list.")
    mm_processor_kwargs: dict[str, Any] | None = Field(None, description="vLLM's field for multi-modal models; "
                                                                         "accepted, not read.")


class UsageInfo(BaseModel):
    prompt_tokens: int = Field(description="Tokens the model read: every sequence's, special tokens included, "
                                           "after truncation.")
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None


class ClassificationData(BaseModel):
    index: int = Field(description="The input's position.")
    label: str | None = Field(description="The label with the highest probability.")
    probs: list[float] = Field(description="Every label's score in the model's label order: the head's function "
                                           "(softmax or sigmoid), or logits with activation false.")
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str = Field(description="The request's id (X-Request-ID).")
    object: str = "list"
    created: int = Field(description="Unix time, seconds.")
    model: str = Field(description="The served model's name.")
    data: list[ClassificationData]
    usage: UsageInfo


class ScoreResponseData(BaseModel):
    index: int = Field(description="The pair's position.")
    object: str = "score"
    score: float = Field(description="The head's score (sigmoid: 0 to 1), or the logit with activation false.")


class ScoreResponse(BaseModel):
    id: str = Field(description="The request's id (X-Request-ID).")
    object: str = "list"
    created: int = Field(description="Unix time, seconds.")
    model: str = Field(description="The served model's name.")
    data: list[ScoreResponseData]
    usage: UsageInfo
