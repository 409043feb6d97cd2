"""Explanations by occlusion: the pure parts by tables (features and their offsets, grouping, occluded variants,
weights), then /explain and KServe V1's :explain on the tiny model in-process (httpx ASGITransport)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from app.explain import Feature, features, occluded, weights
from app.main import create_app
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.sessions import HeldUntil

TEXT = "  Great pills,\tno side-effects!  "


@pytest.mark.parametrize("text, max_features, expected", [
    (TEXT, 64, ["Great", "pills,", "no", "side-effects!"]),          # words keep their punctuation
    (TEXT, 2, ["Great pills,", "no side-effects!"]),                  # consecutive groups of equal size
    ("a b c d e", 2, ["a b c", "d e"]),                               # the larger groups first
    ("a b c d e", 3, ["a b", "c d", "e"]),
    ("one", 5, ["one"]),
    ("   ", 5, []),
])
def test_features_slice_the_original_text(text, max_features, expected):
    found = features(text, max_features)
    assert [text[f.start:f.end] for f in found] == expected
    assert sum(f.words for f in found) == len(text.split())


def test_an_occluded_variant_lacks_exactly_its_feature():
    [great, pills, no, side] = features(TEXT, 64)
    assert occluded(TEXT, pills).split() == ["Great", "no", "side-effects!"]
    assert occluded(TEXT, great).split() == ["pills,", "no", "side-effects!"]
    assert occluded("x", Feature(0, 1, 1)) == ""


def test_weights_are_the_probability_lost_without_each_feature():
    full = np.array([0.2, 0.8])
    without = np.array([[0.5, 0.5], [0.1, 0.9], [0.2, 0.8]])
    assert np.allclose(weights(full, without, label=1), [0.3, -0.1, 0.0])
    assert np.allclose(weights(full, without, label=0), [-0.3, 0.1, 0.0])


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                   max_client_batch_size=2, max_queue_size=40, log_level="warning"))


REVIEW = "This medicine worked wonders, no side effects at all."


def test_explain_answers_the_prediction_and_a_weight_per_word(call):
    r = call("POST", "/explain", json={"inputs": REVIEW})
    assert r.status_code == 200 and r.headers["x-model-name"] == "tiny", r.text
    body = r.json()
    predicted = call("POST", "/predict", json={"inputs": REVIEW}).json()
    assert [p["label"] for p in body["prediction"]] == [p["label"] for p in predicted]
    assert np.allclose([p["score"] for p in body["prediction"]], [p["score"] for p in predicted], atol=1e-5)
    assert body["label"] == predicted[0]["label"] and body["score"] == pytest.approx(predicted[0]["score"], abs=1e-5)
    assert [f["text"] for f in body["features"]] == REVIEW.split()
    assert all(REVIEW[f["start"]:f["end"]] == f["text"] for f in body["features"])
    assert any(f["weight"] != 0 for f in body["features"])


def test_explain_a_target_label_and_grouped_features(call):
    body = call("POST", "/explain", json={"inputs": REVIEW, "target": "negative", "max_features": 3}).json()
    assert body["label"] == "negative" and len(body["features"]) == 3
    assert " ".join(f["text"] for f in body["features"]) == REVIEW
    scores = {p["label"]: p["score"] for p in body["prediction"]}
    assert body["score"] == pytest.approx(scores["negative"])


@pytest.mark.parametrize("payload, status, message", [
    ({"inputs": REVIEW, "target": "elated"}, 422, "target is not a label of model tiny"),
    ({"inputs": ""}, 422, "inputs"),
    ({"inputs": [REVIEW]}, 422, "inputs"),                                   # one text per explanation
    ({"inputs": REVIEW, "max_features": 0}, 422, "max_features"),
    ({"inputs": REVIEW, "max_features": 257}, 422, "max_features"),
    ({"inputs": REVIEW, "timeout_ms": 9}, 422, "timeout_ms"),                 # the documented floor: 10 ms
    ({"inputs": REVIEW, "model": "nope"}, 404, "'nope' is not served"),
])
def test_bad_explain_requests_get_their_json_error(call, payload, status, message):
    r = call("POST", "/explain", json=payload)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_a_v1_explanation_that_can_never_fit_the_queue_is_422_not_429(call):
    """Each instance fits the 40-sequence queue alone (24 features + itself), the submission (25 + 25) never
    does: refused as invalid (422), as /explain refuses one that can never fit, not 429 for ever."""
    instances = [" ".join(["great"] * 24), " ".join(["day"] * 24)]
    options = {"max_features": 24}
    for text in instances:
        alone = call("POST", "/v1/models/tiny:explain", json={"instances": [text], "parameters": options})
        assert alone.status_code == 200 and len(alone.json()["explanations"][0]["features"]) == 24, alone.text
    r = call("POST", "/v1/models/tiny:explain", json={"instances": instances, "parameters": options})
    assert r.status_code == 422 and "needs 50 sequences" in r.json()["error"], r.text
    assert "queue limit of 40" in r.json()["error"]


def test_explanations_are_counted_apart_from_predictions(call):
    before = call("GET", "/metrics").text
    call("POST", "/explain", json={"inputs": "fine"})
    after = call("GET", "/metrics").text

    def count(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and 'status="200"' in line)

    assert count(after, "bertserve_explanations_total") == count(before, "bertserve_explanations_total") + 1
    assert count(after, "bertserve_requests_total") == count(before, "bertserve_requests_total")


def test_kserve_v1_explain(call):
    r = call("POST", "/v1/models/tiny:explain", json={"instances": [REVIEW, "awful"], "parameters": {"max_features": 4}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == len(body["explanations"]) == 2
    assert body["predictions"][0] == call("POST", "/predict", json={"inputs": REVIEW}).json()[0]["label"]
    assert [len(e["features"]) for e in body["explanations"]] == [4, 1]
    assert call("POST", "/v1/models/tiny:explain", json={"instances": ["a", "b", "c"]}).status_code == 422
    assert call("POST", "/v1/models/nope:explain", json={"instances": ["a"]}).status_code == 404


def test_openapi_documents_both_verbs(call):
    paths = call("GET", "/openapi.json").json()["paths"]
    assert "/explain" in paths and "/v1/models/{name}:explain" in paths
    body = paths["/explain"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"inputs", "target", "max_features"} <= set(body["properties"])


def test_an_explanation_that_does_not_fit_the_queue_now_is_429(tiny_model_repo):
    """The engine sessions are held (as a long batch would hold them) while 8 sequences fill most of a 12-sequence
    queue: an explanation needing 6 sequences is refused at once with 429 and Retry-After, not queued; once the
    queue empties it is answered. A condition, not a race."""

    async def scenario():
        app = create_app(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                  max_queue_size=12, max_client_batch_size=8, log_level="warning"))
        service = app.state.service
        await service.load_all()
        served = service.resolve("tiny")
        held = [served._idle.get() for _ in served.engines]
        released = threading.Event()  # the low-load (all-core) session is held too, until the sessions are given back
        if served.wide is not None:
            served.wide = HeldUntil(served.wide, released)
        filler = asyncio.create_task(served.batcher.submit(["filler"] * 8))
        while served.batcher.load < 8:
            await asyncio.sleep(0.001)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as client:
            refused = await client.post("/explain", json={"inputs": "one two three four five"})
            load_after = served.batcher.load
            for engine in held:
                served._idle.put(engine)
            released.set()
            await filler
            answered = await client.post("/explain", json={"inputs": "one two three four five"})
        await service.close()
        return refused, load_after, answered

    refused, load_after, answered = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.json()["error_type"] == "overloaded", refused.text
    assert int(refused.headers["retry-after"]) >= 1 and load_after == 8  # nothing of it was queued
    assert answered.status_code == 200 and len(answered.json()["features"]) == 5
