"""Export tiny BERT / DistilBERT / RoBERTa classifiers, serve them through app.service, compare with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.gate import Gate
from app.loader import load_model
from app.scores import softmax
from app.settings import Settings
from tests.support.tiny import CORPUS, make_tiny_checkpoint

pytestmark = pytest.mark.slow

TEXTS = CORPUS + ["", "an unseen wordpiece zebra xylophone", "great " * 80]


def served_probabilities(repo, name):
    version_dir = repo / name / "1"
    model = load_model(name, 1, version_dir, Settings(provider="cpu", batch_autotune=False))
    # One text at a time as well as padded together: padding must not change the answer.
    one_by_one = np.concatenate([model.infer([e.ids]) for e in model.encode(TEXTS)])
    together = model.infer([e.ids for e in model.encode(TEXTS)])
    return model, softmax(one_by_one), softmax(together)


def torch_probabilities(checkpoint, max_length):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    rows = []
    with torch.no_grad():
        for text in TEXTS:
            batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(torch.softmax(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1))
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_fp32_export_matches_pytorch_when_served(tmp_path, arch):
    checkpoint = make_tiny_checkpoint(tmp_path / arch, arch)
    repo = tmp_path / "repo"
    path, report = export_model(ExportRequest(source=checkpoint, name=arch, repository=repo, quantize="none"))

    assert path == repo / arch / "1"
    config = json.loads((path / "bertserve.json").read_text())
    assert config["labels"] == ["negative", "neutral", "positive"]
    assert [a["file"] for a in config["artifacts"]] == ["model.onnx"]
    assert (path / "tokenizer.json").is_file()
    assert report["parity_max_prob_diff"] < 1e-4

    model, one_by_one, together = served_probabilities(repo, arch)
    expected = torch_probabilities(checkpoint, model.max_length)
    assert np.abs(one_by_one - expected).max() < 1e-4
    assert np.abs(together - expected).max() < 1e-4
    assert ("token_type_ids" in model.engine.input_names) == (arch == "bert")


def test_int8_artifact_is_listed_first_and_served_on_cpu(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "bert", "bert")
    repo = tmp_path / "repo"
    # A random tiny model has near-uniform scores, so decisions flip easily: this test is about the layout.
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=repo, gate=Gate(0.0, 1.0)))

    config = json.loads((path / "bertserve.json").read_text())
    assert [a["file"] for a in config["artifacts"]] == ["model.int8.onnx", "model.onnx"]
    assert config["artifacts"][0] == {
        "file": "model.int8.onnx", "precision": "int8", "providers": ["cpu"],
        "quantization": "dynamic int8 per-channel",
        "guard": {"margin": 0.02, "reference": "model.onnx"},  # app.guard: a softmax head's near-ties go to fp32
    }
    assert report["gate"]["chosen"] == "dynamic int8 per-channel"
    attempt = report["gate"]["attempts"][0]
    assert {"agreement", "max_prob_diff", "mean_prob_diff", "size_mb", "sequences_per_s"} <= set(attempt)
    model, _, together = served_probabilities(repo, "tiny")
    assert model.engine.artifact.file == "model.int8.onnx"
    assert np.abs(together - torch_probabilities(checkpoint, model.max_length)).max() < 0.1


def test_export_stores_golden_outputs_that_every_engine_is_held_to(tmp_path):
    """golden.json: the gate texts (up to 256) with PyTorch's own probabilities, and the gate the loader applies:
    the export gate's min_agreement, or what the published INT8 artifact scored on those texts if lower."""
    from app.lifecycle.gate import GateData
    from app.repository import read_golden

    checkpoint = make_tiny_checkpoint(tmp_path / "bert", "bert")
    texts = [f"{a} {b}" for a in CORPUS for b in CORPUS]  # 36 texts
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path / "repo",
                                              gate=Gate(0.9, 1.0), gate_data=GateData(texts, None, "pairs")))
    golden = read_golden(path, 3)
    assert golden.texts == texts and golden.source == "pairs"
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with torch.no_grad():
        batch = tokenizer(texts, truncation=True, padding=True, max_length=64, return_tensors="pt")
        expected = torch.softmax(AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1).numpy()
    np.testing.assert_allclose(np.array(golden.probabilities), expected, atol=1e-5)
    int8 = report["golden"]["artifacts"]["model.int8.onnx"]
    assert golden.min_agreement == min(0.9, round(int8["agreement"] - 1 / len(texts), 4))
    assert golden.max_prob_diff >= max(0.25, int8["max_prob_diff"])
    model = load_model("tiny", 1, path, Settings(provider="cpu", batch_autotune=False))  # INT8 passes its own gate
    [trial] = model.describe()["engine"]["candidates"]
    assert trial["artifact"] == "model.int8.onnx" and trial["passed"] and trial["agreement"] >= golden.min_agreement


def test_fp16_artifact_for_cuda_keeps_float32_io(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "bert", "bert")
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path / "repo",
                                              quantize="fp16"))
    config = json.loads((path / "bertserve.json").read_text())
    assert [(a["file"], a["providers"]) for a in config["artifacts"]] == [
        ("model.fp16.onnx", ["cuda"]), ("model.onnx", ["cuda", "openvino", "cpu"])
    ]
    import onnx

    graph = onnx.load(path / "model.fp16.onnx").graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    if report["fp16"].get("measured", True):
        assert report["fp16"]["max_prob_diff"] < 0.01
    # The CPU server still picks fp32.
    model = load_model("tiny", 1, path, Settings(provider="cpu", batch_autotune=False))
    assert model.engine.artifact.file == "model.onnx"


def test_optimised_graph_is_quantized_with_onnxruntime_directly(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "bert", "bert")
    path, report = export_model(ExportRequest(source=checkpoint, name="tiny", repository=tmp_path / "repo",
                                              optimize="O2", gate=Gate(0.0, 1.0)))
    config = json.loads((path / "bertserve.json").read_text())
    assert [a["file"] for a in config["artifacts"]] == ["model.int8.onnx", "model.onnx"]
    assert config["artifacts"][1]["quantization"] == "fp32 optimised O2"
    assert report["parity_max_prob_diff"] < 1e-4
