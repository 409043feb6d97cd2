"""Rerank codec: requests validated from raw JSON bytes in one pass; a ranking shaped as text-embeddings-inference's
flat list or as Cohere's results object. No HTTP here."""

from __future__ import annotations

import uuid
from typing import Any

from app.api.rerank.schemas import CohereRerankRequest, TeiRerankRequest
from app.errors import M, parse_json, validation_message
from app.rerank import Ranking


def parse(schema: type[M], body: bytes) -> M:
    return parse_json(schema, body, _message)


def _message(errors: list) -> str:
    # A document of the wrong kind: said once, by its place (pydantic reports each branch of the union).
    wrong = next((e["loc"][:2] for e in errors if e["loc"][:1] == ("documents",) and len(e["loc"]) > 2), None)
    if wrong is not None:
        return f'documents[{wrong[1]}]: each document is a non-empty text or an object with one ("text": ...)'
    return validation_message(errors)


def texts_of(req: CohereRerankRequest) -> list[str]:
    return [doc if isinstance(doc, str) else doc.text for doc in req.documents]


def encode_tei(req: TeiRerankRequest, ranking: Ranking) -> list[dict[str, Any]]:
    """text-embeddings-inference's answer: a flat list, best first."""
    if req.return_text:
        return [{"index": i, "score": score, "text": req.texts[i]} for i, score in ranking.results]
    return [{"index": i, "score": score} for i, score in ranking.results]


def encode_cohere(req: CohereRerankRequest, ranking: Ranking, api_version: str, request_id: str | None) -> dict:
    """Cohere's answer (v1 and v2 alike): results best first, each document as {"text": ...} or the object sent."""
    results = []
    for i, score in ranking.results:
        result: dict[str, Any] = {"index": i, "relevance_score": score}
        if req.return_documents:
            doc = req.documents[i]
            result["document"] = {"text": doc} if isinstance(doc, str) else doc.model_dump()
        results.append(result)
    return {"id": request_id or str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}}}
