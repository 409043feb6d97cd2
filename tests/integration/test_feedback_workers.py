"""The prediction log of a real `bertserve serve --workers 2`: each worker writes its own file (its pid in the
name), and feedback for every logged answer is joined whichever worker answered it and whichever takes the
feedback (sent at once after the answer, each on a new connection), counted once across workers in
bertserve_feedback_total and in live_quality; the CloudEvents receiver gets one event per record."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.receiver import Receiver
from tests.support.servers import worker_pids

pytestmark = pytest.mark.process


def test_two_workers_log_to_their_own_files_and_join_feedback_for_every_answer(tiny_model_repo, tmp_path,
                                                                                start_server):
    folder = tmp_path / "log"
    with Receiver() as receiver:
        server = start_server(tiny_model_repo, workers=2, env={"BERTSERVE_PREDICTION_LOG_DIR": str(folder),
                                                               "BERTSERVE_PREDICTION_LOG_URL": receiver.url})
        answers = []
        for k in range(40):
            r = httpx.post(server.url + "/predict", json={"inputs": f"great pill {k}"}, timeout=30)
            assert r.status_code == 200
            answers.append((r.headers["x-request-id"], r.json()[0]["label"]))
            feedback = httpx.post(server.url + "/feedback", json={"id": answers[-1][0], "label": "positive"},
                                  timeout=30)
            assert feedback.status_code == 200, feedback.text  # right after its answer, on any worker
        receiver.wait_for(80)  # 40 predictions and 40 feedback records, one event each
        quality = {m["version"]: m["live_quality"] for m in httpx.get(server.url + "/models/tiny").json()}
        right = sum(label == "positive" for _, label in answers)
        assert quality == {1: {"feedback": 40, "correct": right, "accuracy": right / 40}}
        assert metric(server.metrics_text(), "bertserve_feedback_total", model="tiny") == 40
        pids = {str(pid) for pid in worker_pids(server.process.pid)}
        server.stop()

    files = sorted(folder.glob("*.jsonl*"))
    assert {f.name.removeprefix("predictions-").removesuffix(".jsonl") for f in files} <= pids
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    logged = {r["id"] for r in records if r["type"] == "prediction"}
    assert logged == {rid for rid, _ in answers} and sum(r["type"] == "feedback" for r in records) == 40
    events = [json.loads(body) for _, body in receiver.received]
    assert sorted(e["id"] for e in events if e["type"] == "prediction") == sorted(logged)
