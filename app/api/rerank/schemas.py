"""Rerank wire schemas: text-embeddings-inference's /rerank, and Cohere's /v1/rerank and /v2/rerank (the SDK's
request fields; answers its RerankResponse and V2RerankResponse parse), each with bertserve's own fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.predict.schemas import Text
from app.api.schemas import JsonInt

Documents = Annotated[list[Text], Field(min_length=1)]


_MODEL = "Model name; may be left out when one model is served. Its head must have one logit (a cross-encoder)."
_VERSION = "Model version; default: as for /predict (the highest one serving, or the traffic split)."
_TIMEOUT = ("Answer 504 and drop the work if no result within this time (capped by BERTSERVE_MAX_REQUEST_TIMEOUT_MS)."
            " Default: BERTSERVE_REQUEST_TIMEOUT_MS.")
_TOP_N = "Answer only the n best documents; more than there are: all of them (as Cohere answers)."


class Own(BaseModel):
    """bertserve's fields, on every shape."""

    model_config = ConfigDict(extra="forbid")

    version: JsonInt | None = Field(None, ge=1, description=_VERSION)
    timeout_ms: JsonInt | None = Field(None, ge=10, description=_TIMEOUT)


class TeiRerankRequest(Own):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "query": "insomnia", "texts": ["I sleep through the night now.", "My migraines are gone."]}]})

    query: Text
    texts: Documents = Field(description="The documents, each scored against the query (at most "
                                         "BERTSERVE_MAX_RERANK_DOCUMENTS).")
    truncate: StrictBool = Field(True, description="Cut pairs longer than the model's max length (the longer side "
                                 "first), as text-embeddings-inference does with --auto-truncate (its default is "
                                 "false: a 422 there); false: read a long document whole, in windows each with the "
                                 "whole query, scored by its best window (MaxP).")
    truncation_direction: Literal["Right", "right"] = Field("Right", description="Only Right: the end is cut.")
    raw_scores: StrictBool = Field(False, description="Return logits instead of the head's scores (sigmoid).")
    return_text: StrictBool = Field(False, description="Return each document's text with its score.")
    model: StrictStr | None = Field(None, description=_MODEL)


class TeiRank(BaseModel):
    index: int = Field(description="The document's position in the request's texts.")
    score: float
    text: str | None = Field(None, description="The document (return_text).")


TeiRerankResponse = list[TeiRank]


class TextDocument(BaseModel):
    """A document as an object (Cohere v1's `{str: str}`, Jina's): its `text` is ranked; other string fields are
    returned with it (return_documents), not read."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StrictStr] = Field(init=False)

    text: Text


class CohereRerankRequest(Own):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "model": "drug-review-reranker", "query": "insomnia",
        "documents": ["I sleep through the night now.", "My migraines are gone."], "top_n": 1}]})

    model: StrictStr | None = Field(None, description=_MODEL + " The Cohere SDK always sends one.")
    query: Text
    documents: Annotated[list[Text | TextDocument], Field(min_length=1)] = Field(
        description="The documents: texts, or objects with a text (at most BERTSERVE_MAX_RERANK_DOCUMENTS)."
    )
    top_n: JsonInt | None = Field(None, ge=1, description=_TOP_N)
    return_documents: StrictBool = Field(False, description="Return each document ({\"text\": ...}, or the object "
                                                            "sent) with its score.")
    raw_scores: StrictBool = Field(False, description="Return logits instead of the head's scores (Infinity's "
                                                      "field).")
    max_tokens_per_doc: JsonInt | None = Field(None, ge=1, description="Accepted for compatibility; each "
                                                 "(query, document) pair is cut to the model's max length, the "
                                                 "longer side first.")
    max_chunks_per_doc: JsonInt | None = Field(None, ge=1, description="Accepted (v1); documents are not chunked.")
    rank_fields: list[Literal["text"]] | None = Field(None, description="v1: only the text field is ranked.")
    priority: JsonInt | None = Field(None, description="Accepted (v2); all requests share one queue.")


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str


class CohereResult(BaseModel):
    index: int = Field(description="The document's position in the request's documents.")
    relevance_score: float = Field(description="The head's score (sigmoid: 0 to 1), or the logit with raw_scores.")
    document: Document | None = Field(None, description="The document sent (return_documents).")


class ApiVersion(BaseModel):
    version: str


class Meta(BaseModel):
    api_version: ApiVersion
    billed_units: dict[str, Any] = Field(description="search_units: 1 per request, as Cohere counts.")


class CohereRerankResponse(BaseModel):
    id: str = Field(description="The request's id (X-Request-ID).")
    results: list[CohereResult] = Field(description="Best first.")
    meta: Meta
