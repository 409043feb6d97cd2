"""The model repository's rules by tables: version policies, what a scan selects, version numbering, and the one
error format of its JSON files (file and field named)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.errors import ModelLoadError
from app.repository import CONFIG_FILE, POLICY_FILE, VersionPolicy, next_version, read_serving, wanted_versions


@pytest.mark.parametrize("policy, versions, selected", [
    ({}, [1, 2, 3], [3]),                          # default: the latest one
    ({"latest": 2}, [1, 2, 3], [2, 3]),
    ({"latest": 5}, [1, 2], [1, 2]),
    ({"specific": [1, 3]}, [1, 2, 3], [1, 3]),
    ({"specific": [4]}, [1, 2, 3], []),            # a version not published is not invented
    ({"all": True}, [1, 2, 3], [1, 2, 3]),
    ({}, [], []),
])
def test_version_policy_selects(policy, versions, selected):
    assert VersionPolicy.model_validate(policy).select(versions) == selected


@pytest.mark.parametrize("policy", [{"latest": 1, "all": True}, {"latest": 0}, {"specific": []}, {"newest": 1}])
def test_version_policy_refuses(policy):
    with pytest.raises(ValueError):
        VersionPolicy.model_validate(policy)


def _publish(root: Path, name: str, *versions: int) -> None:
    for v in versions:
        (root / name / str(v)).mkdir(parents=True)
        (root / name / str(v) / CONFIG_FILE).write_text("{}")


def test_a_scan_selects_by_policy_keeps_the_highest_within_the_cap_and_reports_a_broken_policy(tmp_path):
    _publish(tmp_path, "a", 1, 2, 3)
    _publish(tmp_path, "b", 1, 2)
    _publish(tmp_path, "c", 1)
    (tmp_path / "a" / "4").mkdir()  # unpublished (no bertserve.json): ignored
    (tmp_path / "a" / POLICY_FILE).write_text(json.dumps({"version_policy": {"all": True}}))
    (tmp_path / "c" / POLICY_FILE).write_text(json.dumps({"version_policy": {"latest": "many"}}))
    wanted = wanted_versions(tmp_path, max_loaded=2)
    assert wanted["a"].versions == (2, 3) and sorted(wanted["a"].folders) == [1, 2, 3]
    assert wanted["b"].versions == (2,) and wanted["b"].refused is None
    assert wanted["c"].versions == () and wanted["c"].serving is None
    assert wanted["c"].refused.startswith(f"{tmp_path / 'c' / POLICY_FILE}: version_policy.latest:")
    assert next_version(tmp_path, "a") == 5 and next_version(tmp_path, "new") == 1


@pytest.mark.parametrize("content, where", [
    ("[]", "(root)"),
    ('{"version_policy": {"latest": 1, "all": true}}', "version_policy"),
    ("{not json", "(root)"),
])
def test_a_broken_policy_file_names_the_file_and_the_field(tmp_path, content, where):
    (tmp_path / POLICY_FILE).write_text(content)
    with pytest.raises(ModelLoadError, match="^" + re.escape(f"{tmp_path / POLICY_FILE}: {where}:")):
        read_serving(tmp_path)


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd", "sub/model.onnx", "..\\model.onnx", "..", ".",
                                  "", "model\0.onnx"])
def test_an_artifact_is_a_plain_file_name(file):
    from app.repository import Artifact

    with pytest.raises(ValueError, match="plain file name"):
        Artifact(file=file, precision="fp32", providers=["cpu"])
    assert Artifact(file="..model.onnx", precision="fp32", providers=["cpu"]).file == "..model.onnx"


def test_a_config_naming_a_path_is_refused_with_the_field(tmp_path):
    from app.repository import read_config

    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / CONFIG_FILE).write_text(json.dumps({"labels": ["a", "b"], "max_length": 8, "artifacts": [
        {"file": "../../outside.onnx", "precision": "fp32", "providers": ["cpu"]}]}))
    where = f"{version / CONFIG_FILE}: artifacts[0].file: Value error, a plain file name"
    with pytest.raises(ModelLoadError, match=re.escape(where)):
        read_config(version)


def test_files_of_a_version_must_resolve_inside_the_repository(tmp_path):
    """A version folder, or any file of it, reached by a link leading out of the repository is refused; links
    that stay inside (a Kubernetes ConfigMap volume's `..data`) are followed."""
    from app.repository import inside

    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "m" / "1" / "..2026_12_03").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("x")
    (root / "m" / "1" / "..2026_12_03" / "tokenizer.json").write_text("{}")
    (root / "m" / "1" / "..data").symlink_to("..2026_12_03")
    (root / "m" / "1" / "tokenizer.json").symlink_to("..data/tokenizer.json")
    (root / "m" / "1" / "model.onnx").symlink_to(outside / "secret")
    (root / "m" / "2").symlink_to(outside)
    assert inside(root, root / "m" / "1" / "tokenizer.json") == root / "m" / "1" / "tokenizer.json"
    for path in (root / "m" / "1" / "model.onnx", root / "m" / "2", root / "m" / "2" / "secret"):
        with pytest.raises(ModelLoadError, match="outside the model repository"):
            inside(root, path)
    linked = tmp_path / "linked-repo"  # the repository itself may be reached through a link
    linked.symlink_to(root)
    assert inside(linked, linked / "m" / "1" / "tokenizer.json")


def test_a_serving_json_linked_outside_the_repository_is_refused(tmp_path):
    """The one file D7's fix missed (issue 36): serving.json reached by a link leading out of the repository is
    not read, like every file of a version; a link that stays inside (a ConfigMap's `..data`) is followed."""
    root, outside = tmp_path / "repo", tmp_path / "outside"
    _publish(root, "out", 1)
    _publish(root, "in", 1)
    outside.mkdir()
    (outside / POLICY_FILE).write_text('{"traffic": {"1": 100}}')
    (root / "out" / POLICY_FILE).symlink_to(outside / POLICY_FILE)
    (root / "in" / "..data").mkdir()
    (root / "in" / "..data" / POLICY_FILE).write_text('{"traffic": {"1": 100}}')
    (root / "in" / POLICY_FILE).symlink_to(Path("..data") / POLICY_FILE)
    wanted = wanted_versions(root, max_loaded=2)
    assert wanted["out"].serving is None and wanted["out"].versions == ()
    assert wanted["out"].refused == (f"{root / 'out' / POLICY_FILE}: a link leading outside the model repository "
                                     f"{root} (refused)")
    assert wanted["in"].refused is None and wanted["in"].serving.traffic == {1: 100}
