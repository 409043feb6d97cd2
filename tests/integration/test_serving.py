"""A real `bertserve serve` on 127.0.0.1 serving a tiny real BERT through onnxruntime, spoken to over HTTP."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import ROOT, hammer, metric, post, worker_pids

REVIEW = "this medicine worked wonders and i feel great"
LABELS = {"negative", "neutral", "positive"}


def test_single_text_gets_every_label_sorted_with_softmax_scores(tiny_server):
    r = post(tiny_server, {"inputs": REVIEW})
    assert r.status_code == 200
    scores = r.json()
    assert {s["label"] for s in scores} == LABELS
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    assert math.isclose(sum(s["score"] for s in scores), 1.0, rel_tol=1e-5)
    assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"


def test_batch_answers_one_list_per_text_in_order_and_matches_single_calls(tiny_server):
    texts = [REVIEW, "terrible side effects", "it was okay , nothing special", "headache"]
    r = post(tiny_server, {"inputs": texts})
    assert r.status_code == 200
    batch = r.json()
    assert len(batch) == len(texts)
    for text, scores in zip(texts, batch):
        single = post(tiny_server, {"inputs": text}).json()
        assert [s["label"] for s in scores] == [s["label"] for s in single]
        for a, b in zip(scores, single):
            assert math.isclose(a["score"], b["score"], abs_tol=1e-5)


def test_raw_scores_and_hugging_face_parameters(tiny_server):
    soft = {s["label"]: s["score"] for s in post(tiny_server, {"inputs": REVIEW}).json()}
    raw = {s["label"]: s["score"] for s in post(tiny_server, {"inputs": REVIEW, "raw_scores": True}).json()}
    z = sum(math.exp(v) for v in raw.values())
    for label in LABELS:
        assert math.isclose(soft[label], math.exp(raw[label]) / z, rel_tol=1e-4)
    sig = post(tiny_server, {"inputs": REVIEW, "parameters": {"function_to_apply": "sigmoid", "top_k": 2}}).json()
    assert len(sig) == 1 and len(sig[0]) == 2  # the HF Inference API shape: nested even for one text
    for s in sig[0]:
        assert math.isclose(s["score"], 1 / (1 + math.exp(-raw[s["label"]])), rel_tol=1e-4)


def test_hugging_face_inference_client_works_against_the_server(tiny_server):
    # The client refuses every URL, even loopback, under HF_HUB_OFFLINE=1, so it runs in a process without it;
    # it talks to nothing but this server.
    code = f"""
from huggingface_hub import InferenceClient
client = InferenceClient(model="{tiny_server.url}/predict")
out = client.text_classification({REVIEW!r})
assert sorted(o.label for o in out) == ["negative", "neutral", "positive"], out
assert out[0].score >= out[1].score >= out[2].score, out
top = client.text_classification({REVIEW!r}, top_k=1)
assert len(top) == 1 and top[0].label == out[0].label, top
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_truncation(tiny_server):
    long_text = " ".join(["great"] * 500)
    assert post(tiny_server, {"inputs": long_text}).status_code == 200
    r = post(tiny_server, {"inputs": [REVIEW, long_text], "truncate": False})
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation" and "truncate is false" in r.json()["error"]


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
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(tiny_server, body, content_type, status):
    r = httpx.post(tiny_server.url + "/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == status
    assert set(r.json()) == {"error", "error_type"}
    assert "Traceback" not in r.text
    assert post(tiny_server, {"inputs": REVIEW}).status_code == 200


def test_too_many_inputs_and_too_large_body(tiny_server):
    r = post(tiny_server, {"inputs": ["a"] * 33})
    assert r.status_code == 422 and "limit is 32" in r.json()["error"]
    r = httpx.post(tiny_server.url + "/predict", content=b'{"inputs": "' + b"a" * 2_000_000 + b'"}',
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"


def test_health_models_docs(tiny_server):
    assert httpx.get(tiny_server.url + "/health/live").json() == {"status": "alive"}
    ready = httpx.get(tiny_server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {"tiny": {"1": "ready"}}
    [model] = httpx.get(tiny_server.url + "/models").json()
    assert model["name"] == "tiny" and model["version"] == 1 and model["state"] == "ready"
    assert model["labels"] == ["negative", "neutral", "positive"] and model["max_length"] == 64
    # The engine was chosen by measurement between the candidates this machine has (OpenVINO on Intel CPUs).
    [chosen] = [c for c in model["engine"]["candidates"] if c["chosen"]]
    assert (model["provider"], model["artifact"], model["precision"]) == (
        chosen["provider"], chosen["artifact"], chosen["precision"])
    assert model["provider"] in ("cpu", "openvino") and model["quantization"] == "fp32"
    assert model["batching"]["autotuned"] is True and model["batching"]["max_batch_size"] >= 1
    [version] = httpx.get(tiny_server.url + "/models/tiny").json()
    assert version["name"] == "tiny" and version["default"] is True
    assert httpx.get(tiny_server.url + "/models/nope").status_code == 404
    spec = httpx.get(tiny_server.url + "/openapi.json").json()
    assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }
    assert "inputs" in spec["components"]["schemas"]["PredictRequest"]["properties"]
    assert httpx.get(tiny_server.url + "/docs").status_code == 200


def test_unknown_route_uses_the_error_shape(tiny_server):
    r = httpx.get(tiny_server.url + "/nowhere")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"


def test_provider_reported_in_metrics(tiny_server):
    [model] = httpx.get(tiny_server.url + "/models").json()
    text = httpx.get(tiny_server.url + "/metrics").text
    assert metric(text, "bertserve_model_info", model="tiny", version="1", provider=model["provider"],
                  quantization="fp32", artifact="model.onnx", precision=model["precision"]) == 1


def test_two_workers_counters_add_up_and_concurrent_clients_are_batched(tiny_model_repo, start_server):
    server = start_server(tiny_model_repo, workers=2)
    texts = [f"{REVIEW} number {i} " + "again " * (i % 20) for i in range(400)]
    statuses = asyncio.run(hammer(server.url, texts, concurrency=64))
    assert statuses.count(200) == len(texts)
    bad = post(server, {"inputs": 7})
    assert bad.status_code == 422
    text = httpx.get(server.url + "/metrics").text
    # Each scrape reaches one worker; multiprocess mode makes it report the sum over both.
    assert metric(text, "bertserve_requests_total", model="tiny", status="200") == len(texts)
    assert metric(text, "bertserve_requests_total", status="422") == 1
    assert metric(text, "bertserve_batch_size_sum", model="tiny") == len(texts)
    assert metric(text, "bertserve_predictions_total", model="tiny") == len(texts)
    assert metric(text, "bertserve_prediction_confidence_count", model="tiny") == len(texts)
    batches = metric(text, "bertserve_batch_size_count", model="tiny")
    assert batches < len(texts)  # 64 concurrent clients were served in batches, not one by one
    assert len(re.findall(r'bertserve_queue_size\{.*pid="\d+"', text)) == 2  # one gauge per live worker
    # Both workers run on uvloop + httptools (plain asyncio + h11 stalls ~40 ms per response with workers).
    for pid in worker_pids(server.process.pid):
        maps = open(f"/proc/{pid}/maps").read()
        assert "uvloop" in maps and "httptools" in maps


def test_a_broken_model_is_reported_and_the_others_serve(tiny_model_repo, tmp_path, start_server):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "broken" / "1")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    server = start_server(repo, wait_ready=False)
    deadline = time.monotonic() + 60
    while (ready := httpx.get(server.url + "/health/ready")).json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ready.status_code == 503
    # the open probe: the model and a cause code; the reason (with its path) only on the listing
    assert ready.json()["models"]["broken"] == {"1": "failed: load_failed"} and str(repo) not in ready.text
    assert ready.json()["causes"] == {"broken": "load_failed"}
    listed = httpx.get(server.url + "/models").json()
    assert {m["name"]: m["state"] for m in listed} == {"tiny": "ready", "broken": "failed"}
    assert "model.onnx: onnxruntime cannot load it" in next(m["reason"] for m in listed if m["name"] == "broken")
    assert post(server, {"inputs": REVIEW, "model": "tiny"}).status_code == 200
    assert post(server, {"inputs": REVIEW, "model": "broken"}).status_code == 404


def test_bad_setting_stops_start_up_with_one_line_naming_it(tiny_model_repo):
    r = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--model-repository", str(tiny_model_repo)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"BERTSERVE_MAX_BATCH_SIZE": "0", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("bertserve: bad setting BERTSERVE_MAX_BATCH_SIZE")


def test_serving_imports_no_torch(tiny_model_repo):
    code = (
        "import sys, asyncio; from app.main import create_app; from app.settings import Settings; "
        f"from app.service import Service; s = Service(Settings(model_repository={str(tiny_model_repo)!r})); "
        "asyncio.run(s.load_all()); assert s.readiness()[0], s.readiness(); "
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
