"""`bertserve export` on a token classifier publishes fp32 and INT8 behind a gate measured by entities (INT8's
entities against fp32's, seqeval micro-F1 >= --min-agreement, default 0.95 for token models; token-label agreement
recorded), fp32 alone when INT8 misses; `bertserve evaluate NAME` on the published version prints the same seqeval
figures as `--checkpoint` on the same CoNLL data."""

from __future__ import annotations

import os
import re

import pytest

from app.cli import main as cli
from app.repository import read_config
from tests.support.tiny import CORPUS, TOKEN_LABELS, make_token_checkpoint

pytestmark = pytest.mark.slow

TAGS = {"medicine": "B-DRUG", "headache": "B-COND", "nausea": "I-COND", "dizziness": "B-COND", "doctor": "B-DRUG"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return make_token_checkpoint(tmp_path_factory.mktemp("tokens") / "ckpt", "bert", seed=3)


def write_conll(path):
    lines = []
    for text in CORPUS * 2:
        lines += [f"{word} {TAGS.get(word, 'O')}" for word in text.split()] + [""]
    path.write_text("\n".join(lines))
    return path


def figures_of(printed: str) -> list[str]:
    """The figure lines of print_token_figures (the headline and the per-type table), not the header line."""
    lines = printed.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("entity micro-F1"))
    return lines[start:]


def test_int8_passes_the_entity_gate(checkpoint, tmp_path, capsys):
    """The default threshold is 0.95 (the tiny random model's INT8 may pass or miss it: the verdict follows the
    figure); a lower --min-agreement lets it pass."""
    data = write_conll(tmp_path / "gate.conll")
    cli(["export", str(checkpoint), "--name", "default", "--model-repository", str(tmp_path / "repo"),
         "--eval-data", str(data)])
    default = read_config(tmp_path / "repo" / "default" / "1").report["gate"]
    assert default["threshold"] == default["min_agreement"] == 0.95
    assert default["published"] == (["int8", "fp32"] if default["entity_f1"] >= 0.95 else ["fp32"])
    passed = [a for a in default["attempts"] if a["passed"]]  # the figures recorded: the published recipe's, else
    best = passed[0] if passed else max(default["attempts"], key=lambda a: a["entity_f1"])  # the closest miss's
    assert (default["entity_f1"], default["token_agreement"]) == (best["entity_f1"], best["token_agreement"])
    capsys.readouterr()
    cli(["export", str(checkpoint), "--name", "ner", "--model-repository", str(tmp_path / "repo"),
         "--eval-data", str(data), "--min-agreement", "0.5"])
    printed = capsys.readouterr().out
    config = read_config(tmp_path / "repo" / "ner" / "1")
    gate = config.report["gate"]
    assert [a.precision for a in config.artifacts] == ["int8", "fp32"] and gate["chosen"]
    assert gate["threshold"] == gate["min_agreement"] == 0.5 and gate["published"] == ["int8", "fp32"]
    assert gate["entity_f1"] >= 0.5 and 0 <= gate["token_agreement"] <= 1
    assert gate["texts"] == 2 * len(CORPUS) and gate["data"] == str(data)
    attempt = gate["attempts"][0]
    assert attempt["passed"] and attempt["entity_f1"] == gate["entity_f1"]
    assert attempt["token_agreement"] == attempt["agreement"] == gate["token_agreement"]
    assert attempt["fp32_entities"] > 0  # the tiny model finds entities: the F1 is measured, not vacuous
    assert "entity-level micro-F1" in gate["int8_gate"]
    assert f"entity F1 {gate['entity_f1']:.4f}" in printed
    card = (tmp_path / "repo" / "ner" / "1" / "README.md").read_text()
    assert "entity F1 against fp32's entities >= 0.5" in card and "token agreement" in card


def test_a_strict_gate_publishes_fp32_alone(checkpoint, tmp_path, capsys):
    cli(["export", str(checkpoint), "--name", "strict", "--int8-min-agreement", "1.01", "--model-repository",
         str(tmp_path)])
    printed = capsys.readouterr().out
    config = read_config(tmp_path / "strict" / "1")
    gate = config.report["gate"]
    assert [a.precision for a in config.artifacts] == ["fp32"] and gate["published"] == ["fp32"]
    assert gate["threshold"] == 1.01 and gate["chosen"] is None and "entity F1" in gate["int8_refused"]
    assert {"entity_f1", "token_agreement"} <= set(gate) and not gate["attempts"][0]["passed"]
    assert gate["data"] == "built-in sample" and "int8 refused, fp32 only" in printed
    with pytest.raises(SystemExit) as exited:
        cli(["export", str(checkpoint), "--name", "strict", "--min-agreement", "1.01", "--require-int8",
             "--model-repository", str(tmp_path)])
    assert exited.value.code == 1 and "entity F1" in capsys.readouterr().err


def test_sequence_default_stays_097():
    import argparse

    from app.lifecycle.commands import add_commands
    from app.lifecycle.gate import TOKEN_MIN_ENTITY_F1, Gate

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "x", "--name", "n"])
    assert args.min_agreement is None  # resolved by the checkpoint: 0.97 for a sequence model, 0.95 for tokens
    assert Gate().min_agreement == 0.97 and TOKEN_MIN_ENTITY_F1 == 0.95


def test_evaluate_the_published_version_as_the_checkpoint(checkpoint, tmp_path, capsys):
    data = write_conll(tmp_path / "test.conll")
    repo = tmp_path / "repo"
    cli(["export", str(checkpoint), "--name", "ner", "--quantize", "none", "--model-repository", str(repo)])
    max_length = read_config(repo / "ner" / "1").max_length
    capsys.readouterr()
    cli(["evaluate", "--checkpoint", str(checkpoint), "--data", str(data), "--max-length", str(max_length)])
    from_checkpoint = capsys.readouterr().out
    cli(["evaluate", "ner", "--data", str(data), "--provider", "cpu", "--model-repository", str(repo)])
    served = capsys.readouterr().out
    assert re.search(r"^ner:1 \(model\.onnx, cpu\) on 12 examples", served, re.M)
    assert figures_of(served) == figures_of(from_checkpoint)
    assert any(line.startswith(("DRUG", "COND")) for line in figures_of(served))

    from app.lifecycle.data import read_token_data
    from app.lifecycle.evaluate import served_token_figures, token_checkpoint_figures
    from app.loader import load_model
    from app.settings import Settings

    settings = Settings(model_repository=repo, provider="cpu", batch_autotune=False, poll_interval_s=0,
                        log_level="error")
    examples = read_token_data(data)
    ours = served_token_figures(load_model("ner", 1, repo / "ner" / "1", settings), examples)
    theirs = token_checkpoint_figures(checkpoint, examples, max_length)
    assert ours == theirs and ours["words"] == sum(len(t.split()) for t in CORPUS * 2)
    assert set(ours["per_type"]) <= {label[2:] for label in TOKEN_LABELS if label != "O"}
