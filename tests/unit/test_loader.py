"""The loader's engine choice on real sessions: candidates by setting and machine, the golden gate, the measured
choice and its fidelity rule. CUDA is simulated where needed (FakeGpuSessions: no GPU exists here); CPU and OpenVINO
sessions are real (OpenVINO's own runtime, on Intel and AMD alike)."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import app.loader
from app.engine import Engine, OpenVinoEngine, available
from app.errors import ModelLoadError
from app.loader import candidate_groups, compare, load_model, pick
from app.repository import GOLDEN_FILE, Artifact, read_config, write_config
from app.settings import Settings
from tests.support.golden import FAST, TEXTS, fp32_probabilities, write_tiny_golden
from tests.support.sessions import CPU, CUDA, FakeGpuSessions


def damage(path, source: str, target: str, shift: float = 50.0) -> None:
    """A copy of the graph whose classifier bias pushes every text to the label the reference picks least (by
    default; a small `shift` only moves the scores a little)."""
    model = onnx.load(path / source)
    bias = next(t for t in model.graph.initializer if "classifier" in t.name and t.name.endswith("bias"))
    least = int(np.bincount(fp32_probabilities(path, TEXTS).argmax(1), minlength=3).argmin())
    values = numpy_helper.to_array(bias).copy()
    values[least] += shift
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, path / target)


def test_candidates_on_this_machine(monkeypatch):
    config_artifacts = {
        "cpu": [Artifact(file="m.int8.onnx", precision="int8", providers=["cpu"])],
        "openvino": [Artifact(file="m.onnx", precision="fp32", providers=["cpu"])],
        "cuda": [Artifact(file="m.fp16.onnx", precision="fp16", providers=["cuda"]),
                 Artifact(file="m.onnx", precision="fp32", providers=["cuda"])],
    }
    groups, skipped = candidate_groups("auto", config_artifacts.__getitem__)
    tried = [p for group in groups for p, _ in group]
    assert "cuda" not in tried and tried[0] == "cpu"  # this onnxruntime build has no CUDA
    assert "openvino" in tried and available("openvino") is None  # the openvino package runs on every x86-64 CPU
    assert skipped == []
    assert candidate_groups("cpu", config_artifacts.__getitem__)[0] == [[("cpu", config_artifacts["cpu"][0])]]
    # On a CUDA machine (simulated): both CUDA artifacts first, then the CPU group.
    monkeypatch.setattr(app.loader.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(app.loader, "available", lambda provider: None)
    groups, _ = candidate_groups("auto", config_artifacts.__getitem__)
    assert [[(p, a.file) for p, a in g] for g in groups] == [
        [("cuda", "m.fp16.onnx"), ("cuda", "m.onnx")], [("cpu", "m.int8.onnx"), ("openvino", "m.onnx")]]


def test_auto_serves_the_candidate_pick_chooses_among_those_that_pass(golden_model):
    model = load_model("tiny", 1, golden_model, Settings(**FAST))
    trials = model.describe()["engine"]["candidates"]
    assert {t["provider"] for t in trials} == {"cpu", "openvino"}
    assert all(t["sequences_per_s"] > 0 and "agreement" in t for t in trials)
    # onnxruntime on the very graph the reference came from; OpenVINO in fp32 too, unless the CPU has bf16 (AMX,
    # AVX512-BF16), where a random tiny model's near-uniform scores may flip and fail the gate: then the CPU serves.
    assert all(t["passed"] and t["agreement"] == 1.0 for t in trials if t["precision"] == "fp32")
    passing = [t for t in trials if t["passed"]]
    index, rule = pick(passing, 0.05)
    assert [t["chosen"] for t in trials] == [t is passing[index] for t in trials]
    chosen = passing[index]
    assert model.describe()["engine"]["rule"] == rule and model.describe()["engine"]["fidelity_margin"] == 0.05
    assert (model.engine.provider, model.engine.artifact.file) == (chosen["provider"], chosen["artifact"])
    assert model.describe()["engine"]["gate"] == {"texts": len(TEXTS), "min_agreement": 0.97, "max_prob_diff": 0.25}


def test_a_damaged_artifact_fails_the_gate_and_the_next_candidate_serves(golden_model, caplog):
    damage(golden_model, "model.onnx", "model.int8.onnx")
    config = read_config(golden_model)
    write_config(golden_model, config.model_copy(update={"artifacts": [
        Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"]), *config.artifacts]}))
    with caplog.at_level(logging.WARNING, logger="bertserve.loader"):
        model = load_model("tiny", 1, golden_model, Settings(provider="cpu", **FAST))
    assert (model.engine.provider, model.engine.artifact.file) == ("cpu", "model.onnx")
    damaged = model.describe()["engine"]["candidates"][0]
    assert damaged["artifact"] == "model.int8.onnx" and not damaged["passed"] and not damaged["chosen"]
    assert damaged["agreement"] < 0.97 and "agreement" in damaged["why"]
    assert "cpu on model.int8.onnx (int8) fails the golden gate" in caplog.text


def test_no_engine_passing_the_gate_fails_the_version_with_every_reason(golden_model):
    damage(golden_model, "model.onnx", "model.onnx")
    with pytest.raises(ModelLoadError, match=r"no engine can serve it with provider=cpu: cpu on model.onnx: agreement"):
        load_model("tiny", 1, golden_model, Settings(provider="cpu", **FAST))


def test_a_version_without_golden_outputs_still_loads(golden_model, caplog):
    (golden_model / GOLDEN_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="bertserve.loader"):
        model = load_model("tiny", 1, golden_model, Settings(provider="cpu", **FAST))
    assert model.describe()["engine"]["gate"] == "skipped: no golden outputs"
    assert "has no golden outputs" in caplog.text


def test_explicit_openvino_serves_native_openvino(golden_model):
    model = load_model("tiny", 1, golden_model, Settings(provider="openvino", openvino_precision="f32", **FAST))
    assert isinstance(model.engine, OpenVinoEngine)
    assert (len(model.engines), model.engine.threads) == Settings().engine_layout("openvino")
    [trial] = model.describe()["engine"]["candidates"]
    assert trial["precision"] == "fp32" and trial["passed"] and trial["agreement"] == 1.0


def test_cuda_machine_measures_fp16_and_fp32_and_falls_back_to_cpu_when_cuda_fails(golden_model, monkeypatch):
    """Simulated CUDA (no GPU here): both CUDA artifacts are proven and timed; when CUDA does not initialise, the
    CPU group serves and the CUDA attempts are listed with why."""
    shutil.copy(golden_model / "model.onnx", golden_model / "model.fp16.onnx")
    config = read_config(golden_model)
    write_config(golden_model, config.model_copy(update={"artifacts": [
        Artifact(file="model.fp16.onnx", precision="fp16", providers=["cuda"]), *config.artifacts]}))
    monkeypatch.setattr(app.loader.ort, "get_available_providers", lambda: [CUDA, CPU])
    real_available = app.loader.available
    monkeypatch.setattr(app.loader, "available", lambda p: None if p == "cuda" else real_available(p))
    # CUDA device memory cannot exist here: the fake CUDA sessions (real CPU ones) run without IOBinding.
    monkeypatch.setattr(Engine, "_run_bound", lambda self, feed: self.session.run([self.output_name], feed)[0])

    model = load_model("tiny", 1, golden_model, Settings(**FAST), session_factory=FakeGpuSessions(cuda_works=True))
    trials = model.describe()["engine"]["candidates"]
    assert [(t["provider"], t["artifact"]) for t in trials] == [("cuda", "model.fp16.onnx"), ("cuda", "model.onnx")]
    assert model.engine.provider == "cuda" and len(model.engines) == 1

    model = load_model("tiny", 1, golden_model, Settings(**FAST), session_factory=FakeGpuSessions(cuda_works=False))
    assert model.engine.provider != "cuda"
    failed = [t for t in model.describe()["engine"]["candidates"] if t["provider"] == "cuda"]
    assert len(failed) == 2 and all("runs on CPUExecutionProvider" in t["why"] for t in failed)


def with_artifact(path, artifact: Artifact) -> None:
    config = read_config(path)
    write_config(path, config.model_copy(update={"artifacts": [artifact, *config.artifacts]}))


def test_a_damaged_openvino_artifact_fails_the_gate(golden_model, caplog):
    """OpenVINO reads its own (damaged) fp32 graph: the gate refuses it and onnxruntime serves; asked for alone,
    the version fails with the gate's reason."""
    damage(golden_model, "model.onnx", "model.ov.onnx")
    with_artifact(golden_model, Artifact(file="model.ov.onnx", precision="fp32", providers=["openvino"]))
    with caplog.at_level(logging.WARNING, logger="bertserve.loader"):
        model = load_model("tiny", 1, golden_model, Settings(**FAST))
    assert (model.engine.provider, model.engine.artifact.file) == ("cpu", "model.onnx")
    [refused] = [t for t in model.describe()["engine"]["candidates"] if t["provider"] == "openvino"]
    assert refused["artifact"] == "model.ov.onnx" and not refused["passed"] and not refused["chosen"]
    assert refused["agreement"] < 0.97 and "agreement" in refused["why"]
    assert "openvino on model.ov.onnx" in caplog.text and "fails the golden gate" in caplog.text
    with pytest.raises(ModelLoadError, match="provider=openvino: openvino on model.ov.onnx: agreement") as failed:
        load_model("tiny", 1, golden_model, Settings(provider="openvino", **FAST))
    assert failed.value.cause == "golden_gate"


INT8_LIKE = {"provider": "cpu", "agreement": 0.963, "mean_prob_diff": 0.02}
FP32_LIKE = {"provider": "openvino", "agreement": 1.0, "mean_prob_diff": 0.0}


NOISE = "within the confidence margin 25% (measurement noise)"


@pytest.mark.parametrize(("faithful_rate", "margin", "serves", "rule"), [
    (97.0, 0.0, "openvino", f"most faithful, 3.0% slower than the fastest, {NOISE}"),
    (97.0, 0.05, "openvino", f"most faithful, 3.0% slower than the fastest, {NOISE}"),
    (85.0, 0.05, "openvino", f"most faithful, 15.0% slower than the fastest, {NOISE}"),
    (97.0, 1.0, "openvino", "most faithful, 3.0% slower than the fastest, within the fidelity margin 1.0"),
    (75.0, 0.3, "openvino", "most faithful, 25.0% slower than the fastest, within the fidelity margin 0.3"),
    (70.0, 0.0, "cpu", "fastest: the most faithful is 30.0% slower, beyond the fidelity margin 0.0 and the "
     "confidence margin 25%"),
    (70.0, 0.05, "cpu", "fastest: the most faithful is 30.0% slower, beyond the fidelity margin 0.05 and the "
     "confidence margin 25%"),
    (70.0, 1.0, "openvino", "most faithful, 30.0% slower than the fastest, within the fidelity margin 1.0"),
    (120.0, 0.0, "openvino", "fastest and most faithful"),
])
def test_pick_weighs_fidelity_against_rate(faithful_rate, margin, serves, rule):
    trials = [INT8_LIKE | {"sequences_per_s": 100.0}, FP32_LIKE | {"sequences_per_s": faithful_rate}]
    index, why = pick(trials, margin)
    assert (trials[index]["provider"], why) == (serves, rule)


def test_pick_ties_and_unknown_fidelity():
    # equal agreement is equal fidelity, whatever the scores (the guarded INT8 against OpenVINO bf16): the first in
    # the fixed order serves, at any fidelity margin, unless a later one is faster beyond the confidence margin
    guarded = INT8_LIKE | {"agreement": 1.0, "mean_prob_diff": 0.006, "sequences_per_s": 100.0}
    bf16 = FP32_LIKE | {"mean_prob_diff": 0.001, "sequences_per_s": 110.0}
    for margin in (0.0, 0.05, 1.0):
        assert pick([guarded, bf16], margin) == (
            0, "first of the equally faithful, 9.1% slower than the fastest, within the confidence margin 25%")
        assert pick([guarded, bf16 | {"sequences_per_s": 150.0}], margin) == (
            1, "fastest: the first of the equally faithful is 33.3% slower, beyond the confidence margin 25%")
    assert pick([bf16, guarded], 1.0)[0] == 0  # the order, not the smaller score difference
    # no golden outputs: fidelity is unknown (equal): the first in the fixed order, unless another is clearly faster
    assert pick([{"sequences_per_s": 50.0}, {"sequences_per_s": 70.0}], 1.0) == (
        1, "fastest: the first of the equally faithful is 28.6% slower, beyond the confidence margin 25%")
    assert pick([{"sequences_per_s": 50.0}, {"sequences_per_s": 54.0}], 0.0) == (
        0, "first of the equally faithful, 7.4% slower than the fastest, within the confidence margin 25%")
    assert pick([{"sequences_per_s": 50.0}], 0.05) == (0, "fastest")


def test_noise_within_the_confidence_margin_never_flips_the_choice():
    """The same two engines measured many times, each round off by up to +-5 %: a true gap of 3 % (seen as up to
    14 %, within the 25 % floor) gives one choice every time, the most faithful; a real gap (50 %) is taken every
    time too. The spread of the rounds' ratios widens the margin beyond the floor."""
    import random

    noisy = random.Random(7)

    def measured(rate: float) -> dict:
        rounds = [round(rate * (1 + noisy.uniform(-0.05, 0.05)), 1) for _ in range(3)]
        return {"rounds": rounds, "sequences_per_s": sorted(rounds)[1]}

    for cpu_rate, expected in ((103.0, "openvino"), (100.0, "openvino"), (97.0, "openvino"), (150.0, "cpu")):
        chosen = set()
        for _ in range(200):
            trials = [INT8_LIKE | measured(cpu_rate), FP32_LIKE | measured(100.0)]
            chosen.add(trials[pick(trials, 0.05)[0]]["provider"])
        assert chosen == {expected}, (cpu_rate, chosen)
    spread = [INT8_LIKE | {"rounds": [100.0, 140.0, 120.0], "sequences_per_s": 120.0},
              FP32_LIKE | {"rounds": [100.0, 101.0, 100.0], "sequences_per_s": 100.0}]
    ratio, margin = compare(spread[0], spread[1])  # side by side: the rounds' ratios 1.0, 1.386, 1.2
    assert (round(ratio, 3), margin) == (1.2, round((140 / 101 - 1.0) / 1.2, 3))
    assert pick(spread, 0.05) == (1, "most faithful, 16.7% slower than the fastest, within the confidence margin 32% "
                                     "(measurement noise)")
    # a machine twice as busy in one round slows both candidates alike: the ratios, not the rates, are compared
    drift = [INT8_LIKE | {"rounds": [60.0, 130.0, 128.0], "sequences_per_s": 128.0},
             FP32_LIKE | {"rounds": [45.0, 100.0, 99.0], "sequences_per_s": 99.0}]
    assert pick(drift, 0.05)[0] == 0 and compare(drift[0], drift[1])[1] == 0.25  # the rounds agree: the floor


@pytest.fixture
def less_faithful_cpu_artifact(golden_model):
    """onnxruntime's CPU candidate on a graph that changes one to three of the golden decisions (a stand-in for
    INT8: it passes the gate, less faithfully); OpenVINO on the fp32 graph itself, in f32, as faithful as it gets."""
    write_tiny_golden(golden_model, min_agreement=0.9)
    probs = fp32_probabilities(golden_model, TEXTS)
    least = int(np.bincount(probs.argmax(1), minlength=3).argmin())
    # the bias each text needs to flip to `least`; the shift sits in the widest of the first three gaps between them
    needs = np.sort(np.log(probs).max(1) - np.log(probs[:, least]))
    k = int(np.argmax(np.diff(needs[:4])))
    damage(golden_model, "model.onnx", "model.moved.onnx", shift=float(needs[k] + needs[k + 1]) / 2)
    with_artifact(golden_model, Artifact(file="model.moved.onnx", precision="int8", providers=["cpu"]))
    return golden_model


@pytest.mark.parametrize("margin", [0.0, 0.05, 1.0])
def test_the_fidelity_margin_chooses_between_real_engines(less_faithful_cpu_artifact, margin):
    from app.registry import _chosen_over

    settings = Settings(fidelity_margin=margin, openvino_precision="f32", **FAST)
    model = load_model("tiny", 1, less_faithful_cpu_artifact, settings)
    choice = model.describe()["engine"]
    by_provider = {t["provider"]: t for t in choice["candidates"]}
    cpu, openvino = by_provider["cpu"], by_provider["openvino"]
    assert cpu["artifact"] == "model.moved.onnx" and cpu["passed"] and openvino["passed"]
    assert openvino["agreement"] == 1.0 and 0.9 <= cpu["agreement"] < 1.0
    assert len(cpu["rounds"]) == len(openvino["rounds"]) == 3  # timed side by side in rounds
    assert cpu["sequences_per_s"] >= max(cpu["rounds"]) - 0.1  # each chunk's best time: at least any round's rate
    index, rule = pick([cpu, openvino], margin)  # margin 1: always OpenVINO; below, unless clearly slower
    expected = [cpu, openvino][index]
    assert model.engine.provider == expected["provider"] and expected["chosen"]
    assert choice["fidelity_margin"] == margin and choice["rule"] == rule
    assert f"chosen as {choice['rule']} over" in _chosen_over(model)  # the ready log line
    if margin == 1.0:
        assert model.engine.provider == "openvino"  # "most faithful", or "fastest and most faithful"
