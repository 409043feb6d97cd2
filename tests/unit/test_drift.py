"""Drift (app.drift): the bins, the PSI, the reference an export writes, and the served counts read back against it
(app.served.ModelMetrics: the same bins, this process's counters)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client import REGISTRY

from app import drift
from app.batching import Timing
from app.scores import Head
from app.served import ModelMetrics

SOFTMAX = Head(("negative", "neutral", "positive"), "single_label_classification")
MULTI = Head(("drowsy", "nausea"), "multi_label_classification")
REGRESSION = Head(("rating",), "regression")


def test_psi_by_hand():
    assert drift.psi([0.5, 0.5], [10, 10]) == 0.0
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert drift.psi([0.5, 0.5], [1, 3]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert drift.psi([0.5, 0.5], [0, 0]) is None  # nothing counted: no figure


def test_an_empty_bin_counts_as_epsilon_on_either_side():
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - drift.EPSILON) * math.log(0.5 / drift.EPSILON)
    assert drift.psi([1.0, 0.0], [5, 5]) == pytest.approx(expected)
    assert drift.psi([0.5, 0.5, 0.0], [5, 5, 0]) == 0.0  # empty on both sides: no term


@pytest.mark.parametrize("value, index", [(0.0, 0), (0.1, 0), (0.1000001, 1), (0.95, 9), (0.96, 10), (1.0, 11),
                                          (1.2, 11)])
def test_bins_hold_previous_edge_to_edge_like_le(value, index):
    assert drift.bin_index(drift.CONFIDENCE_EDGES, value) == index


def test_bin_names_are_prometheus_numbers():
    assert [drift.bin_name(e) for e in (0.1, 0.95, 1.0, 128)] == ["0.1", "0.95", "1", "128"]


def test_reference_of_each_head_kind():
    scores = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.05, 0.05, 0.9], [0.3, 0.4, 0.3]])
    reference = drift.build_reference(scores, [5, 12, 40, 700], SOFTMAX, "gate.csv", "model.int8.onnx")
    features = reference["features"]
    assert reference["texts"] == 4 and reference["epsilon"] == drift.EPSILON
    assert features["label"]["bins"] == list(SOFTMAX.labels) and features["label"]["counts"] == [1, 1, 2]
    assert features["label"]["fractions"] == [0.25, 0.25, 0.5]
    confidence = dict(zip(features["confidence"]["bins"], features["confidence"]["counts"], strict=True))
    assert confidence["0.4"] == 1 and confidence["0.7"] == 1 and confidence["0.8"] == 1 and confidence["0.9"] == 1
    tokens = dict(zip(features["tokens"]["bins"], features["tokens"]["counts"], strict=True))
    assert tokens["8"] == 1 and tokens["16"] == 1 and tokens["48"] == 1 and tokens["1024"] == 1
    assert features["tokens"]["edges"] == list(drift.TOKEN_EDGES)
    # sigmoid: every label over 0.5 (none, or several, per text); regression: no confidence
    multi = drift.build_reference(np.array([[0.9, 0.6], [0.1, 0.2]]), [3, 3], MULTI)
    assert multi["features"]["label"]["counts"] == [1, 1] and "confidence" in multi["features"]
    assert "confidence" not in drift.build_reference(np.array([[3.5]]), [3], REGRESSION)["features"]


def served(name: str, scores: np.ndarray, tokens: list[int], reference=None) -> ModelMetrics:
    counted = ModelMetrics(name, list(SOFTMAX.labels), 1, SOFTMAX, reference)
    counted.observe(scores, [Timing(tokens=t) for t in tokens])
    return counted


def test_serving_the_reference_texts_reads_zero_and_other_texts_more():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([1, 1, 1], 200)
    tokens = rng.integers(5, 120, 200).tolist()
    reference = drift.build_reference(scores, tokens, SOFTMAX)
    same = served("drift-unit-same", scores, tokens, reference).live_drift()
    assert same["count"] == 200 and same["reference_texts"] == 200
    assert all(value == pytest.approx(0.0, abs=1e-6) for value in same["psi"].values()), same
    shifted = rng.dirichlet([8, 1, 1], 200)  # mostly negative, and confident
    other = served("drift-unit-shifted", shifted, [t + 200 for t in tokens], reference).live_drift()
    assert all(value > 0.2 for value in other["psi"].values()), other
    assert served("drift-unit-none", scores, tokens).live_drift() is None  # no reference: no PSI
    nothing = ModelMetrics("drift-unit-idle", list(SOFTMAX.labels), 1, SOFTMAX, reference).live_drift()
    assert nothing["count"] == 0 and set(nothing["psi"].values()) == {None}


def test_served_bins_are_exported_per_bin_with_empty_ones_at_zero():
    served("drift-unit-bins", np.array([[0.96, 0.02, 0.02]]), [12])

    def value(feature: str, bin_: str) -> float | None:
        return REGISTRY.get_sample_value("bertserve_prediction_bins_total", {
            "model": "drift-unit-bins", "version": "1", "feature": feature, "bin": bin_})

    assert value("confidence", "0.99") == 1 and value("confidence", "0.95") == 0 and value("tokens", "16") == 1
    assert value("tokens", "8") == 0  # made at load: an empty bin is a 0, not a missing series
    assert REGISTRY.get_sample_value("bertserve_prediction_tokens_count",
                                     {"model": "drift-unit-bins", "version": "1"}) == 1


def test_reference_and_gate_gauges_are_set_at_load_and_zeroed_at_unload():
    reference = drift.build_reference(np.array([[0.9, 0.05, 0.05]]), [10], SOFTMAX)
    counted = ModelMetrics("drift-unit-gauges", list(SOFTMAX.labels), 3, SOFTMAX, reference)

    def gauge(name: str, **labels) -> float | None:
        return REGISTRY.get_sample_value(name, {"model": "drift-unit-gauges", "version": "3", **labels})

    counted.publish(0.87, True)
    assert gauge("bertserve_model_gate_accuracy") == 0.87
    assert gauge("bertserve_drift_reference", feature="label", bin="negative") == 1.0
    assert gauge("bertserve_drift_reference", feature="label", bin="neutral") == drift.EPSILON  # floored
    assert gauge("bertserve_drift_reference", feature="tokens", bin="16") == 1.0
    counted.publish(0.87, False)
    assert gauge("bertserve_model_gate_accuracy") == 0 and gauge("bertserve_drift_reference", feature="label",
                                                                   bin="negative") == 0


def write(folder, reference) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / drift.DRIFT_FILE).write_text(json.dumps(reference))


def test_reading_a_reference_and_refusing_a_bad_one(tmp_path, caplog):
    good = drift.build_reference(np.array([[0.9, 0.05, 0.05]]), [10], SOFTMAX)
    folder = tmp_path / "repo" / "m" / "1"
    assert drift.read_reference(folder, SOFTMAX.labels) is None  # none written: no PSI, no warning
    write(folder, good)
    assert drift.read_reference(folder, list(SOFTMAX.labels)) == json.loads(json.dumps(good))
    assert drift.read_reference(folder, ["a", "b", "c"]) is None  # another model's labels
    broken = json.loads(json.dumps(good))
    broken["features"]["tokens"]["edges"] = broken["features"]["tokens"]["edges"][:-1]
    write(folder, broken)
    assert drift.read_reference(folder, list(SOFTMAX.labels)) is None
    (folder / drift.DRIFT_FILE).write_text("{not json")
    assert drift.read_reference(folder, list(SOFTMAX.labels)) is None
    assert caplog.text.count("has no drift reference") == 3
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(good))
    (folder / drift.DRIFT_FILE).unlink()
    (folder / drift.DRIFT_FILE).symlink_to(outside)
    assert drift.read_reference(folder, list(SOFTMAX.labels)) is None  # a link out of the repository: not read


WORKER = """
import sys
import numpy as np
from app import drift
from app.batching import Timing
from app.scores import Head
from app.served import ModelMetrics
head = Head(("negative", "neutral", "positive"), "single_label_classification")
scores = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8]])
reference = drift.build_reference(scores, [5, 30], head)
counted = ModelMetrics("mp", list(head.labels), 1, head, reference)
counted.observe(scores, [Timing(tokens=5), Timing(tokens=30)])
if sys.argv[1] == "read":
    print(counted.live_drift())
"""


def test_in_multiprocess_mode_a_replica_reads_all_its_workers_counts(tmp_path):
    """GET /models/{name}'s drift sums the replica's workers, as /metrics does (prometheus_client's multiprocess
    files): two worker processes count, the second reads both."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", WORKER, "count"], env=env, check=True, timeout=60)
    read = subprocess.run([sys.executable, "-c", WORKER, "read"], env=env, check=True, timeout=60,
                          capture_output=True, text=True)
    assert read.stdout.strip() == str({"psi": {"label": 0.0, "confidence": 0.0, "tokens": 0.0}, "count": 4,
                                       "reference_texts": 2})
