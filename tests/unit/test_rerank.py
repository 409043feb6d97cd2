"""Reranking's pure parts: distinct documents, the ranking and top_n, the head check, the codec's shapes and
messages, and the demo reranker's relevance pairs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.api.rerank.codec import encode_cohere, encode_tei, parse
from app.api.rerank.schemas import CohereRerankRequest, TeiRerankRequest
from app.errors import InvalidInput
from app.rerank import Ranking, check_head, distinct, ranked
from app.scores import Head


def test_distinct_keeps_the_first_seen_order_and_maps_every_document():
    texts, where = distinct(["b", "a", "b", "c", "a"])
    assert texts == ["b", "a", "c"] and where == [0, 1, 0, 2, 1]


def test_ranked_is_best_first_ties_in_request_order_and_top_n_clamped():
    scores = [0.2, 0.9, 0.5, 0.9]
    assert ranked(scores, None) == [(1, 0.9), (3, 0.9), (2, 0.5), (0, 0.2)]
    assert ranked(scores, 2) == [(1, 0.9), (3, 0.9)]
    assert ranked(scores, 99) == ranked(scores, None)


def served(labels: list[str]):
    head = Head(tuple(labels))
    return SimpleNamespace(name="m", version=3, config=SimpleNamespace(labels=labels), head=head)


def test_only_a_one_logit_head_reranks():
    check_head(served(["relevance"]))
    with pytest.raises(InvalidInput, match=r"model m \(version 3\) is not a reranker: its head has 2 labels "
                                           r"\(no, yes; softmax\)"):
        check_head(served(["no", "yes"]))


def test_the_two_answer_shapes():
    ranking = Ranking(served(["relevance"]), [(1, 0.75), (0, 0.25)])
    tei = TeiRerankRequest(query="q", texts=["a", "b"], return_text=True)
    assert encode_tei(tei, ranking) == [{"index": 1, "score": 0.75, "text": "b"}, {"index": 0, "score": 0.25, "text": "a"}]
    cohere = parse(CohereRerankRequest, b'{"query": "q", "documents": ["a", {"text": "b", "title": "t"}], '
                                        b'"return_documents": true}')
    answer = encode_cohere(cohere, ranking, "1", "rid")
    assert answer["id"] == "rid" and answer["meta"]["api_version"] == {"version": "1"}
    assert answer["results"] == [{"index": 1, "relevance_score": 0.75, "document": {"text": "b", "title": "t"}},
                                 {"index": 0, "relevance_score": 0.25, "document": {"text": "a"}}]


@pytest.mark.parametrize("body, message", [
    (b'{"query": "q", "documents": ["a", 5]}', "documents[1]: each document is a non-empty text"),
    (b'{"query": "q", "documents": [{"text": "a", "n": 5}]}', "documents[0]"),
    (b'{"query": "q", "documents": [""]}', "documents[0]"),
    (b'{"query": "q", "documents": ["a"], "rank_fields": ["title"]}', "rank_fields"),
    (b'{"query": "q", "documents": ["a"], "top_n": 0}', "top_n"),
])
def test_cohere_bodies_refused_with_their_place(body, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(CohereRerankRequest, body)


def test_demo_relevance_pairs():
    from app.lifecycle.demo_reranker import relevance_pairs

    rows = [("Acne", "r1"), ("Pain", "r2"), ("Insomnia", "r3")]
    pairs, labels = relevance_pairs(rows, seed=0)
    assert labels == ["1", "0"] * 3
    for k, (condition, review) in enumerate(rows):
        assert pairs[2 * k] == (condition, review)
        assert pairs[2 * k + 1][1] == review and pairs[2 * k + 1][0] != condition
    assert relevance_pairs(rows, seed=0) == (pairs, labels)  # seeded
