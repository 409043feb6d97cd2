"""Native OpenVINO on the demo model, real engines only: its answers against onnxruntime's fp32, and the fidelity
margin choosing between OpenVINO on the fp32 graph and onnxruntime on the INT8 one (a real accuracy trade-off)."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine import Engine, OpenVinoEngine, open_engine
from app.loader import fidelity, load_model, pick
from app.repository import read_config, read_golden
from app.settings import Settings
from app.tokenizer import TextTokenizer, pad
from tests.support.paths import DEMO_MODEL

pytestmark = pytest.mark.slow


def test_native_openvino_answers_as_onnxruntime_fp32_on_the_demo_model(demo_repository):
    path = demo_repository / DEMO_MODEL / "1"
    config = read_config(path)
    golden = read_golden(path, len(config.labels))
    tokenizer = TextTokenizer(path / "tokenizer.json", config.max_length)
    ids, mask = pad([e.ids for e in tokenizer.encode(golden.texts[:32])], tokenizer.pad_id)
    reference = Engine(path, config, "cpu", config.artifacts_for("cpu")[-1]).run(ids, mask)
    openvino = open_engine(path, config, "openvino", threads=2)
    assert isinstance(openvino, OpenVinoEngine) and openvino.artifact.file == "model.onnx"
    logits = openvino.run(ids, mask)
    atol = 1e-3 if openvino.precision == "fp32" else 0.15  # bf16 where the CPU has it: OpenVINO's default
    np.testing.assert_allclose(logits, reference, atol=atol)
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("margin", [0.0, 1.0])
def test_the_fidelity_margin_on_the_demo_model(demo_repository, margin):
    """INT8 (onnxruntime) against fp32 (OpenVINO): at 1 the more faithful always serves, at 0 the faster."""
    model = load_model(DEMO_MODEL, 1, demo_repository / DEMO_MODEL / "1",
                       Settings(fidelity_margin=margin, batch_autotune=False))
    trials = [t for t in model.describe()["engine"]["candidates"] if t["passed"]]
    assert {t["provider"] for t in trials} == {"cpu", "openvino"}
    [chosen] = [t for t in trials if t["chosen"]]
    if margin == 1.0:
        assert fidelity(chosen) == max(fidelity(t) for t in trials)
    else:  # the faster one, unless the more faithful is within the confidence margin (measurement noise)
        assert trials[pick(trials, margin)[0]] is chosen
    assert (model.engine.provider, model.engine.artifact.file) == (chosen["provider"], chosen["artifact"])
