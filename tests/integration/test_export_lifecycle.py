"""train -> export -> evaluate -> models through the CLI, on a tiny random BERT (seconds, no model hub)."""

from __future__ import annotations

import json

import pytest

from app.cli import main as cli
from tests.support.tiny import CORPUS, LABELS, make_tiny_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "bert", "bert")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    rows = [(text.replace(",", ""), LABELS[i % 3]) for i, text in enumerate(CORPUS * 5)]
    path.write_text("review,sentiment\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    return path


def test_train_export_evaluate_models(tmp_path, base, data, capsys):
    output, repo = tmp_path / "trained", tmp_path / "repo"
    cli(["train", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
         "--base", str(base), "--output", str(output), "--epochs", "2"])
    report = json.loads((output / "report.json").read_text())
    assert report["labels"] == LABELS
    assert set(report["validation"]["per_class"]) == set(LABELS)
    assert set(report["validation"]["per_class"]["neutral"]) == {"precision", "recall", "f1", "support"}
    assert len(report["validation"]["confusion_matrix"]) == 3
    assert 1 <= report["best_epoch"] <= len(report["history"]) <= 2
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "negative", "1": "neutral",
                                                                            "2": "positive"}

    cli(["export", str(output), "--name", "tiny", "--model-repository", str(repo), "--eval-data", str(data),
         "--text-column", "review", "--label-column", "sentiment", "--min-agreement", "0"])
    assert (repo / "tiny" / "1" / "model.int8.onnx").is_file()
    capsys.readouterr()

    cli(["evaluate", "tiny:1", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
         "--model-repository", str(repo), "--provider", "cpu"])  # auto may measure OpenVINO faster on this model
    out = capsys.readouterr().out
    assert "tiny:1 (model.int8.onnx, cpu) on 30 texts" in out
    assert "accuracy" in out and "macro-F1" in out and "sequences/s" in out and "truth \\ predicted" in out

    cli(["models", "--model-repository", str(repo)])
    out = capsys.readouterr().out
    assert "tiny: versions 1" in out and "dynamic int8 per-channel" in out and "gate: agreement" in out


def test_training_the_same_data_twice_gives_the_same_model(tmp_path, base, data):
    from app.lifecycle.data import read_labelled
    from app.lifecycle.train import TrainOptions, train_classifier

    texts, labels = read_labelled(data, "review", "sentiment")
    first = train_classifier(texts, labels, str(base), tmp_path / "a", TrainOptions(epochs=1))
    second = train_classifier(texts, labels, str(base), tmp_path / "b", TrainOptions(epochs=1))
    assert first["history"] == second["history"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "{data}", "--text-column", "body", "--label-column", "sentiment"], "no column 'body'"),
        (["train", "--data", "{missing}", "--text-column", "review", "--label-column", "sentiment"], "cannot read"),
        (["train", "--data", "{single}", "--text-column", "review", "--label-column", "sentiment"], "only one class"),
        (["evaluate", "nope", "--data", "{data}"], "no model 'nope'"),
    ],
)
def test_clear_errors_write_nothing(tmp_path, base, data, capsys, argv, message):
    single = tmp_path / "single.csv"
    single.write_text("review,sentiment\ngood,positive\nfine,positive\n")
    values = {"data": data, "missing": tmp_path / "missing.csv", "single": single}
    argv = [a.format(**values) for a in argv]
    if argv[0] == "train":
        argv += ["--base", str(base), "--output", str(tmp_path / "out")]
    else:
        argv += ["--model-repository", str(tmp_path / "repo")]
    with pytest.raises(SystemExit) as info:
        cli(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "repo").exists()


def test_unsupported_architecture_is_refused(tmp_path, data, capsys):
    """train asks optimum's registry, as export does: what it cannot export is not worth training here."""
    from transformers import T5Config

    folder = tmp_path / "t5"
    T5Config(num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=100).save_pretrained(folder)
    with pytest.raises(SystemExit) as info:
        cli(["train", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
             "--base", str(folder), "--output", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot export architecture 't5'" in err[0] and "deberta-v2" in err[0], err


def test_export_defaults_to_the_length_the_checkpoint_was_trained_with(tmp_path, base, data, capsys):
    """Trained with 32 tokens (the tokenizer allows 64): exported with 32 unless asked; a checkpoint bertserve did
    not train (no report.json) gets the tokenizer's limit. Each export says which length and why."""
    output, repo = tmp_path / "trained", tmp_path / "repo"
    cli(["train", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
         "--base", str(base), "--output", str(output), "--epochs", "1", "--max-length", "32"])
    capsys.readouterr()
    cli(["export", str(output), "--name", "trained", "--model-repository", str(repo), "--quantize", "none"])
    assert json.loads((repo / "trained" / "1" / "bertserve.json").read_text())["max_length"] == 32
    err = capsys.readouterr().err
    assert f"max_length 32 tokens per text: the length it was trained with, recorded in {output / 'report.json'}" in err

    cli(["export", str(base), "--name", "untrained", "--model-repository", str(repo), "--quantize", "none"])
    assert json.loads((repo / "untrained" / "1" / "bertserve.json").read_text())["max_length"] == 64
    assert "max_length 64 tokens per text: the tokenizer's limit (model_max_length 64" in capsys.readouterr().err
