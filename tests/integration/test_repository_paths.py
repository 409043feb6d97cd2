"""Repository path safety through the real registry and loader (the app in-process: no process boundary is under
test): a version serves only files that lie in the repository. Artifact names that are paths, and links leading
out of the repository (from a version's files, its folder or its model folder), fail that version at load with
the reason, and a model's serving.json linked out of it is not read (bad_serving_json); links that stay inside,
as a Kubernetes ConfigMap or Secret volume lays them out, keep working."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.repository import CONFIG_FILE, GOLDEN_FILE, TOKENIZER_FILE
from app.settings import Settings
from tests.support.apps import in_process

OUTSIDE = "outside the model repository"
PLAIN = "a plain file name inside the version folder"


def _configmap_layout(version: Path) -> None:
    """What the kubelet writes for a ConfigMap volume: the files in a timestamped folder, `..data` linking to it,
    and each file a link through `..data`."""
    stamped = version / "..2026_12_03_10_00_00.000000001"
    stamped.mkdir()
    for file in [p for p in version.iterdir() if p != stamped]:
        file.rename(stamped / file.name)
    (version / "..data").symlink_to(stamped.name)
    for file in stamped.iterdir():
        (version / file.name).symlink_to(Path("..data") / file.name)


def _name_artifact(version: Path, file: str) -> None:
    config = json.loads((version / CONFIG_FILE).read_text())
    config["artifacts"][0]["file"] = file
    (version / CONFIG_FILE).write_text(json.dumps(config))


@pytest.fixture(scope="module")
def listed(tiny_model_repo, tmp_path_factory) -> Iterator[dict[str, dict]]:
    base = tmp_path_factory.mktemp("paths")
    root, outside = base / "repo", base / "outside"
    tiny = tiny_model_repo / "tiny" / "1"
    shutil.copytree(tiny, outside / "1")
    (outside / GOLDEN_FILE).write_text(json.dumps({"texts": ["fine"], "probabilities": [[0.3, 0.3, 0.4]],
                                                   "min_agreement": 0, "max_prob_diff": 1}))  # passes anything

    def version(name: str) -> Path:
        shutil.copytree(tiny, root / name / "1")
        return root / name / "1"

    version("plain")
    _configmap_layout(version("configmap"))
    _name_artifact(version("artifact-relative"), "../../../outside/1/model.onnx")
    _name_artifact(version("artifact-absolute"), str(outside / "1" / "model.onnx"))
    for name, file in [("onnx-link", "model.onnx"), ("tokenizer-link", TOKENIZER_FILE),
                       ("config-link", CONFIG_FILE), ("golden-link", GOLDEN_FILE)]:
        path = version(name) / file
        path.unlink(missing_ok=True)
        path.symlink_to(outside / (GOLDEN_FILE if file == GOLDEN_FILE else f"1/{file}"))
    (root / "folder-link").mkdir()
    (root / "folder-link" / "1").symlink_to(outside / "1")
    (root / "model-link").symlink_to(outside)
    (base / "elsewhere").mkdir()
    (base / "elsewhere" / "serving.json").write_text('{"traffic": {"1": 100}}')
    version("serving-link")
    (root / "serving-link" / "serving.json").symlink_to(base / "elsewhere" / "serving.json")
    call = in_process(Settings(model_repository=root, poll_interval_s=0, batch_autotune=False, log_level="error"))
    for respond in call:
        models = respond("GET", "/models").json()
        yield {m["name"]: m for m in models} | {"predict": respond(
            "POST", "/predict", json={"inputs": "fine", "model": "configmap"}).json()}


@pytest.mark.parametrize("name", ["plain", "configmap"])
def test_files_in_the_repository_serve_links_inside_included(listed, name):
    assert listed[name]["state"] == "ready", listed[name]


def test_a_configmap_version_answers(listed):
    assert {row["label"] for row in listed["predict"]} == {"negative", "neutral", "positive"}


@pytest.mark.parametrize("name, reason", [
    ("artifact-relative", PLAIN), ("artifact-absolute", PLAIN),
    ("onnx-link", OUTSIDE), ("tokenizer-link", OUTSIDE), ("config-link", OUTSIDE), ("golden-link", OUTSIDE),
    ("folder-link", OUTSIDE), ("model-link", OUTSIDE), ("serving-link", OUTSIDE),
])
def test_a_version_reaching_out_of_the_repository_fails_with_the_reason(listed, name, reason):
    entry = listed[name]
    assert entry["state"] == "failed" and reason in entry["reason"], entry


def test_a_serving_json_linked_out_of_the_repository_is_not_read(listed):
    """Issue 36 (the one file D7's fix missed): refused like the version's own files, so nothing of the model
    loads and /models says why."""
    entry = listed["serving-link"]
    assert (entry["state"], entry["cause"]) == ("failed", "bad_serving_json") and OUTSIDE in entry["reason"], entry
    assert entry["routing"]["asked"] is None and entry["routing"]["in_force"] is None
