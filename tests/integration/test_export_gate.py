"""The accuracy gate, atomic publishing and the one-line errors of `bertserve export`."""

from __future__ import annotations

import json
import shutil

import pytest

from app.cli import main as cli
from app.lifecycle.export import ExportRequest, export_model
from app.lifecycle.gate import Gate
from tests.support.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "bert", "bert")


def leftovers(repo):
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []


def test_without_int8_export_publishes_fp32_says_why_and_succeeds(tmp_path, checkpoint, capsys):
    """No int8 recipe can pass a gate asking more than full agreement: the user still gets a model (fp32, with its
    golden outputs), and the refusal with its figures on screen and in the report."""
    repo = tmp_path / "repo"
    cli(["export", str(checkpoint), "--name", "tiny", "--model-repository", str(repo), "--min-agreement", "1.01"])
    out, err = capsys.readouterr()
    assert "WARNING: no int8 recipe passed the accuracy gate" in err
    assert "int8 refused, fp32 only: no int8 recipe passed the accuracy gate (dynamic int8 per-channel: agreement" \
        in out
    path = repo / "tiny" / "1"
    config = json.loads((path / "bertserve.json").read_text())
    assert [a["file"] for a in config["artifacts"]] == ["model.onnx"]
    assert (path / "golden.json").is_file() and not (path / "model.int8.onnx").exists()
    gate = config["report"]["gate"]
    assert gate["chosen"] is None and "< 1.01" in gate["int8_refused"]
    assert len(gate["attempts"]) == 6 and all("agreement" in a and not a["passed"] for a in gate["attempts"])


def test_require_int8_flag_conflicts_with_another_quantization(tmp_path, checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["export", str(checkpoint), "--name", "tiny", "--model-repository", str(tmp_path / "repo"),
             "--quantize", "none", "--require-int8"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "bertserve export: --require-int8 cannot go with --quantize none"]
    assert not (tmp_path / "repo").exists()


def test_gate_refuses_an_artifact_that_misses_it_and_publishes_nothing(tmp_path, checkpoint, capsys):
    """Insisting on int8 (--require-int8): nothing published, exit status 1."""
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as exit_info:
        cli(["export", str(checkpoint), "--name", "tiny", "--model-repository", str(repo), "--min-agreement", "1.01",
             "--require-int8"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bertserve export: no int8 recipe passed the accuracy gate, nothing published")
    # Every remedy was tried and measured before giving up.
    for recipe in ("per-channel:", "1 MatMul fp32", "8 MatMul fp32", "fp32 embeddings"):
        assert recipe in last
    assert leftovers(repo) == []


def test_build_demo_style_fallback_publishes_fp32_only(tmp_path, checkpoint):
    repo = tmp_path / "repo"
    path, report = export_model(ExportRequest(
        source=checkpoint, name="tiny", repository=repo, gate=Gate(min_agreement=1.01), fp32_when_gate_fails=True,
    ))
    config = json.loads((path / "bertserve.json").read_text())
    assert [a["file"] for a in config["artifacts"]] == ["model.onnx"]
    assert not (path / "model.int8.onnx").exists()
    assert report["gate"]["chosen"] is None


def test_failed_export_leaves_no_version_folder(tmp_path, checkpoint):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    repo = tmp_path / "repo"
    (repo / "tiny" / "1").mkdir(parents=True)  # an older version stays untouched
    with pytest.raises(Exception, match="ONNX export failed"):
        export_model(ExportRequest(source=broken, name="tiny", repository=repo))
    assert leftovers(repo) == ["tiny", "tiny/1"]


def test_existing_version_is_never_overwritten(tmp_path, checkpoint, capsys):
    repo = tmp_path / "repo"
    (repo / "tiny" / "3").mkdir(parents=True)
    with pytest.raises(SystemExit):
        cli(["export", str(checkpoint), "--name", "tiny", "--version", "3", "--model-repository", str(repo)])
    assert "already exists" in capsys.readouterr().err
    path, _ = export_model(ExportRequest(source=checkpoint, name="tiny", repository=repo, quantize="none"))
    assert path.name == "4"


def test_non_classification_checkpoint_is_refused(tmp_path, capsys):
    from transformers import BertConfig, BertModel

    from tests.support.tiny import _bert_tokenizer

    folder = tmp_path / "encoder"
    tokenizer = _bert_tokenizer(folder)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit):
        cli(["export", str(folder), "--name", "x", "--model-repository", str(repo)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sequence or token classifier" in err[0] and "bertserve train" in err[0]
    assert not repo.exists()


def test_labelled_eval_data_reports_accuracy(tmp_path, checkpoint):
    from app.lifecycle.data import read_gate_data
    from tests.support.tiny import CORPUS, LABELS

    data = tmp_path / "eval.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t{LABELS[i % 3]}\n" for i, t in enumerate(CORPUS)))
    gate_data = read_gate_data([data], "text", "label", LABELS)
    _, report = export_model(ExportRequest(
        source=checkpoint, name="tiny", repository=tmp_path / "repo", gate=Gate(0.0, 1.0), gate_data=gate_data,
    ))
    attempt = report["gate"]["attempts"][0]
    assert {"fp32_accuracy", "candidate_accuracy", "fp32_macro_f1", "candidate_macro_f1"} <= set(attempt)
    assert set(report["evaluation"]) == {"fp32", "int8"}
    assert len(report["evaluation"]["fp32"]["confusion_matrix"]) == 3
