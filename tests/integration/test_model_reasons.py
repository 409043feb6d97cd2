"""Why a version or a traffic table is not serving, as GET /models tells each caller: an admin key (or anyone, with
no key configured at all) the full reason, paths and text quoted from repository files included; a client key
only the cause code and a fixed reason per cause."""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest

from tests.support.servers import call

pytestmark = pytest.mark.process

CLIENT, ADMIN = "reasons-client-key", "reasons-admin-key"
MARKER = "zqx" + uuid.uuid4().hex[:12] + "quoted"  # found only where repository text was quoted


@pytest.fixture
def repository(tiny_model_repo, tmp_path):
    """tiny/1 serves; broken/1 lacks its tokenizer (its reason names the path); quoted/1's serving.json names a
    traffic version the reason quotes."""
    repo = tmp_path / "repo"
    for name in ("tiny", "broken", "quoted"):
        shutil.copytree(tiny_model_repo / "tiny", repo / name)
    (repo / "broken" / "1" / "tokenizer.json").unlink()
    (repo / "quoted" / "serving.json").write_text(json.dumps({"traffic": {MARKER: 100}}))
    return repo


def settled(server) -> None:
    deadline = time.monotonic() + 120
    while call(server, "GET", "/health/ready", None, None).json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def models(server, key: str | None, path: str = "/models") -> str:
    r = call(server, "GET", path, None, key)
    assert r.status_code == 200, r.text
    return r.text


def causes(listed: str) -> dict[str, str]:
    return {m["name"]: m.get("cause") for m in json.loads(listed)}


def test_client_keys_get_cause_codes_admin_keys_the_full_reason(repository, start_server):
    env = {"BERTSERVE_API_KEYS": CLIENT, "BERTSERVE_ADMIN_API_KEYS": ADMIN}
    server = start_server(repository, env=env, wait_ready=False)
    settled(server)
    path = str(repository.resolve())
    admin = models(server, ADMIN)
    assert path in admin and MARKER in admin  # the admin sees everything the log says
    expected = {"tiny": None, "broken": "missing_files", "quoted": "bad_serving_json"}
    for listed in (models(server, CLIENT), models(server, CLIENT, "/models/broken"),
                   models(server, CLIENT, "/models/quoted")):
        assert path not in listed and MARKER not in listed and str(repository) not in listed, listed
        assert causes(listed).items() <= expected.items()
    broken = json.loads(models(server, CLIENT, "/models/broken"))[0]
    assert broken["state"] == "failed" and broken["reason"].startswith("a file the version needs is missing")
    assert causes(admin) == expected
    ready = call(server, "GET", "/health/ready", None, None).text  # open: never more than the cause codes
    assert path not in ready and MARKER not in ready


def test_without_keys_every_caller_gets_the_full_reason(repository, start_server):
    server = start_server(repository, wait_ready=False)  # no key configured: a trusted network
    settled(server)
    listed = models(server, None)
    assert str(repository.resolve()) in listed and MARKER in listed
