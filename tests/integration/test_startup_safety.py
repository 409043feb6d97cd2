"""Start-up fails closed and deletes nothing it did not create, against real `bertserve serve` processes on
loopback: key settings or files that yield no key refuse to start, key-file comments are not keys, and the
metrics folder is cleared of bertserve's own files only, refused when it holds anything else, and (the default
temp folder) removed at exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.metrics import metric
from tests.support.paths import ROOT
from tests.support.servers import call, free_port, post
from tests.support.tiny import REVIEW

pytestmark = pytest.mark.process


def refused(repository: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `bertserve serve` expecting it to refuse: bounded, so a server that starts anyway fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port()), "--model-repository", str(repository)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "BERTSERVE_LOG_LEVEL": "info", **env},
    )


# ---- keys: fail closed ----

@pytest.mark.parametrize("contents", ["", "\n# keys go here\n\n"])
def test_a_key_file_with_no_key_refuses_to_start(tiny_model_repo, tmp_path, contents):
    """An unpopulated Kubernetes Secret (empty file) or a comment-only file: exit 2 with one line, never open."""
    keys = tmp_path / "keys"
    keys.write_text(contents)
    r = refused(tiny_model_repo, {"BERTSERVE_API_KEYS_FILE": str(keys)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"bertserve: bad settings: BERTSERVE_API_KEYS_FILE {keys} holds no key (only blank "
                                "lines or # comments): give at least one key, or unset it")


@pytest.mark.parametrize("env", [{"BERTSERVE_API_KEYS": ","}, {"BERTSERVE_ADMIN_API_KEYS": ""}])
def test_a_keys_setting_with_no_key_refuses_to_start(tiny_model_repo, env):
    (name, _), = env.items()
    r = refused(tiny_model_repo, env)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"bertserve: bad settings: {name} is set but holds no key: give at least one key, " \
        "or unset it"


def test_key_file_comments_and_blank_lines_are_not_keys(tiny_model_repo, start_server, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\n  the-key  \n")
    server = start_server(tiny_model_repo, env={"BERTSERVE_API_KEYS_FILE": str(keys), "BERTSERVE_API_KEYS": "the-key"})
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, "# comment").status_code == 401
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, "#").status_code == 401
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, "the-key").status_code == 200
    server.stop()
    # the same key in the setting and the file counts once
    assert "access: 1 client key(s) and 0 admin key(s) loaded" in server.output()


# ---- the metrics folder: delete nothing we did not create ----

def test_a_metrics_folder_holding_other_things_is_refused_untouched(tiny_model_repo, tmp_path):
    folder = tmp_path / "metrics"
    (folder / "kept").mkdir(parents=True)
    (folder / "kept" / "inner.txt").write_text("mine")
    (folder / "notes.txt").write_text("mine too")
    (folder / "counter_1.db").write_text("looks like ours")  # ours by name: still nothing is deleted
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    r = refused(tiny_model_repo, {"BERTSERVE_METRICS_DIR": str(folder)})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"bertserve: BERTSERVE_METRICS_DIR {folder} holds 2 item(s) that are not bertserve "
                                "metric files (kept/, notes.txt); nothing was deleted: give it a folder of its own")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


def test_a_metrics_folder_holding_only_old_metric_files_is_cleared_and_kept(tiny_model_repo, start_server, tmp_path):
    """A run in a folder that does not exist yet creates it and leaves its files at exit (the folder is the
    user's); the next run clears them (or the last run's counts would come back) and serves."""
    folder = tmp_path / "metrics"
    env = {"BERTSERVE_METRICS_DIR": str(folder)}
    first = start_server(tiny_model_repo, env=env)
    assert post(first, {"inputs": REVIEW}).status_code == 200
    assert metric(first.metrics_text(), "bertserve_requests_total", status="200") == 1
    assert first.stop() == 0
    old = sorted(p.name for p in folder.iterdir())
    assert old and all(name.endswith(".db") for name in old)
    second = start_server(tiny_model_repo, env=env)
    assert metric(second.metrics_text(), "bertserve_requests_total", status="200") == 0
    assert post(second, {"inputs": REVIEW}).status_code == 200
    assert metric(second.metrics_text(), "bertserve_requests_total", status="200") == 1
    assert second.stop() == 0
    assert folder.is_dir()


@pytest.mark.parametrize("workers", [1, 2])
def test_the_default_metrics_folder_is_removed_at_exit(tiny_model_repo, start_server, tmp_path, workers):
    """No BERTSERVE_METRICS_DIR: a temp folder of the server's own, gone after SIGTERM (a private TMPDIR, so
    other runs on the machine do not interfere)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = start_server(tiny_model_repo, workers=workers, env={"TMPDIR": str(tmp)})
    assert post(server, {"inputs": REVIEW}).status_code == 200
    made = list(tmp.glob("bertserve-metrics-*"))
    assert len(made) == 1 and list(made[0].glob("*.db")), server.output()
    assert server.stop(signal.SIGTERM) == 0
    assert not list(tmp.glob("bertserve-metrics-*")), server.output()
