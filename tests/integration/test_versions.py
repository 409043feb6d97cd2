"""Several models and versions side by side, version policies, hot reload under load, admin load/unload."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import post
from tests.support.tiny import REVIEW

pytestmark = pytest.mark.process


@pytest.fixture(scope="session")
def second_model(tmp_path_factory) -> Path:
    """A different random model (another seed): its scores differ from the tiny model's."""
    from tests.support.tiny import export_tiny_model, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("second")
    checkpoint = make_tiny_checkpoint(root / "checkpoint", seed=1)
    return export_tiny_model(checkpoint, root / "repo" / "m" / "1")


def publish(source: Path, target: Path) -> None:
    """Atomically, as `bertserve export` does: copy under a non-version name, then rename."""
    staging = target.parent / f".staging-{target.name}"
    shutil.copytree(source, staging)
    staging.rename(target)


def wait_for(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def versions_served(server, name: str) -> dict[int, str]:
    return {m["version"]: m["state"] for m in httpx.get(server.url + f"/models/{name}").json()}


def test_two_models_and_two_versions_side_by_side(tiny_model_repo, second_model, tmp_path, start_server):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "sentiment" / "1")
    shutil.copytree(second_model, repo / "sentiment" / "2")
    shutil.copytree(second_model, repo / "intent" / "1")
    (repo / "sentiment" / "serving.json").write_text('{"version_policy": {"latest": 2}}')
    # One engine for every copy: auto measures each at load, and may pick OpenVINO (bf16 on this CPU) for one copy of
    # the same artifact and onnxruntime for another (scores then differ by ~2e-5)
    server = start_server(repo, env={"BERTSERVE_POLL_INTERVAL_S": "0", "BERTSERVE_PROVIDER": "cpu"})
    assert versions_served(server, "sentiment") == {1: "ready", 2: "ready"}
    v1 = post(server, {"inputs": REVIEW, "model": "sentiment", "version": 1})
    v2 = post(server, {"inputs": REVIEW, "model": "sentiment", "version": 2})
    default = post(server, {"inputs": REVIEW, "model": "sentiment"})
    other = post(server, {"inputs": REVIEW, "model": "intent"})
    assert [r.headers["x-model-version"] for r in (v1, v2, default)] == ["1", "2", "2"]
    assert other.headers["x-model-name"] == "intent"
    # The same artifact answers v2, default and intent: the same labels, scores equal up to float rounding (each
    # loaded copy may run on another session of the engine, e.g. the wide one at low load, summing in another order)
    assert v1.json() != v2.json()
    for answer in (default.json(), other.json()):
        assert [e["label"] for e in answer] == [e["label"] for e in v2.json()]
        assert [e["score"] for e in answer] == pytest.approx([e["score"] for e in v2.json()], abs=1e-5)
    assert post(server, {"inputs": REVIEW}).status_code == 422  # two models: name one
    assert post(server, {"inputs": REVIEW, "model": "sentiment", "version": 3}).status_code == 404
    listed = httpx.get(server.url + "/models").json()
    assert {(m["name"], m["version"], m["default"]) for m in listed} == {
        ("intent", 1, True), ("sentiment", 1, False), ("sentiment", 2, True)
    }


def test_version_policies_and_the_loaded_versions_cap(tiny_model_repo, tmp_path, start_server):
    repo = tmp_path / "repo"
    for version in (1, 2, 3):
        shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / str(version))
    (repo / "tiny" / "serving.json").write_text('{"version_policy": {"specific": [1, 3]}}')
    server = start_server(repo, env={"BERTSERVE_POLL_INTERVAL_S": "0"})
    assert versions_served(server, "tiny") == {1: "ready", 3: "ready"}
    (repo / "tiny" / "serving.json").write_text('{"version_policy": {"all": true}}')
    server = start_server(repo, env={"BERTSERVE_POLL_INTERVAL_S": "0", "BERTSERVE_MAX_LOADED_VERSIONS": "2"})
    assert versions_served(server, "tiny") == {2: "ready", 3: "ready"}
    (repo / "tiny" / "serving.json").unlink()
    server = start_server(repo, env={"BERTSERVE_POLL_INTERVAL_S": "0"})
    assert versions_served(server, "tiny") == {3: "ready"}  # default policy: the latest


def test_hot_reload_under_load_drops_nothing(tiny_model_repo, second_model, tmp_path, start_server):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / "1")
    server = start_server(repo, env={"BERTSERVE_POLL_INTERVAL_S": "0.2"})
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client_loop():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(server.url + "/predict", json={"inputs": REVIEW})
                seen.append((r.status_code, r.headers.get("x-model-version")))

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(seen) >= 20)  # traffic on version 1 first
        publish(second_model, repo / "tiny" / "2")
        wait_for(lambda: any(v == "2" for _, v in seen[-4:]))
        shutil.rmtree(repo / "tiny" / "1")
        wait_for(lambda: versions_served(server, "tiny") == {2: "ready"})
        after = len(seen)
        wait_for(lambda: len(seen) >= after + 20)  # and on version 2 after version 1 is gone
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    statuses = [s for s, _ in seen]
    versions = [v for _, v in seen]
    assert statuses.count(200) == len(seen), {s for s in statuses}
    first_v2 = versions.index("2")
    assert versions[:first_v2] == ["1"] * first_v2 and first_v2 > 0
    assert versions[-20:] == ["2"] * 20  # traffic moved to version 2 and stayed
    print(f"hot reload: {len(seen)} requests, {first_v2} on version 1, {len(seen) - first_v2} on 2, 0 failed")


def test_admin_unload_and_load_behind_the_admin_key(tiny_model_repo, start_server):
    env = {"BERTSERVE_API_KEYS": "c", "BERTSERVE_ADMIN_API_KEYS": "k", "BERTSERVE_POLL_INTERVAL_S": "0.2"}
    server = start_server(tiny_model_repo, env=env)
    auth = {"Authorization": "Bearer k"}
    assert httpx.post(server.url + "/admin/models/tiny/unload").status_code == 401
    assert httpx.post(server.url + "/admin/models/tiny/unload", headers={"Authorization": "Bearer c"}).status_code == 403
    unloaded = httpx.post(server.url + "/admin/models/tiny/unload", headers=auth)
    assert unloaded.status_code == 200 and unloaded.json()["scope"].startswith("this worker (pid ")  # this one only
    assert post(server, {"inputs": REVIEW, "model": "tiny"}, headers=auth).status_code == 404
    time.sleep(0.5)  # polling does not bring back what an operator unloaded
    assert post(server, {"inputs": REVIEW, "model": "tiny"}, headers=auth).status_code == 404
    assert httpx.post(server.url + "/admin/models/nope/unload", headers=auth).status_code == 404
    loaded = httpx.post(server.url + "/admin/models/tiny/load", headers=auth)
    assert loaded.status_code == 200 and loaded.json()[0]["state"] == "ready"
    assert post(server, {"inputs": REVIEW, "model": "tiny"}, headers=auth).status_code == 200
    assert httpx.post(server.url + "/admin/models/nope/load", headers=auth).status_code == 404


def test_a_routing_key_sticks_across_worker_processes(tiny_model_repo, second_model, tmp_path, start_server):
    """Canary stickiness where a process boundary matters: two workers (each its own hash seed) place a key alike,
    and every worker splits by the same serving.json."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / "1")
    shutil.copytree(second_model, repo / "tiny" / "2")
    (repo / "tiny" / "serving.json").write_text('{"traffic": {"1": 50, "2": 50}}')
    server = start_server(repo, workers=2, env={"BERTSERVE_POLL_INTERVAL_S": "0"})
    placed: dict[str, set[str]] = {}
    for k in range(40):
        for _ in range(4):  # a new connection each time: the kernel spreads them over both workers
            r = post(server, {"inputs": REVIEW}, headers={"X-Routing-Key": f"user-{k}"})
            assert r.status_code == 200
            placed.setdefault(f"user-{k}", set()).add(r.headers["x-model-version"])
    assert all(len(v) == 1 for v in placed.values()), placed
    assert {v for vs in placed.values() for v in vs} == {"1", "2"}
    text = server.metrics_text()
    pids = set(re.findall(r'bertserve_queue_size\{[^}]*pid="(\d+)"', text))
    assert len(pids) == 2  # both workers were up and taking connections (each routes with its own table)
