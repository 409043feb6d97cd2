"""The lifecycle commands on a serving-only install (`pip install '.[cpu]'`): the export extra's packages cannot be
imported. Each command is run as `bertserve` runs it, in a fresh interpreter where those imports fail exactly as
for a package that is not installed (a finder at the head of sys.meta_path)."""

from __future__ import annotations

import os
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
