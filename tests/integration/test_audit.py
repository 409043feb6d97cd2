"""The audit log of a real `bertserve serve` with 2 workers: an admin session, 2,000 bad HTTP keys and bad gRPC keys
give verifiable chains, one per worker, with fingerprints only and a bounded number of refusal records; and
BERTSERVE_AUDIT_REQUIRED with a log that cannot be opened refuses to start (one line, exit 2)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys

import httpx
import pytest

from app.cli import main
from tests.support.paths import ROOT
from tests.support.servers import free_port

pytestmark = pytest.mark.process

ADMIN, CLIENT = "audit-admin-key-1", "audit-client-key-1"


async def _bad_keys(url: str, count: int) -> set[int]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
        left = list(range(count))
        statuses: set[int] = set()

        async def worker():
            while left:
                left.pop()
                r = await client.get(url + "/models", headers={"Authorization": "Bearer wrong-key"})
                statuses.add(r.status_code)

        await asyncio.gather(*(worker() for _ in range(16)))
        return statuses


def test_two_workers_admin_session_and_bad_key_burst(tmp_path, tiny_model_repo, start_server, capsys):
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    log = tmp_path / "audit.jsonl"
    server = start_server(tiny_model_repo, workers=2, env={
        "BERTSERVE_AUDIT_LOG": str(log), "BERTSERVE_AUDIT_REQUIRED": "true", "BERTSERVE_ADMIN_API_KEYS": ADMIN,
        "BERTSERVE_API_KEYS": CLIENT, "BERTSERVE_POLL_INTERVAL_S": "0"})
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert httpx.post(server.url + "/admin/models/tiny/unload", headers=admin, timeout=30).status_code == 200
    assert httpx.post(server.url + "/admin/models/tiny/load", headers=admin, timeout=60).status_code == 200
    assert asyncio.run(_bad_keys(server.url, 2000)) == {401}
    grpc_client = tgrpc.InferenceServerClient(server.grpc_address)
    for _ in range(20):
        with pytest.raises(InferenceServerException):
            grpc_client.is_model_ready("tiny", headers={"authorization": "Bearer wrong-grpc-key"})
    grpc_client.close()
    assert server.stop() == 0

    files = sorted(tmp_path.glob("audit.jsonl.*"))  # as the README says (the key is not matched)
    assert len(files) == 2, server.output()  # one chain per worker
    text = "".join(f.read_text() for f in files)
    assert ADMIN not in text and CLIENT not in text and "wrong-key" not in text and "wrong-grpc-key" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    for file in files:
        events = [json.loads(line)["event"] for line in file.read_text().splitlines()]
        assert events[0] == "start" and events[-1] == "stop", events
    admin_records = [r for r in lines if r["event"] == "admin"]
    # Each call recorded by the worker that took it (either one: the files are read one after the other), requested
    # then ok, and the unload before the load
    calls = {"unload": [r for r in admin_records if r["route"].endswith("/unload")],
             "load": [r for r in admin_records if r["route"].endswith("/load")]}
    assert {route: [r["outcome"] for r in records] for route, records in calls.items()} == {
        "unload": ["requested", "ok"], "load": ["requested", "ok"]}
    assert max(r["time"] for r in calls["unload"]) <= min(r["time"] for r in calls["load"])
    assert len(admin_records) == 4
    assert len({r["caller"] for r in admin_records}) == 1
    refusals = [r for r in lines if r["event"] == "auth_refused"]
    assert sum(r["count"] for r in refusals) == 2020
    # one fingerprint each for HTTP's and gRPC's bad key, from one address, per worker and minute
    assert len(refusals) <= 2 * 2 * 2, refusals
    assert {r["client"] for r in refusals} == {"127.0.0.1"}
    assert len({r["caller"] for r in refusals}) == 2
    loaded = [r for r in lines if r["event"] == "version" and r["outcome"] == "loaded"]
    assert {r["chain"] for r in loaded} == {f.name.rsplit(".", 1)[1] for f in files}  # each worker, at start
    for record in loaded:  # the artifact each worker serves, by its sha256
        served = tiny_model_repo / "tiny" / "1" / record["artifact"]
        assert record["sha256"] == hashlib.sha256(served.read_bytes()).hexdigest()
    assert main_verify(files) == 0, capsys.readouterr().err


def main_verify(files) -> int:
    try:
        main(["audit", "verify", *map(str, files)])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_required_audit_log_that_cannot_be_opened_refuses_to_start(tmp_path, tiny_model_repo):
    env = {**os.environ, "BERTSERVE_AUDIT_LOG": str(tmp_path / "missing" / "audit.jsonl"),
           "BERTSERVE_AUDIT_REQUIRED": "true", "BERTSERVE_GRPC_PORT": "0"}
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(free_port()), "--model-repository",
               str(tiny_model_repo)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("bertserve: BERTSERVE_AUDIT_REQUIRED: the audit log cannot be opened: ")
    assert str(tmp_path / "missing") in line and "No such file or directory" in line
