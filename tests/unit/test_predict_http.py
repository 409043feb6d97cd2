"""/predict, health, models and the OpenAPI document over HTTP, in-process (the real app over httpx's ASGITransport,
the tiny model's real sessions, default settings as `bertserve serve` has them): answer shapes, Hugging Face
parameters, truncation, every bad input's JSON error, the body limits. No process boundary is under test here;
a real `bertserve serve` (workers, clients, start-up) is tests/integration/test_serving.py."""

from __future__ import annotations

import math

import httpx
import pytest

from app.settings import Settings
from tests.support.apps import in_process
from tests.support.metrics import metric
from tests.support.tiny import REVIEW

LABELS = {"negative", "neutral", "positive"}


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, log_level="warning"))


def post(call, body) -> httpx.Response:
    return call("POST", "/predict", json=body)


def test_single_text_gets_every_label_sorted_with_softmax_scores(call):
    r = post(call, {"inputs": REVIEW})
    assert r.status_code == 200
    scores = r.json()
    assert {s["label"] for s in scores} == LABELS
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    assert math.isclose(sum(s["score"] for s in scores), 1.0, rel_tol=1e-5)
    assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"


def test_batch_answers_one_list_per_text_in_order_and_matches_single_calls(call):
    texts = [REVIEW, "terrible side effects", "it was okay , nothing special", "headache"]
    r = post(call, {"inputs": texts})
    assert r.status_code == 200
    batch = r.json()
    assert len(batch) == len(texts)
    for text, scores in zip(texts, batch):
        single = post(call, {"inputs": text}).json()
        assert [s["label"] for s in scores] == [s["label"] for s in single]
        for a, b in zip(scores, single):
            assert math.isclose(a["score"], b["score"], abs_tol=1e-5)


def test_raw_scores_and_hugging_face_parameters(call):
    soft = {s["label"]: s["score"] for s in post(call, {"inputs": REVIEW}).json()}
    raw = {s["label"]: s["score"] for s in post(call, {"inputs": REVIEW, "raw_scores": True}).json()}
    z = sum(math.exp(v) for v in raw.values())
    for label in LABELS:
        assert math.isclose(soft[label], math.exp(raw[label]) / z, rel_tol=1e-4)
    sig = post(call, {"inputs": REVIEW, "parameters": {"function_to_apply": "sigmoid", "top_k": 2}}).json()
    assert len(sig) == 1 and len(sig[0]) == 2  # the HF Inference API shape: nested even for one text
    for s in sig[0]:
        assert math.isclose(s["score"], 1 / (1 + math.exp(-raw[s["label"]])), rel_tol=1e-4)


def test_truncation(call):
    long_text = " ".join(["great"] * 500)
    cut = post(call, {"inputs": [REVIEW, long_text]})
    assert cut.status_code == 200 and cut.headers["X-Truncated-Texts"] == "1"  # the answer says it cut one
    whole = post(call, {"inputs": [REVIEW, long_text], "truncate": False})  # read whole, in windows
    assert whole.status_code == 200 and whole.headers["X-Truncated-Texts"] == "0"
    assert whole.json()[0] == cut.json()[0] and len(whole.json()) == 2


@pytest.mark.parametrize(
    "body, content_type, status",
    [
        (b'{"inputs": ', "application/json", 422),  # malformed JSON
        (b'{"inputs": 5}', "application/json", 422),  # wrong type
        (b"{}", "application/json", 422),  # missing inputs
        (b'{"inputs": ""}', "application/json", 422),  # empty string
        (b'{"inputs": []}', "application/json", 422),  # empty list
        (b'{"inputs": ["ok", 3]}', "application/json", 422),  # non-string item
        (b'{"inputs": "ok", "colour": "red"}', "application/json", 422),  # unknown field
        (b'{"inputs": "\xff\xfe"}', "application/json", 422),  # invalid UTF-8
        (b'{"inputs": "ok"}', "text/plain", 415),  # wrong content type
        (b'{"inputs": "ok", "model": "nope"}', "application/json", 404),  # unknown model
    ],
)
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(call, body, content_type, status):
    r = call("POST", "/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == status
    assert set(r.json()) == {"error", "error_type"}
    assert "Traceback" not in r.text
    assert post(call, {"inputs": REVIEW}).status_code == 200


def test_too_many_inputs_and_too_large_body(call):
    r = post(call, {"inputs": ["a"] * 33})
    assert r.status_code == 422 and "limit is 32" in r.json()["error"]
    r = call("POST", "/predict", content=b'{"inputs": "' + b"a" * 2_000_000 + b'"}',
             headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"


def test_health_models_docs(call):
    assert call("GET", "/health/live").json() == {"status": "alive"}
    ready = call("GET", "/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"tiny": {"1": "ready"}}
    [model] = call("GET", "/models").json()
    assert model["name"] == "tiny" and model["version"] == 1 and model["state"] == "ready"
    assert model["labels"] == ["negative", "neutral", "positive"] and model["max_length"] == 64
    # The engine was chosen by measurement between the candidates this machine has (OpenVINO on Intel CPUs).
    [chosen] = [c for c in model["engine"]["candidates"] if c["chosen"]]
    assert (model["provider"], model["artifact"], model["precision"]) == (
        chosen["provider"], chosen["artifact"], chosen["precision"])
    assert model["provider"] in ("cpu", "openvino") and model["quantization"] == "fp32"
    assert model["batching"]["autotuned"] is True and model["batching"]["max_batch_size"] >= 1
    [version] = call("GET", "/models/tiny").json()
    assert version["name"] == "tiny" and version["default"] is True
    assert call("GET", "/models/nope").status_code == 404
    spec = call("GET", "/openapi.json").json()
    assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert "inputs" in spec["components"]["schemas"]["PredictRequest"]["properties"]
    assert call("GET", "/docs").status_code == 200


def test_unknown_route_uses_the_error_shape(call):
    r = call("GET", "/nowhere")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"


def test_provider_reported_in_metrics(call):
    [model] = call("GET", "/models").json()
    text = call("GET", "/metrics").text
    assert metric(text, "bertserve_model_info", model="tiny", version="1", provider=model["provider"],
                  quantization="fp32", artifact="model.onnx", precision=model["precision"]) == 1
