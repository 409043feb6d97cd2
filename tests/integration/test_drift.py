"""Drift end to end: a tiny model exported (drift.json written from its gate texts), served in-process; replaying
the gate texts reads PSI < 0.01 in GET /models/{name}, a shifted set reads far more, and the reference and gated
accuracy reach /metrics."""

from __future__ import annotations

import json
import shutil

import pytest

from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.gate import GateData
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.metrics import metric
from tests.support.tiny import CORPUS, LABELS

pytestmark = pytest.mark.slow

# 120 gate texts of varied length (6 to ~40 tokens); labels by turn (the tiny model is random: its accuracy is
# whatever it is, the gauge must carry it)
GATE = [f"{CORPUS[i % 6]} {' '.join(CORPUS[(i * 5 + 1) % 6].split()[: i % 11])}".strip() for i in range(120)]
TRUTH = [i % 3 for i in range(len(GATE))]
# Longer texts than the gate's (cut to the model's 64 tokens) of one kind: another population
SHIFTED = [f"{CORPUS[1]} " * (4 + i % 3) for i in range(60)]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_checkpoint):
    repo = tmp_path_factory.mktemp("drift-repo")
    _, report = export_model(ExportRequest(source=tiny_checkpoint, name="drift-replay", repository=repo, version=1,
                                           gate_data=GateData(GATE, TRUTH, "gate texts"), fp32_when_gate_fails=True))
    shutil.copytree(repo / "drift-replay" / "1", repo / "drift-shifted" / "1")  # the same version, other traffic
    return repo, report


@pytest.fixture(scope="module")
def call(repo):
    yield from in_process(Settings(model_repository=repo[0], poll_interval_s=0, batch_autotune=False, provider="cpu",
                                   log_level="warning"))


def send(call, model: str, texts: list[str]) -> None:
    for start in range(0, len(texts), 8):
        answer = call("POST", "/predict", json={"inputs": texts[start:start + 8], "model": model})
        assert answer.status_code == 200, answer.text


def drift_of(call, model: str) -> dict:
    [entry] = call("GET", f"/models/{model}").json()
    return entry["drift"]


def test_export_writes_the_reference_beside_bertserve_json(repo):
    folder, report = repo[0] / "drift-replay" / "1", repo[1]
    reference = json.loads((folder / "drift.json").read_text())
    assert reference["texts"] == len(GATE) and reference["source"] == "gate texts"
    assert set(reference["features"]) == {"label", "confidence", "tokens"}
    assert reference["features"]["label"]["bins"] == LABELS
    assert sum(reference["features"]["tokens"]["counts"]) == len(GATE)
    assert reference["artifact"] == json.loads((folder / "bertserve.json").read_text())["artifacts"][0]["file"]
    assert report["drift"] == {"file": "drift.json", "texts": len(GATE), "features": ["label", "confidence", "tokens"]}


def test_replaying_the_gate_texts_reads_psi_under_0_01_and_a_shifted_set_more(call):
    assert drift_of(call, "drift-replay")["count"] == 0  # nothing served yet: no figure
    assert set(drift_of(call, "drift-replay")["psi"].values()) == {None}
    send(call, "drift-replay", GATE)
    replayed = drift_of(call, "drift-replay")
    assert replayed["count"] == len(GATE) and replayed["reference_texts"] == len(GATE)
    assert all(value < 0.01 for value in replayed["psi"].values()), replayed
    send(call, "drift-shifted", SHIFTED)
    shifted = drift_of(call, "drift-shifted")
    assert shifted["count"] == len(SHIFTED)
    assert shifted["psi"]["tokens"] > 0.2 and max(shifted["psi"].values()) > 10 * max(replayed["psi"].values())


def test_reference_and_gated_accuracy_reach_metrics(call, repo):
    text = call("GET", "/metrics").text
    report = json.loads((repo[0] / "drift-replay" / "1" / "bertserve.json").read_text())["report"]
    published = report["gate"]["published"][0]  # int8, or fp32 when no int8 recipe passed
    assert metric(text, "bertserve_model_gate_accuracy", model="drift-replay", version="1") == \
        report["evaluation"][published]["accuracy"]
    shares = [metric(text, "bertserve_drift_reference", model="drift-replay", version="1", feature="label", bin=b)
              for b in LABELS]
    assert sum(shares) == pytest.approx(1.0, abs=3e-4) and min(shares) > 0
    assert metric(text, "bertserve_prediction_tokens_count", model="drift-replay", version="1") == \
        metric(text, "bertserve_prediction_bins_total", model="drift-replay", version="1", feature="tokens")
