"""Reranking, transport-neutral: one query scored against each document by a cross-encoder (a pair classifier with
one logit), the documents answered best first. Every wire shape (app.api.rerank: text-embeddings-inference's
/rerank, Cohere's /v1/rerank and /v2/rerank) parses into `rerank()`'s arguments and shapes its `Ranking`.

The rules, in one place: the model's head must have one logit (else 422 naming the model and its head); at most
BERTSERVE_MAX_RERANK_DOCUMENTS documents (in place of BERTSERVE_MAX_CLIENT_BATCH_SIZE), whose distinct texts must
fit the version's queue (else 422, as for any submission that could never be queued: app.batching.Admission); a
text given twice is scored once; every (query, document) pair goes to the version's batcher as one submission
(admission, deadline, routing and metrics are app.inference's, as for /predict); scores follow the head (sigmoid
for a one-logit classifier) or are the raw logits; ties keep the request's order; `top_n` above the count is the
count (as Cohere answers)."""

from __future__ import annotations

from dataclasses import dataclass

from app import metrics
from app.errors import InvalidInput
from app.served import ServedModel
from app.service import Service
from app.tokenizer import TextInput


@dataclass(frozen=True, slots=True)
class Ranking:
    served: ServedModel  # the version that answered
    results: list[tuple[int, float]]  # (index into the request's documents, score), best first, top_n kept


def check_head(served: ServedModel) -> None:
    """A reranker is a one-logit pair classifier; a model with more labels ranks nothing."""
    labels = served.config.labels
    if len(labels) != 1:
        raise InvalidInput(
            f"model {served.name} (version {served.version}) is not a reranker: its head has {len(labels)} labels "
            f"({', '.join(labels)}; {served.head.function}); reranking needs a one-logit head (a cross-encoder)"
        )


def distinct(documents: list[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in first-seen order, and for each document the position of its text among them."""
    position: dict[str, int] = {}
    where = [position.setdefault(text, len(position)) for text in documents]
    return list(position), where


def ranked(scores: list[float], top_n: int | None) -> list[tuple[int, float]]:
    """(index, score) best first; equal scores in the request's order; the first top_n (all when None)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return [(i, scores[i]) for i in order[:top_n]]


async def rerank(
    service: Service,
    query: str,
    documents: list[str],
    *,
    route: str,
    model: str | None = None,
    version: int | None = None,
    truncate: bool = True,
    raw_scores: bool = False,
    top_n: int | None = None,
    timeout_s: float,
    routing_key: str | None = None,
) -> Ranking:
    """The documents ranked for the query. `route` labels the documents counter (bertserve_rerank_documents)."""
    limit = service.settings.max_rerank_documents
    if not documents:
        raise InvalidInput("no documents to rerank: send at least one")
    if len(documents) > limit:
        raise InvalidInput(f"{len(documents)} documents in one request; the limit is {limit} "
                           "(BERTSERVE_MAX_RERANK_DOCUMENTS)")
    if top_n is not None and top_n < 1:
        raise InvalidInput(f"top_n must be at least 1 (got {top_n})")
    texts, where = distinct(documents)

    async def prepare(served: ServedModel, pairs: list[TextInput]) -> list[TextInput]:
        check_head(served)
        return pairs

    served, scores = await service.classify(
        # truncate false: a long document is read in windows and scored by its best one (MaxP)
        [(query, text) for text in texts], model=model, version=version, truncate=truncate, window_aggregation="max",
        function="none" if raw_scores else None, timeout_s=timeout_s, routing_key=routing_key,
        max_inputs=limit, prepare=prepare,
    )
    column = scores[:, 0].tolist()
    counted = metrics.RERANK_DOCUMENTS
    label, answered = service.metric_label(served.name), str(served.version)
    counted.labels(label, answered, route, "scored").inc(len(texts))
    if len(documents) > len(texts):
        counted.labels(label, answered, route, "duplicate").inc(len(documents) - len(texts))
    return Ranking(served, ranked([column[i] for i in where], top_n))
