"""The engine cache on real sessions (the tiny model, onnxruntime and OpenVINO): the choice is recorded, reused
without timing anything, keyed (artifact bytes, runtime versions, settings), measured again when an entry is corrupt
or on request, kept in a temp folder when the repository cannot be written, and measured once when two processes
load the same version at once."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil

import onnx
import pytest

import app.engine
import app.loader
from app.cli import main
from app.engine_cache import FOLDER_NAME
from app.loader import load_model
from app.settings import Settings
from tests.support.golden import FAST, write_tiny_golden


@pytest.fixture
def repository(tiny_model_repo, tmp_path):
    """A repository holding the tiny model with golden outputs: <tmp>/repo/tiny/1; its default cache is
    <tmp>/repo/.engine-cache."""
    path = tmp_path / "repo" / "tiny" / "1"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    write_tiny_golden(path)
    return tmp_path / "repo"


def load(repository, **settings):
    return load_model("tiny", 1, repository / "tiny" / "1", Settings(**FAST | settings))


def entries(folder):
    return sorted(folder.glob("tiny-1-*.json"))


def no_measuring(monkeypatch):
    """From now on, any measurement fails the test: what loads must come from the cache."""
    def refuse(*args, **kwargs):
        raise AssertionError("the engines were measured again")

    monkeypatch.setattr(app.loader, "measure", refuse)


def test_the_choice_is_recorded_and_every_later_load_reuses_it(repository, monkeypatch):
    first = load(repository)
    cache = first.describe()["engine"]["cache"]
    assert cache["source"] == "measured now"
    [file] = entries(repository / FOLDER_NAME)
    assert cache["entry"] == file.name  # /models names the entry, never a path
    entry = json.loads(file.read_text())
    assert entry["choice"] == {"provider": first.engine.provider, "artifact": first.engine.artifact.file,
                               "precision": first.engine.precision}
    assert entry["rule"] == first.engine_choice["rule"] and entry["measured_by"] == os.getpid()
    assert {t["provider"] for t in entry["candidates"]} == {"cpu", "openvino"}
    assert all(len(t["rounds"]) == 3 for t in entry["candidates"])  # both passed: timed in alternating rounds
    key = entry["key"]
    assert key["cpu"] == app.engine.cpu_features() and key["cpu_count"] == os.cpu_count()
    assert key["runtimes"]["onnxruntime"] and key["golden_sha256"] and all(c["sha256"] for c in key["candidates"])

    no_measuring(monkeypatch)
    for _ in range(2):
        again = load(repository)
        choice = again.describe()["engine"]
        assert choice["cache"]["source"] == "engine cache" and choice["cache"]["entry"] == file.name
        assert (again.engine.provider, again.engine.artifact.file) == (first.engine.provider,
                                                                         first.engine.artifact.file)
        assert choice["candidates"] == entry["candidates"] and choice["rule"] == entry["rule"]
        assert choice["proof"]["passed"] and choice["proof"]["agreement"] >= 0.97  # the gate ran on this load
    assert entries(repository / FOLDER_NAME) == [file]


def test_the_key_changes_with_the_artifact_bytes_a_runtime_version_and_the_settings(repository, monkeypatch, caplog):
    load(repository)
    folder = repository / FOLDER_NAME
    assert len(entries(folder)) == 1
    # another runtime version: another key, measured again
    versions = app.engine.runtime_versions()
    monkeypatch.setattr(app.engine, "runtime_versions", lambda: versions | {"onnxruntime": "9.9.9"})
    assert load(repository).engine_choice["cache"]["source"] == "measured now"
    assert len(entries(folder)) == 2
    # a setting the choice depends on
    assert load(repository, fidelity_margin=0.5).engine_choice["cache"]["source"] == "measured now"
    assert len(entries(folder)) == 3
    # the same artifact file with other bytes (a re-published version)
    artifact = repository / "tiny" / "1" / "model.onnx"
    graph = onnx.load(artifact)
    graph.doc_string = "published again"
    onnx.save(graph, artifact)
    assert load(repository).engine_choice["cache"]["source"] == "measured now"
    assert len(entries(folder)) == 4
    assert load(repository).engine_choice["cache"]["source"] == "engine cache"


def test_a_corrupt_or_stale_entry_is_measured_again(repository, caplog):
    load(repository)
    [file] = entries(repository / FOLDER_NAME)
    good = file.read_text()
    file.write_text(good[: len(good) // 2])  # cut short
    with caplog.at_level(logging.WARNING, logger="bertserve.engine_cache"):
        model = load(repository)
    assert "cannot be used" in caplog.text and model.engine_choice["cache"]["source"] == "measured now"
    assert json.loads(file.read_text())["key"] == json.loads(good)["key"]  # rewritten whole
    # an entry naming an engine the version does not offer: measured again, not served blindly
    entry = json.loads(file.read_text())
    entry["choice"]["artifact"] = "gone.onnx"
    file.write_text(json.dumps(entry))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bertserve.loader"):
        model = load(repository)
    assert "does not offer" in caplog.text and model.engine_choice["cache"]["source"] == "measured now"
    assert json.loads(file.read_text())["choice"]["artifact"] != "gone.onnx"


def test_an_unwritable_repository_keeps_the_cache_in_the_temp_folder(repository, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (repository / FOLDER_NAME).write_text("not a folder")  # the repository's cache cannot be made (a read-only
    if os.geteuid() != 0:  # image); root writes anywhere, so only the blocked name stands for it then
        os.chmod(repository, 0o555)
    try:
        model = load(repository)
        folder = tmp_path / "tmp" / f"bertserve-engine-cache-{os.getuid()}"
        assert model.engine_choice["cache"]["folder"] == "temporary folder (the model repository is not writable)"
        assert [f.name for f in entries(folder)] == [model.engine_choice["cache"]["entry"]] and (folder.stat().st_mode & 0o777) == 0o700
        assert load(repository).engine_choice["cache"]["source"] == "engine cache"
        # BERTSERVE_ENGINE_CACHE wins over both
        given = tmp_path / "given" / "cache"
        model = load(repository, engine_cache=given)
        assert model.engine_choice["cache"]["source"] == "measured now" and len(entries(given)) == 1
    finally:
        os.chmod(repository, 0o755)


def _load_in_child(path, folder, barrier, results) -> None:
    """A worker process of one host: waits for the other, then loads the version with the shared cache folder."""
    barrier.wait()
    model = load_model("tiny", 1, path, Settings(engine_cache=folder, **FAST))
    results.put({"source": model.engine_choice["cache"]["source"], "waited_s": model.engine_choice["cache"]["waited_s"],
                 "engine": [model.engine.provider, model.engine.artifact.file], "pid": os.getpid()})


@pytest.mark.process
def test_two_processes_loading_at_once_measure_once(repository, tmp_path):
    """Two processes (spawned, as uvicorn's workers are separate processes) start loading together: one measures
    under the host's lock, the other waits, reads the entry and serves the same engine."""
    folder = tmp_path / "shared-cache"
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    children = [spawn.Process(target=_load_in_child, args=(repository / "tiny" / "1", folder, barrier, results))
                for _ in range(2)]
    for child in children:
        child.start()
    try:
        got = [results.get(timeout=300) for _ in children]
    finally:
        for child in children:
            child.join(timeout=60)
    assert sorted(r["source"] for r in got) == ["engine cache", "measured now"]
    assert got[0]["engine"] == got[1]["engine"]
    [file] = entries(folder)
    measurer = next(r for r in got if r["source"] == "measured now")
    assert json.loads(file.read_text())["measured_by"] == measurer["pid"]


def test_the_engines_command_lists_and_remeasures(repository, capsys, monkeypatch):
    monkeypatch.delenv("BERTSERVE_ENGINE_CACHE", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["engines", "--model-repository", str(repository)])
    assert done.value.code == 0
    assert "tiny 1: not measured for these settings on this host" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["engines", "--model-repository", str(repository), "--remeasure"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "tiny 1: measured now: " in out
    [file] = entries(repository / FOLDER_NAME)
    measured_at = json.loads(file.read_text())["measured_at"]
    assert file.name in out
    with pytest.raises(SystemExit):
        main(["engines", "--model-repository", str(repository)])
    listed = capsys.readouterr().out
    assert f"measured {measured_at}" in listed and str(file) in listed
    no_measuring(monkeypatch)  # the server's load reads what the command recorded
    assert load(repository).engine_choice["cache"]["source"] == "engine cache"
    # --remeasure measures even with an entry, and a model the repository lacks is refused
    monkeypatch.undo()
    with pytest.raises(SystemExit) as done:
        main(["engines", "--model-repository", str(repository), "--model", "tiny", "--remeasure"])
    assert done.value.code == 0 and "measured now" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["engines", "--model-repository", str(repository), "--model", "nope"])
    assert done.value.code == 1
