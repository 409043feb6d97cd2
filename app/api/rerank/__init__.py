"""Reranking over HTTP, in the two shapes clients speak: text-embeddings-inference's `POST /rerank` (a flat list
`[{index, score, text?}]`) and Cohere's `POST /v1/rerank` and `POST /v2/rerank` (`{id, results: [{index,
relevance_score, document?}], meta}`, also spoken by Jina and Infinity clients). The method is app.rerank's."""

from app.api.rerank.routes import router

__all__ = ["router"]
