"""The benchmark's raw engines (each engine on each precision it may run) and the report's engine choice line."""

from __future__ import annotations

from pathlib import Path

from app.repository import Artifact, ModelConfig, write_config
from benchmarks import raw, report
from tests.support.bench import sample_results


def _version(folder: Path, artifacts: list[Artifact]) -> Path:
    folder.mkdir(parents=True)
    for name in ["tokenizer.json", *(a.file for a in artifacts)]:
        (folder / name).write_bytes(b"")  # read_config checks the files are there, not what they hold
    write_config(folder, ModelConfig(labels=["negative", "neutral", "positive"], max_length=128, artifacts=artifacts))
    return folder


INT8 = Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"])
FP32 = Artifact(file="model.onnx", precision="fp32", providers=["cuda", "openvino", "cpu"])


def test_onnxruntime_fp32_is_a_raw_engine_beside_int8_and_openvino(tmp_path):
    found = raw.engines(_version(tmp_path / "m" / "1", [INT8, FP32]), ["cpu", "openvino"])
    assert found == {"cpu": ("cpu", "model.int8.onnx"), "cpu-fp32": ("cpu", "model.onnx"),
                     "openvino": ("openvino", "model.onnx")}
    labels = [c[0] for c in raw.configs(2, [1, 8], 2, list(found))]
    assert {raw.engine_of(label) for label in labels} == {"cpu", "cpu-fp32", "openvino"}
    assert "cpu-fp32 1p x 2t b8 sorted" in labels and "2p x 1t b4 sorted" in labels
    # the server's engine, as GET /models names it, maps to its raw engine (the c=1 point's comparison)
    assert raw.engine_key(found, "cpu", "model.onnx") == "cpu-fp32"
    assert raw.engine_key(found, "cpu", "model.int8.onnx") == "cpu"
    assert raw.engine_key(found, "cuda", "model.onnx") == "cuda"


def test_a_version_without_int8_has_one_onnxruntime_engine(tmp_path):
    found = raw.engines(_version(tmp_path / "m" / "1", [FP32]), ["cpu", "openvino"])
    assert found == {"cpu": ("cpu", "model.onnx"), "openvino": ("openvino", "model.onnx")}


def test_the_report_says_which_candidate_auto_chose_and_by_what_rule():
    results = sample_results()
    results["servers"][0]["model"] = {"provider": "openvino", "artifact": "model.onnx", "engine": {
        "setting": "auto", "fidelity_margin": 0.05, "rule": "most faithful, 3.0% slower than the fastest, within the "
                                                              "fidelity margin 0.05",
        "candidates": [
            {"provider": "cpu", "artifact": "model.int8.onnx", "precision": "int8", "sequences_per_s": 20.5,
             "agreement": 1.0, "passed": True, "chosen": False},
            {"provider": "openvino", "artifact": "model.onnx", "precision": "fp32", "sequences_per_s": 19.9,
             "agreement": 1.0, "passed": True, "chosen": True}]}}
    text = report.markdown(results, report.summarize(results), None)
    assert "cpu on `model.int8.onnx` (int8), 20.5 seq/s, agreement 1.0000; " in text
    assert "**openvino on `model.onnx` (fp32), 19.9 seq/s, agreement 1.0000, chosen**" in text
    assert "the one chosen as most faithful, 3.0% slower" in text
