"""The lifecycle commands on a serving-only install (`pip install '.[cpu]'`): the export extra's packages cannot be
imported. Each command is run as `bertserve` runs it, in a fresh interpreter where those imports fail exactly as
for a package that is not installed (a finder at the head of sys.meta_path)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING_ONLY = """
import sys

class NotInstalled:  # the export extra is not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "transformers", "optimum", "onnx", "sklearn", "tqdm"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from app.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("argv", [
    ["train", "--data", "d.csv", "--base", "b", "--output", "out"],
    ["distill", "teacher", "--layers", "2", "--name", "m", "--data", "d.csv", "--model-repository", "repo"],
    ["export", "checkpoint", "--name", "m", "--model-repository", "repo"],
    ["evaluate", "m", "--data", "d.csv", "--model-repository", "repo"],
    ["build-demo", "--model-repository", "repo"],
], ids=lambda argv: argv[0])
def test_a_serving_only_install_names_the_extra_a_command_needs(argv, tmp_path):
    r = subprocess.run([sys.executable, "-c", SERVING_ONLY, *argv], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr  # one line
    assert r.stderr.startswith(f"bertserve {argv[0]} needs the export extra: pip install 'bertserve[export]'"), r.stderr
    assert "(missing: " in r.stderr


def test_a_missing_module_that_is_no_extra_s_is_not_explained_away():
    """Only the extras' packages get the one-line answer: any other missing module is a bug, raised as such."""
    import argparse

    from app.lifecycle.commands import _lazy

    with pytest.raises(ModuleNotFoundError):
        _lazy("no_such_command")(argparse.Namespace(command="no-such-command"))


def test_no_lifecycle_module_imports_the_cli_above_it():
    """The CLI imports the lifecycle commands, never the other way round (a cycle once: app.settings now holds
    settings_or_exit)."""
    import ast

    for module in (ROOT / "app" / "lifecycle").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "app.cli" or n.startswith("app.cli.") for n in names), module.name


def pair_version(repository: Path) -> Path:
    """A published version folder whose golden inputs are pairs (no graph: evaluate refuses before loading it)."""
    from app.repository import Artifact, Golden, ModelConfig, write_config, write_golden

    path = repository / "nli" / "1"
    path.mkdir(parents=True)
    for name in ("tokenizer.json", "model.onnx"):
        (path / name).write_text("{}")
    write_config(path, ModelConfig(labels=["no", "yes"], max_length=16,
                                   artifacts=[Artifact(file="model.onnx", precision="fp32", providers=["cpu"])]))
    write_golden(path, Golden(texts=[("a premise", "a hypothesis")], probabilities=[[0.5, 0.5]], min_agreement=1,
                              max_prob_diff=0.01))
    return path


def test_evaluate_refuses_a_pair_model_given_single_texts(tmp_path, capsys):
    """Without --text-pair-column a pair model would silently score each row's first text alone."""
    from app.cli import main

    pair_version(tmp_path / "repo")
    (tmp_path / "data.csv").write_text("premise,hypothesis,label\na,b,yes\n")
    with pytest.raises(SystemExit) as stopped:
        main(["evaluate", "nli", "--data", str(tmp_path / "data.csv"), "--text-column", "premise",
              "--model-repository", str(tmp_path / "repo")])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err == ("bertserve evaluate: nli:1 scores text pairs (its golden inputs are pairs): name the column of "
                   "each row's second text with --text-pair-column\n"), err


def test_train_help_shows_each_default_and_the_heads_train_makes(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--help"])
    assert stopped.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # as argparse wraps it for this terminal's width
    for option, default in [("epochs", "4"), ("learning-rate", "8e-05"), ("batch-size", "16"), ("max-length", "128"),
                            ("seed", "13"), ("text-column", "text"), ("label-column", "label")]:
        assert re.search(rf"--{option} [A-Z_]+ (?:(?! --).)*\(default: {re.escape(default)}\)", shown), option
    assert "It trains no multi-label or regression head" in shown


def test_models_lists_each_version_with_its_head(tmp_path, capsys):
    from app.cli import main

    pair_version(tmp_path / "repo")
    main(["models", "--model-repository", str(tmp_path / "repo")])
    assert capsys.readouterr().out == (
        "nli: versions 1\n  1: single-label head (softmax) over 2 label(s), max_length 16; model.onnx (fp32)\n")
