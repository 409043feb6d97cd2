"""vLLM's /classify and /score (app.api.vllm) on two tiny random BERT classifiers exported with `bertserve export`
— `reranker` (one logit, sigmoid) and `sentiment` (three labels, softmax) — served in-process: vLLM's documented
example requests answered in vLLM's shapes field by field, probabilities and scores equal to /predict's and
/rerank's for the same inputs, usage equal to the tokenizer's token counts, id equal to X-Request-ID, vLLM's
pairings (1:1, 1:N, N:N) and its length errors, bad bodies answered 422 in the service's error shape, the batch
limit, truncation as vLLM's truncate_prompt_tokens says, and the client key as for /predict."""

from __future__ import annotations

import math
import time

import pytest

from app.cli import main as cli
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.tiny import CORPUS, LABELS, make_head_checkpoint

pytestmark = pytest.mark.slow

LIMIT = 8  # BERTSERVE_MAX_CLIENT_BATCH_SIZE in-process
MAX_LENGTH = 64  # the tiny tokenizer's model_max_length, the exported models' max length
KEY = "vllm-client-key"
SECRET = "zqxj-client-text"  # client text that must never come back in an error

# vLLM's own examples (examples/online_serving/openai_classification_client.py, openai_cross_encoder_score.py)
PROMPTS = ["Hello, my name is", "The president of the United States is", "The capital of France is",
           "The future of AI is"]
QUESTION = "What is the capital of France?"
ANSWERS = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """`reranker` and `sentiment` checkpoints, each exported into one repository."""
    root = tmp_path_factory.mktemp("vllm")
    made = {}
    for seed, (name, labels) in enumerate([("reranker", ["relevance"]), ("sentiment", LABELS)]):
        made[name] = make_head_checkpoint(root / name, labels, None, seed)
        cli(["export", str(made[name]), "--name", name, "--model-repository", str(root / "repo"),
             "--quantize", "none"])
    return root / "repo", made


@pytest.fixture(scope="module")
def call(checkpoints):
    yield from in_process(Settings(model_repository=checkpoints[0], poll_interval_s=0, batch_autotune=False,
                                   log_level="warning", max_client_batch_size=LIMIT))


@pytest.fixture(scope="module")
def tokens(checkpoints):
    """The token count of a text or a pair, by the model's checkpoint's own tokenizer (special tokens included;
    each tiny checkpoint trains its own vocabulary)."""
    from transformers import AutoTokenizer

    tokenizers = {name: AutoTokenizer.from_pretrained(path) for name, path in checkpoints[1].items()}

    def count(model: str, text: str, pair: str | None = None) -> int:
        return len(tokenizers[model](text, pair, truncation=True, max_length=MAX_LENGTH)["input_ids"])

    return count


def predict(call, inputs, model: str, raw: bool = False) -> list[list[float]]:
    """/predict's scores for the inputs, in the model's label order."""
    r = call("POST", "/predict", json={"inputs": inputs, "model": model, "raw_scores": raw})
    assert r.status_code == 200, r.text
    order = LABELS if model == "sentiment" else ["relevance"]
    return [[{s["label"]: s["score"] for s in row}[label] for label in order] for row in r.json()]


def check_envelope(r, model: str, started: float) -> dict:
    """vLLM's envelope, field by field; the answer's JSON."""
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["object"] == "list" and body["model"] == model
    assert body["id"] == r.headers["x-request-id"] and body["id"]
    assert isinstance(body["created"], int) and int(started) <= body["created"] <= time.time() + 1
    assert r.headers["x-model-name"] == model and r.headers["x-model-version"] == "1"
    return body


def check_usage(body: dict, expected: int) -> None:
    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected, "completion_tokens": 0,
                             "prompt_tokens_details": None}


# ---- /classify ----

def test_classify_vllms_example_answers_its_shape_with_predicts_probabilities(call, tokens):
    started = time.time()
    r = call("POST", "/classify", json={"model": "sentiment", "input": PROMPTS})
    body = check_envelope(r, "sentiment", started)
    expected = predict(call, PROMPTS, "sentiment")
    assert [d["index"] for d in body["data"]] == list(range(len(PROMPTS)))
    for item, probs in zip(body["data"], expected, strict=True):
        assert set(item) == {"index", "label", "probs", "num_classes"}
        assert item["num_classes"] == 3 and item["probs"] == pytest.approx(probs, abs=1e-6)
        assert math.isclose(sum(item["probs"]), 1.0, rel_tol=1e-5)  # the head's softmax
        assert item["label"] == LABELS[max(range(3), key=item["probs"].__getitem__)]
    check_usage(body, sum(tokens("sentiment", p) for p in PROMPTS))


def test_classify_one_text_activation_false_and_a_one_logit_head(call, tokens):
    r = call("POST", "/classify", json={"model": "sentiment", "input": CORPUS[0], "activation": False},
             headers={"X-Request-ID": "my-classify-request"})
    body = check_envelope(r, "sentiment", time.time() - 60)
    assert body["id"] == "my-classify-request"
    assert len(body["data"]) == 1 and body["data"][0]["probs"] == pytest.approx(
        predict(call, [CORPUS[0]], "sentiment", raw=True)[0], abs=1e-5)  # logits
    check_usage(body, tokens("sentiment", CORPUS[0]))
    one = call("POST", "/classify", json={"model": "reranker", "input": CORPUS[:2]}).json()
    assert [d["num_classes"] for d in one["data"]] == [1, 1] and [d["label"] for d in one["data"]] == ["relevance"] * 2
    assert [d["probs"][0] for d in one["data"]] == pytest.approx(
        [row[0] for row in predict(call, CORPUS[:2], "reranker")], abs=1e-6)
    assert all(0 < d["probs"][0] < 1 for d in one["data"])  # the head's sigmoid


# ---- /score ----

def rerank_scores(call, query: str, documents: list[str]) -> list[float]:
    r = call("POST", "/rerank", json={"model": "reranker", "query": query, "texts": documents})
    assert r.status_code == 200, r.text
    return [score for _, score in sorted((x["index"], x["score"]) for x in r.json())]


def test_score_one_to_one_vllms_example(call, tokens):
    started = time.time()
    r = call("POST", "/score", json={"model": "reranker", "text_1": "What is the capital of Brazil?",
                                     "text_2": "The capital of Brazil is Brasilia."})
    body = check_envelope(r, "reranker", started)
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"index", "object", "score"}
    assert body["data"][0]["index"] == 0 and body["data"][0]["object"] == "score"
    expected = predict(call, [["What is the capital of Brazil?", "The capital of Brazil is Brasilia."]], "reranker")
    assert body["data"][0]["score"] == pytest.approx(expected[0][0], abs=1e-6)
    check_usage(body, tokens("reranker", "What is the capital of Brazil?", "The capital of Brazil is Brasilia."))


@pytest.mark.parametrize("text_1", [QUESTION, [QUESTION]])  # one text, or a list of one: 1:N either way
def test_score_one_to_many_is_reranks_scores_in_order(call, tokens, text_1):
    documents = ANSWERS + CORPUS[:3]
    body = check_envelope(call("POST", "/score", json={"model": "reranker", "text_1": text_1, "text_2": documents}),
                          "reranker", time.time() - 60)
    assert [d["index"] for d in body["data"]] == list(range(len(documents)))  # the request's order, not ranked
    assert [d["score"] for d in body["data"]] == pytest.approx(rerank_scores(call, QUESTION, documents), abs=1e-6)
    check_usage(body, sum(tokens("reranker", QUESTION, d) for d in documents))


def test_score_many_to_many_pairs_in_order(call, tokens):
    queries = [QUESTION, "What is the capital of Brazil?", CORPUS[0]]
    documents = [ANSWERS[1], ANSWERS[0], CORPUS[1]]
    body = check_envelope(call("POST", "/score", json={"model": "reranker", "text_1": queries, "text_2": documents}),
                          "reranker", time.time() - 60)
    expected = predict(call, [list(pair) for pair in zip(queries, documents, strict=True)], "reranker")
    assert [d["score"] for d in body["data"]] == pytest.approx([row[0] for row in expected], abs=1e-6)
    check_usage(body, sum(tokens("reranker", q, d) for q, d in zip(queries, documents, strict=True)))
    raw = call("POST", "/score", json={"model": "reranker", "text_1": queries, "text_2": documents,
                                       "activation": False}).json()
    logits = predict(call, [list(pair) for pair in zip(queries, documents, strict=True)], "reranker", raw=True)
    assert [d["score"] for d in raw["data"]] == pytest.approx([row[0] for row in logits], abs=1e-5)


@pytest.mark.parametrize("text_1, text_2, message", [
    (["a b", "c d"], ["e", "f", "g"], "Input lengths must be either 1:1, 1:N or N:N"),
    (["a b", "c d"], "e", "Input lengths must be either 1:1, 1:N or N:N"),  # N:1 is not one of vLLM's
    ([], ["e"], "At least one text element must be given"),
    ("a", [], "At least one text_pair element must be given"),
])
def test_score_lengths_refused_as_vllm_refuses_them(call, text_1, text_2, message):
    r = call("POST", "/score", json={"model": "reranker", "text_1": text_1, "text_2": text_2})
    assert r.status_code == 422 and r.json()["error_type"] == "validation" and message in r.json()["error"]


def test_score_on_a_multi_label_model_names_its_labels(call):
    r = call("POST", "/score", json={"model": "sentiment", "text_1": SECRET, "text_2": [SECRET]})
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert "sentiment" in message and "negative, neutral, positive" in message and "one-logit" in message
    assert SECRET not in message


# ---- bad bodies, limits, truncation, keys ----

@pytest.mark.parametrize("path, body, where", [
    ("/classify", {"model": "sentiment", "input": ""}, "input"),
    ("/classify", {"model": "sentiment", "input": []}, "input"),
    ("/classify", {"model": "sentiment", "input": ["ok", ""]}, "input[1]"),
    ("/classify", {"model": "sentiment", "input": ["ok", 5]}, "input[1]"),
    ("/classify", {"model": "sentiment"}, "input"),
    ("/classify", {"model": "sentiment", "input": "ok", "temperature": 1}, "not part of the API"),
    ("/classify", {"model": "sentiment", "input": "ok", "priority": 1}, "priority"),
    ("/classify", {"model": "sentiment", "input": "ok", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    ("/score", {"model": "reranker", "text_1": "", "text_2": "b"}, "text_1"),
    ("/score", {"model": "reranker", "text_1": "a", "text_2": ["b", ""]}, "text_2[1]"),
    ("/score", {"model": "reranker", "text_1": "a"}, "text_2"),
    ("/score", {"model": "reranker", "text_1": {"content": []}, "text_2": "b"}, "text_1"),
])
def test_bad_bodies_are_422_in_the_services_error_shape(call, path, body, where):
    r = call("POST", path, json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "error_type"} and r.json()["error_type"] == "validation"
    assert where in r.json()["error"]


def test_not_json_unknown_model_and_the_batch_limit(call):
    r = call("POST", "/classify", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert call("POST", "/classify", json={"model": "no-such-model", "input": "ok"}).status_code == 404
    over = call("POST", "/classify", json={"model": "sentiment", "input": ["ok"] * (LIMIT + 1)})
    assert over.status_code == 422 and f"the limit is {LIMIT}" in over.json()["error"]
    pairs = call("POST", "/score", json={"model": "reranker", "text_1": "q", "text_2": ["d"] * (LIMIT + 1)})
    assert pairs.status_code == 422 and f"the limit is {LIMIT}" in pairs.json()["error"]
    assert call("POST", "/score", json={"model": "reranker", "text_1": "q", "text_2": ["d"] * LIMIT}).status_code == 200


def test_truncation_follows_truncate_prompt_tokens(call, tokens):
    long = "great " * 100
    for asked in (None, -1, MAX_LENGTH, 512):  # left out: cut, as /predict cuts (vLLM would refuse)
        r = call("POST", "/classify", json={"model": "sentiment", "input": long, "truncate_prompt_tokens": asked})
        assert r.status_code == 200, r.text
        check_usage(r.json(), MAX_LENGTH)
        assert r.json()["data"][0]["probs"] == pytest.approx(predict(call, [long], "sentiment")[0], abs=1e-6)
    fewer = call("POST", "/score", json={"model": "reranker", "text_1": "q", "text_2": "d",
                                         "truncate_prompt_tokens": 10})
    assert fewer.status_code == 422 and f"max length ({MAX_LENGTH} tokens" in fewer.json()["error"]


def test_a_client_key_is_needed_as_for_predict(checkpoints):
    keyed = in_process(Settings(model_repository=checkpoints[0], poll_interval_s=0, batch_autotune=False,
                                log_level="warning", api_keys=KEY))
    call = next(keyed)
    try:
        for path, body in (("/classify", {"input": "ok", "model": "sentiment"}),
                           ("/score", {"text_1": "q", "text_2": "d", "model": "reranker"})):
            assert call("POST", path, json=body).status_code == 401
            assert call("POST", path, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert call("POST", path, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert call("POST", "/predict", json={"inputs": "ok", "model": "sentiment"}).status_code == 401
    finally:
        next(keyed, None)  # in_process's own clean-up, after its yield


def test_both_routes_are_documented_with_their_bodies(call):
    spec = call("GET", "/openapi.json").json()
    for path, fields in (("/classify", {"model", "input", "truncate_prompt_tokens", "activation"}),
                         ("/score", {"model", "text_1", "text_2", "truncate_prompt_tokens", "activation"})):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert fields <= set(body["properties"]) and "422" in operation["responses"]
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer["$ref"].endswith("ClassificationResponse" if path == "/classify" else "ScoreResponse")
