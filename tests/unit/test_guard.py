"""The INT8 guard (app.guard): near-ties of an INT8 batch decided by the fp32 graph, on real onnxruntime sessions of
the tiny model and its dynamic INT8 copy."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from app.engine import Engine
from app.guard import Guard, open_guard
from app.lifecycle.commands import _margin
from app.repository import Artifact, GuardSpec, ModelConfig, read_config, write_config
from app.scores import softmax
from app.tokenizer import TextTokenizer, pad
from tests.support.tiny import LABELS

TEXTS = ["great drug", "it did nothing for me at all", "headache, nausea and no sleep for a week",
         "fine", "worked well but the rash came back", "awful", "I would take it again", "no change"] * 2


@pytest.fixture(scope="module")
def guarded(tiny_model_repo, tmp_path_factory):
    """The tiny model with a dynamic INT8 artifact whose guard refers to its fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path_factory.mktemp("guarded") / "1"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    quantize_dynamic(str(path / "model.onnx"), str(path / "model.int8.onnx"), weight_type=QuantType.QInt8)
    config = read_config(path)
    int8 = Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"],
                    guard=GuardSpec(margin=0.5, reference="model.onnx"))
    write_config(path, config.model_copy(update={"artifacts": [int8, *config.artifacts]}))
    return path


def batch(path):
    config = read_config(path)
    tokenizer = TextTokenizer(path / "tokenizer.json", config.max_length)
    return pad([e.ids for e in tokenizer.encode(TEXTS)], tokenizer.pad_id)


def margins(logits):
    top2 = np.sort(softmax(logits), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def test_rows_under_the_margin_get_fp32s_logits_and_the_others_keep_int8s(guarded):
    config = read_config(guarded)
    int8 = Engine(guarded, config, "cpu", config.artifacts[0], threads=1)
    fp32 = Engine(guarded, config, "cpu", config.artifacts[1], threads=1)
    ids, mask = batch(guarded)
    int8_logits, fp32_logits = int8.run(ids, mask), fp32.run(ids, mask)
    # A margin between the rows' own INT8 margins: some rows are near-ties, some not.
    margin = float(np.median(margins(int8_logits)))
    guard = Guard(margin, fp32)
    logits, rechecked, changed = guard.check(int8_logits, ids, mask, None)
    near = margins(int8_logits) < margin
    assert 0 < near.sum() < len(TEXTS) and rechecked == near.sum()
    np.testing.assert_allclose(logits[near], fp32_logits[near], atol=1e-5)  # each row alone, at its own width
    np.testing.assert_array_equal(logits[~near], int8_logits[~near])
    assert changed == int((fp32_logits[near].argmax(1) != int8_logits[near].argmax(1)).sum())
    assert guard.describe() == {"margin": margin, "reference": "model.onnx", "rows": len(TEXTS),
                                "rechecked": rechecked, "changed": changed}


def test_a_batch_without_near_ties_is_not_rerun(guarded):
    config = read_config(guarded)
    int8 = Engine(guarded, config, "cpu", config.artifacts[0], threads=1)
    ids, mask = batch(guarded)
    logits = int8.run(ids, mask)
    guard = Guard(float(margins(logits).min()) / 2 or 1e-9, referee=None)  # a referee that is never called
    out, rechecked, changed = guard.check(logits, ids, mask, None)
    assert out is logits and rechecked == changed == 0


def test_open_guard_opens_the_reference_for_onnxruntime_only_and_for_softmax_heads_only(guarded):
    config = read_config(guarded)
    guard = open_guard(guarded, config, config.artifacts[0], "cpu", threads=1)
    assert guard is not None and guard.margin == 0.5 and guard.referee.artifact.file == "model.onnx"
    assert guard.referee.precision == "fp32"
    assert open_guard(guarded, config, config.artifacts[1], "cpu", threads=1) is None  # the fp32 artifact: none
    assert open_guard(guarded, config, config.artifacts[0], "openvino", threads=1) is None
    sigmoid = config.model_copy(update={"labels": LABELS[:1], "problem_type": None, "function": None})
    assert open_guard(guarded, sigmoid, config.artifacts[0], "cpu", threads=1) is None


def test_the_loader_serves_the_guard_and_counts_its_rows(guarded, monkeypatch, tmp_path):
    from app import metrics
    from app.loader import load_model
    from app.settings import Settings

    monkeypatch.setenv("BERTSERVE_ENGINE_CACHE", str(tmp_path / "cache"))
    model = load_model("guarded", 1, guarded, Settings(provider="cpu", batch_autotune=False))
    assert model.engine.artifact.file == "model.int8.onnx" and model.guard is not None
    before = metrics.GUARD_ROWS.labels("guarded", "1", "checked")._value.get()
    tokenizer = model.tokenizer
    model.infer([e.ids for e in tokenizer.encode(TEXTS)])
    assert metrics.GUARD_ROWS.labels("guarded", "1", "checked")._value.get() == before + len(TEXTS)
    described = model.describe()["guard"]
    assert described["margin"] == 0.5 and described["reference"] == "model.onnx" and described["rows"] >= len(TEXTS)


def test_the_referee_runs_on_one_sessions_threads(guarded, monkeypatch, tmp_path):
    """Shared by the per-core sessions, it runs on its caller's core: on every core it took those of the others."""
    from app.loader import load_model
    from app.settings import Settings

    monkeypatch.setenv("BERTSERVE_ENGINE_CACHE", str(tmp_path / "cache"))
    settings = Settings(provider="cpu", batch_autotune=False, engine_sessions=2, intra_op_threads=1)
    model = load_model("guarded", 1, guarded, settings)
    assert len(model.engines) == 2 and model.guard.referee.threads == model.engine.threads == 1


def test_the_raw_benchmark_runs_the_artifact_as_served(guarded):
    """benchmarks.raw: the INT8 artifact with its guard by default (the server's work), without it when asked."""
    from benchmarks.raw import RawModel

    served, bare = RawModel(guarded, threads=1), RawModel(guarded, threads=1, guarded=False)
    assert served.engine.artifact.file == bare.engine.artifact.file == "model.int8.onnx"
    assert served.guard is not None and served.guard.margin == 0.5 and bare.guard is None
    logits, plain = served.run(TEXTS), bare.run(TEXTS)
    near = margins(plain) < 0.5
    assert near.any() and served.guard.rechecked == near.sum()
    np.testing.assert_array_equal(logits[~near], plain[~near])
    fp32 = RawModel(guarded, threads=1, artifact="model.onnx")
    assert fp32.guard is None
    np.testing.assert_allclose(logits[near], fp32.run(TEXTS)[near], atol=1e-5)


@pytest.mark.parametrize("artifacts, why", [
    ([Artifact(file="model.onnx", precision="fp32", providers=["cpu"],
               guard=GuardSpec(margin=0.1, reference="model.onnx"))], "int8"),
    ([Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"],
               guard=GuardSpec(margin=0.1, reference="other.onnx")),
      Artifact(file="model.onnx", precision="fp32", providers=["cpu"])], "listed fp32"),
])
def test_a_guard_must_sit_on_int8_and_name_a_listed_fp32_artifact(artifacts, why):
    with pytest.raises(ValidationError, match=why):
        ModelConfig(labels=LABELS, max_length=16, artifacts=artifacts)


@pytest.mark.parametrize("spec", [{"margin": 0, "reference": "model.onnx"}, {"margin": 1, "reference": "model.onnx"},
                                  {"margin": 0.1, "reference": "../model.onnx"}])
def test_a_guard_spec_is_a_margin_in_0_1_and_a_plain_file_name(spec):
    with pytest.raises(ValidationError):
        GuardSpec(**spec)


@pytest.mark.parametrize("given, expected", [("0", 0.0), ("0.05", 0.05)])
def test_guard_margin_option(given, expected):
    assert _margin(given) == expected


@pytest.mark.parametrize("given", ["1", "-0.1", "x"])
def test_guard_margin_option_refuses_what_is_not_a_margin(given):
    with pytest.raises(argparse.ArgumentTypeError):
        _margin(given)
