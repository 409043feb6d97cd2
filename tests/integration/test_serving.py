"""A real `bertserve serve` on 127.0.0.1 serving a tiny real BERT through onnxruntime, spoken to over HTTP: a real
client, workers, a broken model, start-up. The answer shapes, which need no process, run in-process:
tests/unit/test_predict_http.py."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.paths import ROOT
from tests.support.servers import hammer, post, worker_pids
from tests.support.tiny import REVIEW

pytestmark = pytest.mark.process


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
