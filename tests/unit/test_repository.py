"""The model repository's rules by tables: version policies, what a scan selects, version numbering, and the one
error format of its JSON files (file and field named)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.errors import ModelLoadError
from app.repository import CONFIG_FILE, POLICY_FILE, VersionPolicy, next_version, read_policy, wanted_versions


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
    assert [v for v, _ in wanted["a"]] == [2, 3]
    assert [v for v, _ in wanted["b"]] == [2]
    assert isinstance(wanted["c"], str) and wanted["c"].startswith(f"{tmp_path / 'c' / POLICY_FILE}: version_policy.latest:")
    assert next_version(tmp_path, "a") == 5 and next_version(tmp_path, "new") == 1


@pytest.mark.parametrize("content, where", [
    ("[]", "(root)"),
    ('{"version_policy": {"latest": 1, "all": true}}', "version_policy"),
    ("{not json", "(root)"),
])
def test_a_broken_policy_file_names_the_file_and_the_field(tmp_path, content, where):
    (tmp_path / POLICY_FILE).write_text(content)
    with pytest.raises(ModelLoadError, match="^" + re.escape(f"{tmp_path / POLICY_FILE}: {where}:")):
        read_policy(tmp_path)
