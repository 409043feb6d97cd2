"""The real demo model (fine-tuned MiniLM-L6, INT8) served end to end. Built once by `make test` beforehand."""

from __future__ import annotations

import httpx
import pytest

from tests.support.paths import DEMO_MODEL
from tests.support.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.process]

POSITIVE = (
    "This medication changed my life. After two weeks my pain was gone, I sleep through the night and I have "
    "had no side effects at all. Highly recommend it."
)
NEGATIVE = (
    "Worst drug I have ever taken. Terrible nausea, constant headaches and dizziness, and it did not help my "
    "symptoms at all. I stopped after a week and will never take it again."
)


@pytest.fixture(scope="module")
def demo_server(demo_repository):
    # onnxruntime's CPU engine: what is tested is the artifact the export's gate chose (auto may keep the more
    # faithful OpenVINO on the fp32 graph within the engine choice's confidence margin)
    server = Server(demo_repository, wait_ready=False, env={"BERTSERVE_PROVIDER": "cpu"})
    # Loading, warm-up and batch autotuning of MiniLM take seconds: readiness must say so meanwhile.
    first_ready = httpx.get(server.url + "/health/ready", timeout=10)
    server.wait_until("/health/ready")
    yield server, first_ready
    server.stop()


def test_not_ready_until_warmed_up(demo_server):
    _, first_ready = demo_server
    assert first_ready.status_code == 503 and first_ready.json()["status"] == "loading"


def test_clear_reviews_get_the_right_sentiment(demo_server):
    server, _ = demo_server
    r = httpx.post(server.url + "/predict", json={"inputs": [POSITIVE, NEGATIVE]}, timeout=30)
    assert r.status_code == 200
    positive, negative = r.json()
    assert positive[0]["label"] == "positive"
    assert negative[0]["label"] == "negative"
    assert r.headers["x-model-name"] == DEMO_MODEL


def test_demo_model_serves_the_artifact_its_quantization_gate_chose(demo_server):
    server, _ = demo_server
    [info] = httpx.get(server.url + f"/models/{DEMO_MODEL}").json()
    assert info["provider"] == "cpu" and info["state"] == "ready"
    assert info["labels"] == ["negative", "neutral", "positive"] and info["max_length"] == 128
    attempts = info["report"]["gate"]["attempts"]
    passed = [a for a in attempts if a["passed"]]
    if passed:  # the cheapest recipe that passed the gate is the INT8 artifact served on CPU
        assert info["quantization"] == passed[0]["recipe"]
        assert passed[0]["agreement"] >= info["report"]["gate"]["min_agreement"]
    else:  # no INT8 recipe passed: build-demo published fp32 only
        assert info["quantization"] == "fp32"


@pytest.mark.parametrize("text, strong", [
    ("The pills are excellent.", "excellent."),
    ("I took it for my back pain and it works great.", "great."),
])
def test_explanation_gives_the_strong_word_the_largest_positive_weight(demo_server, text, strong):
    server, _ = demo_server
    r = httpx.post(server.url + "/explain", json={"inputs": text}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    predicted = httpx.post(server.url + "/predict", json={"inputs": text}, timeout=30).json()
    assert [p["label"] for p in body["prediction"]] == [p["label"] for p in predicted]
    assert body["label"] == predicted[0]["label"] == "positive"
    top = max(body["features"], key=lambda f: f["weight"])
    assert top["text"] == strong and top["weight"] > 0 and text[top["start"]:top["end"]] == strong
    print(f"\n{text!r}: " + ", ".join(f"{f['text']} {f['weight']:+.3f}" for f in body["features"]))
