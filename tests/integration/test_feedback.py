"""The prediction log and POST /feedback on the real app in-process (the tiny model, real onnxruntime): answers
logged and joined, every refusal with its reason (never a silent 200), live_quality in GET /models/{name}, the
feedback records in the log, and requests answered while the HTTP sink hangs or refuses (real sockets)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from prometheus_client import REGISTRY

from app import prediction_log
from app.settings import Settings
from tests.support.apps import in_process_with_service
from tests.support.receiver import Receiver
from tests.support.servers import free_port

KEY = "feedback-client-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _app(repo, **settings):
    settings = Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, log_level="warning",
                        **settings)
    for call, service in in_process_with_service(settings):
        yield call, service
        if (log := prediction_log.of(service)) is not None:
            log.close()


@pytest.fixture
def logged(tiny_model_repo, tmp_path):
    yield from _app(tiny_model_repo, prediction_log_dir=tmp_path / "log", api_keys=KEY)


@pytest.fixture(scope="module")
def shared(tiny_model_repo, tmp_path_factory):
    """One app for the refusals (each on its own prediction)."""
    yield from _app(tiny_model_repo, prediction_log_dir=tmp_path_factory.mktemp("log"), api_keys=KEY)


def _feedback_total(**labels) -> float:
    return REGISTRY.get_sample_value("bertserve_feedback_total", {"model": "tiny", "version": "1", **labels}) or 0


def test_feedback_is_joined_once_per_text_and_counted(logged, tmp_path):
    call, service = logged
    r = call("POST", "/predict", json={"inputs": ["great pill", "awful pill"]}, headers=AUTH)
    assert r.status_code == 200
    rid, top = r.headers["x-request-id"], [answer[0]["label"] for answer in r.json()]
    wrong = next(label for label in ("negative", "neutral", "positive") if label != top[1])
    before = _feedback_total(label=top[0], predicted=top[0])

    r = call("POST", "/feedback", json={"id": rid, "label": top[0]}, headers=AUTH)  # right at once: no wait needed
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "feedback": [{"id": rid, "index": 0, "model": "tiny", "version": "1",
                                                     "predicted": top[0], "correct": True}]}
    assert _feedback_total(label=top[0], predicted=top[0]) == before + 1
    r = call("POST", "/feedback", json={"id": rid, "label": top[0]}, headers=AUTH)
    assert r.status_code == 409 and r.json()["error_type"] == "conflict" and "already has feedback" in r.text
    # A list is all or none: its second item conflicts, so its first is not recorded either.
    r = call("POST", "/feedback", json=[{"id": rid, "index": 1, "label": wrong}, {"id": rid, "label": top[0]}],
             headers=AUTH)
    assert r.status_code == 409
    r = call("POST", "/feedback", json=[{"id": rid, "index": 1, "label": wrong}], headers=AUTH)
    assert r.status_code == 200 and r.json()["feedback"][0]["correct"] is False

    quality = {m["version"]: m["live_quality"] for m in call("GET", "/models/tiny", headers=AUTH).json()}
    assert quality == {1: {"feedback": 2, "correct": 1, "accuracy": 0.5}}

    prediction_log.of(service).close()
    records = [json.loads(line) for f in (tmp_path / "log").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [r["type"] for r in records] == ["prediction", "feedback", "feedback"]
    assert [r["items"][0]["label"] for r in records[:1]] == top[:1] and records[0]["id"] == rid
    feedback = records[1]
    assert {k: feedback[k] for k in ("id", "index", "model", "version", "label", "predicted")} == {
        "id": rid, "index": 0, "model": "tiny", "version": "1", "label": top[0], "predicted": top[0]}
    assert len(feedback["key"]) == 16 and KEY not in json.dumps(records)  # a fingerprint, never the key


@pytest.mark.parametrize("body, status, says", [
    ({"id": "never-logged-1", "label": "positive"}, 404, "a request not sampled"),
    ({"id": "ID", "index": 5, "label": "positive"}, 404, "logged 1 text(s); index 5 is not one of them"),
    ({"id": "ID", "label": "joyful"}, 422, "one of the labels of model tiny version 1"),
    ({"id": "ID", "label": 0.5}, 422, "one of the labels"),
    ({"id": "ID"}, 422, "label"),
    ({"id": "not an id!", "label": "positive"}, 422, "id"),
    ([], 422, "at least 1 item"),
])
def test_feedback_that_cannot_be_joined_says_why(shared, monkeypatch, body, status, says):
    monkeypatch.setattr(prediction_log, "FEEDBACK_WAIT_S", 0.2)  # how long an unknown id is looked for
    call, _ = shared
    rid = call("POST", "/predict", json={"inputs": "great pill"}, headers=AUTH).headers["x-request-id"]
    if isinstance(body, dict) and body.get("id") == "ID":
        body["id"] = rid
    r = call("POST", "/feedback", json=body, headers=AUTH)
    assert r.status_code == status and says in r.json()["error"], r.text
    assert call("POST", "/feedback", json={"id": rid, "label": "neutral"}, headers=AUTH).status_code == 200


def test_feedback_needs_a_key_like_predict(logged):
    call, _ = logged
    assert call("POST", "/feedback", json={"id": "x", "label": "positive"}).status_code == 401


def test_a_request_not_sampled_takes_no_feedback(tiny_model_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(prediction_log, "FEEDBACK_WAIT_S", 0.2)
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    (repo / "tiny" / "serving.json").write_text(json.dumps({"prediction_log": {"sample": 0}}))
    for call, _ in _app(repo, prediction_log_dir=tmp_path / "log"):
        rid = call("POST", "/predict", json={"inputs": "great pill"}).headers["x-request-id"]
        r = call("POST", "/feedback", json={"id": rid, "label": "positive"})
        assert r.status_code == 404 and "not sampled" in r.json()["error"]


@pytest.mark.parametrize("settings, says", [
    ({}, "BERTSERVE_PREDICTION_LOG_DIR, which is not set"),
    ({"prediction_log_url": "http://127.0.0.1:9/x"}, "only BERTSERVE_PREDICTION_LOG_URL is"),
])
def test_without_a_log_folder_feedback_says_it_is_off(tiny_model_repo, settings, says):
    for call, service in _app(tiny_model_repo, **settings):
        assert "live_quality" not in call("GET", "/models/tiny").json()[0]
        r = call("POST", "/feedback", json={"id": "x", "label": "positive"})
        assert r.status_code == 404 and says in r.json()["error"]


@pytest.mark.parametrize("sink", ["hangs", "refuses"])
def test_requests_are_answered_and_joined_whatever_the_http_sink_does(tiny_model_repo, tmp_path, monkeypatch,
                                                                      sink):
    """A receiver that never answers (the sender held in its POST for the whole test) or a port that refuses:
    every request is answered and its feedback joined, through the folder's index, all the same."""
    monkeypatch.setattr(prediction_log, "HTTP_TIMEOUT_S", 120.0)
    with Receiver(hang=True) as receiver:
        url = receiver.url if sink == "hangs" else f"http://127.0.0.1:{free_port()}/events"
        for call, service in _app(tiny_model_repo, prediction_log_dir=tmp_path / "log", prediction_log_url=url):
            ids = []
            for k in range(20):
                r = call("POST", "/predict", json={"inputs": f"great pill {k}"})
                assert r.status_code == 200
                ids.append(r.headers["x-request-id"])
            if sink == "hangs":
                assert len(receiver.wait_for(1)) == 1  # held there: none answered
            for rid in ids:
                assert call("POST", "/feedback", json={"id": rid, "label": "positive"}).status_code == 200
            if sink == "refuses":
                deadline = time.monotonic() + 30
                while (REGISTRY.get_sample_value("bertserve_prediction_log_dropped_total",
                                                 {"model": "tiny", "reason": "sink_error"}) or 0) < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            receiver.release.set()


@pytest.mark.slow
def test_token_and_zero_shot_answers_are_logged_and_refuse_feedback_naming_the_task(tmp_path):
    """A token model's entities (their words only with text full) and a zero-shot answer's candidates are logged;
    feedback on either is a 422 naming the task."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from app.cli import main as cli
    from tests.support.tiny import make_tiny_checkpoint, make_token_checkpoint

    repo = tmp_path / "repo"
    tokens = make_token_checkpoint(tmp_path / "ner", "bert")
    nli = make_tiny_checkpoint(tmp_path / "nli", "bert")
    labels = ["contradiction", "neutral", "entailment"]
    config = AutoConfig.from_pretrained(nli, id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(nli)
    for name, path in (("ner", tokens), ("nli", nli)):
        cli(["export", str(path), "--name", name, "--quantize", "none", "--model-repository", str(repo)])
    for call, service in _app(repo, prediction_log_dir=tmp_path / "log", provider="cpu"):
        ner = call("POST", "/predict", json={"model": "ner", "inputs": "my doctor changed the dose"})
        zero = call("POST", "/predict", json={"model": "nli", "inputs": "great treatment",
                                              "parameters": {"candidate_labels": ["doctor", "medicine"]}})
        assert ner.status_code == zero.status_code == 200, (ner.text, zero.text)
        for answer, task in ((ner, "token-classification"), (zero, "zero-shot-classification")):
            r = call("POST", "/feedback", json={"id": answer.headers["x-request-id"], "label": "doctor"})
            assert r.status_code == 422 and f"as {task}" in r.json()["error"], r.text
        prediction_log.of(service).close()
    records = {r["task"]: r for f in (tmp_path / "log").glob("*.jsonl") for r in map(json.loads, f.read_text()
                                                                                        .splitlines())}
    assert records["zero-shot-classification"]["items"][0]["scores"].keys() == {"doctor", "medicine"}
    entities = records["token-classification"]["items"][0]["entities"]
    assert isinstance(entities, list) and all("word" not in e for e in entities)
