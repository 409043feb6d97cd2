"""Export with calibration texts: the int8 ladder starts from the SmoothQuant-rescaled graph (docs/int8.md)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from app.engine import open_engine
from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.gate import Gate
from app.lifecycle.quantize import SMOOTH_ALPHA
from app.repository import read_config
from app.tokenizer import TextTokenizer, pad
from tests.support.tiny import CORPUS, make_tiny_checkpoint

pytestmark = pytest.mark.slow
CALIBRATION = CORPUS[:4] + ["my doctor said the dose was fine", "no side effects at all"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "bert", "bert")


def test_calibrated_export_serves_smoothquant_int8(tmp_path, checkpoint):
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path,
                                              calibration_texts=CALIBRATION))
    gate = report["gate"]
    assert gate["smoothquant"] == {"alpha": SMOOTH_ALPHA, "calibration_texts": len(CALIBRATION)}
    first = f"smoothquant {SMOOTH_ALPHA} + dynamic int8 per-channel, 1 MatMul fp32"
    assert gate["attempts"][0]["recipe"] == first and gate["chosen"] == first
    config = read_config(path)
    assert config.artifacts[0].precision == "int8" and config.artifacts[0].quantization == first
    # What the server would run: the published int8 graph against fp32 on the gate's built-in texts.
    tokenizer = TextTokenizer(path / "tokenizer.json", config.max_length)
    ids, mask = pad([e.ids for e in tokenizer.encode(CORPUS)], tokenizer.pad_id)
    int8 = open_engine(path, config, "cpu", config.artifacts[0]).run(ids, mask)
    fp32 = open_engine(path, config, "cpu", config.artifacts[1]).run(ids, mask)
    np.testing.assert_allclose(int8, fp32, atol=0.05)
    assert not list(path.rglob("*smoothed*"))  # the work copy is gone


def test_calibrated_ladder_keeps_more_matmuls_in_fp32_then_refuses(tmp_path, checkpoint):
    """A gate no int8 can pass: every attempt is on the smoothed graph, 1, 2, 4, 8 MatMuls in fp32, then fp32
    embeddings; fp32 is published alone, with the ranking recorded."""
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path,
                                              gate=Gate(min_agreement=1.01), fp32_when_gate_fails=True,
                                              calibration_texts=CALIBRATION))
    recipes = [a["recipe"] for a in report["gate"]["attempts"]]
    assert all(r.startswith(f"smoothquant {SMOOTH_ALPHA} + ") for r in recipes)
    assert [r.split(", ", 1)[1] for r in recipes] == [
        "1 MatMul fp32", "2 MatMul fp32", "4 MatMul fp32", "8 MatMul fp32", "8 MatMul fp32, fp32 embeddings"]
    assert len(report["gate"]["most_sensitive_matmuls"]) == 8
    stored = json.loads((path / "bertserve.json").read_text())
    assert [a["file"] for a in stored["artifacts"]] == ["model.onnx"]


def test_export_cli_takes_calibration_texts_from_files(tmp_path, checkpoint):
    from app.cli import main as cli

    data = tmp_path / "train.csv"
    with data.open("w", newline="") as out:
        csv.writer(out).writerows([("text", "label"), *((text, "positive") for text in CALIBRATION)])
    cli(["export", str(checkpoint), "--name", "tiny", "--model-repository", str(tmp_path / "repo"),
         "--calibration-data", str(data)])
    gate = json.loads((tmp_path / "repo" / "tiny" / "1" / "bertserve.json").read_text())["report"]["gate"]
    assert gate["smoothquant"] == {"alpha": SMOOTH_ALPHA, "calibration_texts": len(CALIBRATION)}
    assert gate["attempts"][0]["recipe"].startswith(f"smoothquant {SMOOTH_ALPHA} + ")


def test_export_publishes_the_int8_guard_and_what_it_did_on_the_gate_texts(tmp_path, checkpoint):
    """app.guard: the single-label int8 artifact names its margin and fp32 reference; the gate judged it guarded
    and recorded the rows it rechecked; --guard-margin 0 publishes none."""
    from app.lifecycle.export import GUARD_MARGIN
    from app.repository import GuardSpec

    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path))
    int8 = read_config(path).artifacts[0]
    assert int8.precision == "int8" and int8.guard == GuardSpec(margin=GUARD_MARGIN, reference="model.onnx")
    passed = next(a for a in report["gate"]["attempts"] if a["passed"])
    done = passed["guard"]
    assert done["rows"] == report["gate"]["texts"] and 0 <= done["changed"] <= done["rechecked"] <= done["rows"]
    assert done["margin"] == GUARD_MARGIN

    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path, guard_margin=0))
    assert read_config(path).artifacts[0].guard is None
    assert all("guard" not in a for a in report["gate"]["attempts"])
