"""Reranking on a tiny random one-logit BERT pair classifier (a cross-encoder), exported with `bertserve export`:
the real Cohere SDK (v1 and v2 clients) and tritonclient.http (KServe V2, `text` and `text_pair`) against a real
`bertserve serve` on 127.0.0.1, text-embeddings-inference's shape field by field and V2 REST's scores in-process,
bad input answered 4xx with the server still serving, duplicates scored once and a request's pairs sent to the
batcher as one submission. The queue bound (429) and deadline (504): tests/integration/test_rerank_limits.py."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from app import batching
from app.cli import main as cli
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.metrics import metric
from tests.support.servers import Server
from tests.support.tiny import CORPUS, LABELS, make_head_checkpoint

pytestmark = pytest.mark.slow

cohere = pytest.importorskip("cohere")

QUERY = "side effects of the treatment"
DOCUMENTS = CORPUS  # six reviews
LIMIT = 8  # BERTSERVE_MAX_RERANK_DOCUMENTS in-process (the server keeps the default, 512)
KEY = "rerank-client-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "zqxj-client-text"  # client text that must never come back in an error


def spread(checkpoint):
    """Scale and centre the classifier so a random model's logits on the test pairs spread over about 4 around 0:
    scores differ clearly, a ranking to check."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(checkpoint).eval()
    encoded = AutoTokenizer.from_pretrained(checkpoint)([QUERY] * len(DOCUMENTS), DOCUMENTS, padding=True,
                                                        return_tensors="pt")
    with torch.no_grad():
        plain = model(**encoded).logits - model.classifier.bias  # W·h per pair and label
        scale = 4 / (plain.max(0).values - plain.min(0).values).clamp(min=1e-9)
        model.classifier.weight.mul_(scale[:, None])
        model.classifier.bias.copy_(-(plain * scale).mean(0))
    model.save_pretrained(checkpoint)
    return checkpoint


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """`reranker` (one logit, sigmoid) and `sentiment` (three labels, softmax), exported from tiny checkpoints."""
    root = tmp_path_factory.mktemp("rerank")
    for seed, (name, labels) in enumerate([("reranker", ["relevance"]), ("sentiment", LABELS)]):
        checkpoint = spread(make_head_checkpoint(root / name, labels, None, seed))
        cli(["export", str(checkpoint), "--name", name, "--model-repository", str(root / "repo"), "--quantize", "none"])
    return root / "repo"


@pytest.fixture(scope="module")
def server(repo):
    server = Server(repo, env={"BERTSERVE_API_KEYS": KEY, "BERTSERVE_DEFAULT_MODEL": "reranker"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def call(repo):
    yield from in_process(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, log_level="warning",
                                   max_rerank_documents=LIMIT, default_model="reranker"))


def model_scores(url_or_call, documents: list[str], raw: bool = False) -> list[float]:
    """The model's own scores for the (query, document) pairs, from /predict."""
    body = {"inputs": [[QUERY, d] for d in documents], "model": "reranker", "raw_scores": raw}
    r = url_or_call("POST", "/predict", json=body) if callable(url_or_call) else \
        httpx.post(url_or_call + "/predict", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return [row[0]["score"] for row in r.json()]


def best_first(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: -scores[i])


# ---- the real Cohere SDK against a real server ----

@pytest.mark.process
def test_cohere_v2_client_ranks_as_the_model_scores(server):
    expected = model_scores(server.url, DOCUMENTS)
    assert len(set(best_first(expected)[:3])) == 3 and max(expected) - min(expected) > 0.01  # a ranking to check
    client = cohere.ClientV2(base_url=server.url, api_key=KEY)
    answer = client.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in answer.results] == best_first(expected)[:3]
    for r in answer.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-6)
        assert 0 <= r.relevance_score <= 1  # the head's sigmoid
    assert answer.meta.api_version.version == "2"


@pytest.mark.process
def test_cohere_v1_client_returns_documents_and_clamps_top_n(server):
    expected = model_scores(server.url, DOCUMENTS)
    client = cohere.Client(base_url=server.url, api_key=KEY)
    answer = client.rerank(model="reranker", query=QUERY, documents=DOCUMENTS, top_n=100, return_documents=True)
    assert [r.index for r in answer.results] == best_first(expected)  # top_n over the count: all, as Cohere
    for r in answer.results:
        assert r.document.text == DOCUMENTS[r.index]
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-6)
    bare = client.rerank(model="reranker", query=QUERY, documents=[{"text": d} for d in DOCUMENTS[:2]])
    assert sorted(r.index for r in bare.results) == [0, 1] and all(r.document is None for r in bare.results)


@pytest.mark.process
def test_cohere_errors_are_the_sdks_own_exceptions_and_the_server_keeps_serving(server):
    with pytest.raises(cohere.UnauthorizedError):  # a client route: a client key is needed
        cohere.ClientV2(base_url=server.url, api_key="wrong").rerank(model="reranker", query=QUERY, documents=["a"])
    v2 = cohere.ClientV2(base_url=server.url, api_key=KEY)
    with pytest.raises(cohere.UnprocessableEntityError) as refused:
        v2.rerank(model="sentiment", query=SECRET, documents=[SECRET])
    assert refused.value.status_code == 422
    message = refused.value.body["error"]
    assert "sentiment" in message and "3 labels" in message and "one-logit" in message and SECRET not in message
    with pytest.raises(cohere.UnprocessableEntityError) as over:
        cohere.Client(base_url=server.url, api_key=KEY).rerank(model="reranker", query=QUERY,
                                                               documents=[SECRET] * 513)
    assert "limit is 512 (BERTSERVE_MAX_RERANK_DOCUMENTS)" in over.value.body["error"]
    with pytest.raises(cohere.NotFoundError):
        v2.rerank(model="no-such-model", query=QUERY, documents=DOCUMENTS)
    assert len(v2.rerank(model="reranker", query=QUERY, documents=DOCUMENTS).results) == len(DOCUMENTS)
    assert SECRET not in server.output()
    text = server.metrics_text()
    assert metric(text, "bertserve_requests_total", model="reranker", status="200") >= 1
    assert metric(text, "bertserve_rerank_documents_total", model="reranker", route="/v2/rerank",
                  kind="scored") >= len(DOCUMENTS)


@pytest.mark.process
def test_tritonclient_scores_the_reranker_as_v2_rerank(server):
    """tritonclient.http, Triton's own client, sends `text` and `text_pair` (BYTES, its binary tensor extension) to
    the reranker on a real server: each row's score is /v2/rerank's relevance score for that document."""
    ranked = httpx.post(server.url + "/v2/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS},
                        headers=AUTH, timeout=30).json()
    expected = [score for _, score in sorted((r["index"], r["relevance_score"]) for r in ranked["results"])]
    inputs = []
    for name, texts in (("text", [QUERY] * len(DOCUMENTS)), ("text_pair", DOCUMENTS)):
        tensor = triton.InferInput(name, [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array(texts, dtype=object))
        inputs.append(tensor)
    with triton.InferenceServerClient(url=f"127.0.0.1:{server.port}") as client:
        metadata = client.get_model_metadata("reranker", headers=AUTH)
        assert [i["name"] for i in metadata["inputs"]] == ["text", "text_pair"]
        assert metadata["parameters"]["labels"] == ["relevance"]
        # a copy: tritonclient adds its own headers (Inference-Header-Content-Length) to the dict it is given
        scores = client.infer("reranker", inputs, headers=dict(AUTH)).as_numpy("scores")
    assert scores.shape == (len(DOCUMENTS), 1)
    np.testing.assert_allclose(scores[:, 0], expected, atol=1e-5)


# ---- text-embeddings-inference's shape, in-process ----

def test_tei_shape_field_by_field(call):
    expected = model_scores(call, DOCUMENTS)
    r = call("POST", "/rerank", json={"query": QUERY, "texts": DOCUMENTS})
    assert r.status_code == 200 and r.headers["x-model-name"] == "reranker"
    answer = r.json()
    assert isinstance(answer, list) and len(answer) == len(DOCUMENTS)
    assert all(set(item) == {"index", "score"} for item in answer)
    assert [item["index"] for item in answer] == best_first(expected)
    assert [item["score"] for item in answer] == pytest.approx([expected[i] for i in best_first(expected)], abs=1e-6)

    texts = call("POST", "/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert all(set(item) == {"index", "score", "text"} and item["text"] == DOCUMENTS[item["index"]] for item in texts)

    raw = call("POST", "/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    logits = model_scores(call, DOCUMENTS, raw=True)
    for item in raw:
        assert item["score"] == pytest.approx(logits[item["index"]], abs=1e-5)
        assert 1 / (1 + math.exp(-item["score"])) == pytest.approx(expected[item["index"]], abs=1e-5)


def v2_infer(call, function: str | None = None) -> list[float]:
    """The reranker's one score per (QUERY, document) row over KServe V2 REST: `text` and `text_pair` inputs of the
    same length; the head's scores or, with `function`, parameters.function_to_apply's."""
    n = len(DOCUMENTS)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n], "data": [QUERY] * n},
                       {"name": "text_pair", "datatype": "BYTES", "shape": [n], "data": DOCUMENTS}],
            "outputs": [{"name": "scores"}]} | ({"parameters": {"function_to_apply": function}} if function else {})
    r = call("POST", "/v2/models/reranker/infer", json=body)
    assert r.status_code == 200, r.text
    [scores] = r.json()["outputs"]
    assert scores["shape"] == [len(DOCUMENTS), 1] and scores["datatype"] == "FP32"
    return scores["data"]


def test_kserve_v2_serves_the_reranker_with_text_and_text_pair(call):
    """V2's `text` × `text_pair` rows score as the rerank routes do: its scores as /v2/rerank's relevance scores,
    its logits (function_to_apply none) as /rerank's raw_scores, and their sigmoid as /rerank's scores."""
    ranked = call("POST", "/v2/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCUMENTS}).json()
    cohere_scores = {item["index"]: item["relevance_score"] for item in ranked["results"]}
    tei = {item["index"]: item["score"] for item in call("POST", "/rerank", json={"query": QUERY, "texts": DOCUMENTS})
           .json()}
    raw = {item["index"]: item["score"] for item in call("POST", "/rerank", json={
        "query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()}
    scores, logits = v2_infer(call), v2_infer(call, "none")
    assert max(logits) - min(logits) > 0.1  # scores that differ: a comparison that means something
    for k in range(len(DOCUMENTS)):
        assert scores[k] == pytest.approx(cohere_scores[k], abs=1e-5)
        assert logits[k] == pytest.approx(raw[k], abs=1e-5)
        assert 1 / (1 + math.exp(-logits[k])) == pytest.approx(tei[k], abs=1e-5)


def test_the_openapi_document_has_the_three_routes(call):
    paths = call("GET", "/openapi.json").json()["paths"]
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert "query" in body["properties"] and {"200", "422", "429", "504"} <= set(paths[path]["post"]["responses"])


BAD = {
    "empty documents": ("/v2/rerank", {"model": "reranker", "query": QUERY, "documents": []}, "documents"),
    "empty texts": ("/rerank", {"query": QUERY, "texts": []}, "texts"),
    "a number as a document": ("/v1/rerank", {"query": QUERY, "documents": [SECRET, 5]}, "documents[1]"),
    "an object without text": ("/v1/rerank", {"query": QUERY, "documents": [{"title": SECRET}]}, "documents[0]"),
    "a number among texts": ("/rerank", {"query": QUERY, "texts": [SECRET, 5]}, "texts[1]"),
    "top_n 0": ("/v2/rerank", {"query": QUERY, "documents": [SECRET], "top_n": 0}, "top_n"),
    "top_n negative": ("/v1/rerank", {"query": QUERY, "documents": [SECRET], "top_n": -1}, "top_n"),
    "over the limit": ("/rerank", {"query": QUERY, "texts": [SECRET] * (LIMIT + 1)}, f"limit is {LIMIT}"),
    "not a reranker": ("/rerank", {"model": "sentiment", "query": QUERY, "texts": [SECRET]}, "not a reranker"),
    "left truncation": ("/rerank", {"query": QUERY, "texts": [SECRET], "truncation_direction": "Left"},
                        "truncation_direction"),
    "a query too long to window a document": ("/rerank", {"query": SECRET + " word" * 200, "texts": [SECRET],
                                                          "truncate": False}, "first text of a pair leaves"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_a_clear_422_and_the_server_keeps_serving(call, case):
    path, body, named = BAD[case]
    r = call("POST", path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and named in r.json()["error"]
    assert SECRET not in r.text
    assert call("POST", "/rerank", json={"query": QUERY, "texts": DOCUMENTS[:2]}).status_code == 200


def test_duplicates_are_scored_once_in_one_submission(call, monkeypatch):
    submitted: list[int] = []
    submit = batching.Batcher.submit

    async def counting(self, texts, truncate=True):
        submitted.append(len(texts))
        return await submit(self, texts, truncate)

    monkeypatch.setattr(batching.Batcher, "submit", counting)
    documents = [DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[0], DOCUMENTS[2], DOCUMENTS[1], DOCUMENTS[0]]
    before = call("GET", "/metrics").text
    r = call("POST", "/v2/rerank", json={"model": "reranker", "query": QUERY, "documents": documents})
    assert r.status_code == 200
    assert submitted == [3]  # one submission of the three distinct documents
    scores = {item["index"]: item["relevance_score"] for item in r.json()["results"]}
    assert sorted(scores) == list(range(len(documents)))  # every index answered
    assert scores[0] == scores[2] == scores[5] and scores[1] == scores[4]
    after = call("GET", "/metrics").text

    def grew(kind: str) -> float:
        labels = {"model": "reranker", "route": "/v2/rerank", "kind": kind}
        return metric(after, "bertserve_rerank_documents_total", **labels) - metric(
            before, "bertserve_rerank_documents_total", **labels)

    assert (grew("scored"), grew("duplicate")) == (3, 3)
    assert metric(after, "bertserve_batch_size_sum", model="reranker") - metric(
        before, "bertserve_batch_size_sum", model="reranker") == 3  # three sequences ran on the engine


def test_rerank_follows_the_queue_bound(repo):
    """Distinct documents over BERTSERVE_MAX_QUEUE_SIZE could never be queued: 422, not 429."""
    settings = Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, log_level="warning",
                        max_queue_size=4, max_client_batch_size=4, max_rerank_documents=LIMIT)
    for call in in_process(settings):
        r = call("POST", "/rerank", json={"model": "reranker", "query": QUERY, "texts": DOCUMENTS})
        assert r.status_code == 422 and "queue limit of 4" in r.json()["error"]
        assert call("POST", "/rerank", json={"model": "reranker", "query": QUERY, "texts": DOCUMENTS[:4]}
                    ).status_code == 200


@pytest.mark.process
def test_schemathesis_fuzz_of_the_rerank_routes_finds_no_5xx_and_no_schema_violation(server):
    """The rerank routes fuzzed on a server whose default model is a reranker, so valid bodies reach the ranking
    (tests/integration/test_reliability.py fuzzes every route, on a model that is not one). A fuzzed timeout_ms of
    10 is rightly a 504 on a busy machine, so instead of schemathesis's any-5xx check: no 500 counted."""
    import re
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json", "--checks", "all",
         "--include-path-regex", "rerank", "--max-examples", "60", "--workers", "1", "--seed", "1",
         "--exclude-checks", "not_a_server_error", "-H", f"Authorization: Bearer {KEY}"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    summary = r.stdout[-3000:]
    assert r.returncode == 0, summary
    cases = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert cases and int(cases.group(1)) >= 60, summary
    assert metric(server.metrics_text(), "bertserve_requests_total", status="500") == 0
    assert httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCUMENTS}, headers=AUTH,
                      timeout=30).status_code == 200


def test_a_long_document_is_scored_by_its_best_window_when_read_whole(call):
    """`truncate: false` (all three shapes): each window keeps the whole query, and the document's score is its
    best window's (MaxP): the /predict max of the same pair's windows."""
    long = " ".join(DOCUMENTS * 12)  # several windows of the tiny model's 64 tokens
    documents = [DOCUMENTS[0], long]
    windows = call("POST", "/predict", json={"inputs": [[QUERY, d] for d in documents], "model": "reranker",
                                             "truncate": False, "window_aggregation": "max"})
    assert windows.status_code == 200 and windows.headers["X-Truncated-Texts"] == "0"
    best = [row[0]["score"] for row in windows.json()]
    r = call("POST", "/rerank", json={"query": QUERY, "texts": documents, "truncate": False})
    assert r.status_code == 200, r.text
    assert r.headers["X-Truncated-Texts"] == "0"
    assert {item["index"]: item["score"] for item in r.json()} == pytest.approx(dict(enumerate(best)), abs=1e-6)
    cut = call("POST", "/v1/rerank", json={"query": QUERY, "documents": documents})
    assert cut.headers["X-Truncated-Texts"] == "1"
    first = {item["index"]: item["relevance_score"] for item in cut.json()["results"]}[1]
    assert best[1] >= first - 1e-6  # the best window is at least the first (the cut document)
