"""The audit log (app.audit) in-process: the hash chain and `bertserve audit verify` (an untouched log passes; a
removed, an edited and a reordered record are each caught at the right line), rotation keeping the chain, the HMAC
key made once and shared, refusals aggregated, and the real app: an admin session, a refused traffic table and
2,000 bad keys in the log with fingerprints only; BERTSERVE_AUDIT_REQUIRED refusing admin calls (503) while a write
fails and /predict keeps answering."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from app import audit, metrics
from app.cli import main
from app.settings import Settings
from tests.support.apps import App, write_serving
from tests.support.metrics import metric

ADMIN, CLIENT = "admin-secret-key-1", "client-secret-key-1"


def settings(tmp_path: Path, **extra) -> Settings:
    return Settings(model_repository=tmp_path, audit_log=str(tmp_path / "audit.jsonl"), **extra)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def verify(*files: Path) -> int:
    """`bertserve audit verify FILE...`'s exit status (its words: capsys)."""
    try:
        main(["audit", "verify", *map(str, files)])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def chain(tmp_path) -> Path:
    """A closed log of this process: start, 10 events, stop (12 lines)."""
    audit.open_log(settings(tmp_path))
    for n in range(10):
        audit.event("version", "loaded", model="tiny", version=n)
    audit.close_log()
    return tmp_path / f"audit.jsonl.{os.getpid()}"


def test_untouched_log_verifies_and_records_have_their_fields(chain, capsys):
    lines = records(chain)
    assert [r["event"] for r in lines] == ["start"] + ["version"] * 10 + ["stop"]
    assert lines[0]["prev"] == "" and all(r["chain"] == str(os.getpid()) and r["pid"] == os.getpid() for r in lines)
    assert lines[0]["time"].endswith("+00:00") and lines[0]["bertserve"]
    assert verify(chain) == 0
    assert "every chain is whole" in capsys.readouterr().out
    assert stat.S_IMODE(chain.stat().st_mode) == 0o600


@pytest.mark.parametrize("change, broken_line", [
    ("remove", 5),  # line 5 removed: the record now at line 5 does not follow line 4
    ("edit", 6),  # line 5 edited: line 6's prev no longer matches it
    ("reorder", 5),  # lines 5 and 6 swapped: the record now at line 5 does not follow line 4
    ("remove_start", 1),  # the start record removed: the chain begins with neither start nor rotated
])
def test_verify_names_the_first_broken_record(chain, capsys, change, broken_line):
    lines = chain.read_text().splitlines(keepends=True)
    if change == "remove":
        del lines[4]
    elif change == "edit":
        lines[4] = lines[4].replace('"version":3', '"version":33')
    elif change == "reorder":
        lines[4], lines[5] = lines[5], lines[4]
    else:
        del lines[0]
    chain.write_text("".join(lines))
    assert verify(chain) == 1
    err = capsys.readouterr().err
    assert f"{chain}:{broken_line} (chain {os.getpid()})" in err, err


def test_rotation_keeps_the_chain_across_files(tmp_path, capsys):
    log = audit.open_log(settings(tmp_path, audit_log_max_bytes=1500, audit_log_max_files=3))
    for n in range(30):
        audit.event("version", "loaded", model="tiny", version=n, reason="x" * 100)
    audit.close_log()
    base = tmp_path / f"audit.jsonl.{log.pid}"
    files = sorted(tmp_path.glob(f"audit.jsonl.{log.pid}*"))
    assert {f.name for f in files} == {base.name} | {f"{base.name}.{n}" for n in (1, 2, 3)}  # older ones deleted
    assert all(f.stat().st_size < 1500 + 600 for f in files)
    current, previous = records(base), (tmp_path / f"{base.name}.1").read_bytes().splitlines()
    assert current[0]["event"] == "rotated" and current[0]["prev"] == hashlib.sha256(previous[-1]).hexdigest()
    assert verify(*reversed(files)) == 0  # any order: rotated files are read oldest first
    # A rotated file edited at its end: the next file's first record names it.
    middle = tmp_path / f"{base.name}.1"
    *head, last = middle.read_bytes().splitlines(keepends=True)
    middle.write_bytes(b"".join(head) + last.replace(b'"outcome":"loaded"', b'"outcome":"LOADED"'))
    assert verify(*files) == 1
    assert f"{base}:1 (chain {log.pid})" in capsys.readouterr().err


def test_hmac_key_made_once_mode_0600_and_shared(tmp_path):
    one, two = audit.AuditLog(settings(tmp_path)), audit.AuditLog(settings(tmp_path))
    key_file = tmp_path / "audit.jsonl-hmac-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and list(tmp_path.glob(".audit*")) == []
    assert one.fingerprint(ADMIN.encode()) == two.fingerprint(ADMIN.encode()) != one.fingerprint(CLIENT.encode())
    assert len(one.fingerprint(ADMIN.encode())) == 16 and ADMIN not in one.fingerprint(ADMIN.encode())
    given = tmp_path / "given-key"
    given.write_text("a key from a Secret\n")
    three = audit.AuditLog(settings(tmp_path, audit_hmac_key_file=given))
    assert three.fingerprint(ADMIN.encode()) != one.fingerprint(ADMIN.encode())
    for log in (one, two, three):
        log.close()


def test_stdout_needs_a_key_file_and_required_needs_a_log(tmp_path):
    with pytest.raises(ValueError, match="AUDIT_HMAC_KEY_FILE"):
        Settings(model_repository=tmp_path, audit_log="-")
    with pytest.raises(ValueError, match="AUDIT_LOG"):
        Settings(model_repository=tmp_path, audit_required=True)


def test_unopenable_log_raises_when_required_else_is_off(tmp_path):
    missing = tmp_path / "no" / "such" / "folder" / "audit.jsonl"
    assert audit.check_writable(Settings(model_repository=tmp_path, audit_log=str(missing)))
    with pytest.raises(audit.AuditError, match="audit"):
        audit.open_log(Settings(model_repository=tmp_path, audit_log=str(missing), audit_required=True))
    assert audit.open_log(Settings(model_repository=tmp_path, audit_log=str(missing))) is None


def test_settings_in_the_start_record_never_hold_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("file-held-key-123\n")
    audit.open_log(settings(tmp_path, admin_api_keys=ADMIN, api_keys_file=keys))
    audit.close_log()
    text = (tmp_path / f"audit.jsonl.{os.getpid()}").read_text()
    assert ADMIN not in text and "file-held-key-123" not in text
    assert records(tmp_path / f"audit.jsonl.{os.getpid()}")[0]["settings"]["admin_api_keys"] == "<1 key(s), redacted>"


def _app(tmp_path: Path, repo: Path, **extra) -> App:
    return App(repo, admin_api_keys=ADMIN, api_keys=CLIENT, audit_log=str(tmp_path / "audit.jsonl"), **extra)


def test_admin_session_refused_table_and_bad_key_burst(tmp_path, tiny_model_repo, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)

    async def scenario():
        async with _app(tmp_path, repo) as app:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            unloaded = await app.client.post("/admin/models/tiny/unload", headers=admin)
            loaded = await app.client.post("/admin/models/tiny/load", headers=admin)
            client = {"Authorization": f"Bearer {CLIENT}"}
            forbidden = await app.client.post("/admin/models/tiny/unload", headers=client)
            missing = await app.client.post("/admin/models/nope/load", headers=admin)
            bad = [await app.client.post("/predict", json={"inputs": "x"},
                                         headers={"Authorization": f"Bearer bad-{n % 3}"}) for n in range(2000)]
            write_serving(repo, '{"traffic": {"1": 50, "7": 50}}')  # version 7 does not exist: refused
            await app.service.registry.sync()
            audit.close_log(app.service.list_models())
            return unloaded, loaded, forbidden, missing, {r.status_code for r in bad}

    unloaded, loaded, forbidden, missing, bad = asyncio.run(scenario())
    statuses = (unloaded.status_code, loaded.status_code, forbidden.status_code, missing.status_code)
    assert statuses == (200, 200, 403, 404)
    assert bad == {401}
    file = tmp_path / f"audit.jsonl.{os.getpid()}"
    text, lines = file.read_text(), records(file)
    assert ADMIN not in text and CLIENT not in text and "bad-1" not in text
    key = (tmp_path / "audit.jsonl-hmac-key").read_bytes().strip()
    admin_fp = hmac.new(key, ADMIN.encode(), hashlib.sha256).hexdigest()[:16]
    admin = [(r["outcome"], r["route"], r.get("status"), r["model"]) for r in lines if r["event"] == "admin"]
    assert admin == [("requested", "/admin/models/{name}/unload", None, "tiny"),
                     ("ok", "/admin/models/{name}/unload", 200, "tiny"),
                     ("requested", "/admin/models/{name}/load", None, "tiny"),
                     ("ok", "/admin/models/{name}/load", 200, "tiny"),
                     ("requested", "/admin/models/{name}/load", None, "nope"),
                     ("failed", "/admin/models/{name}/load", 404, "nope")]
    assert all(r["caller"] == admin_fp for r in lines if r["event"] == "admin")
    versions = [(r["outcome"], r["version"]) for r in lines if r["event"] == "version"]
    assert versions[:3] == [("loaded", 1), ("unloaded", 1), ("loaded", 1)]
    [table] = [r for r in lines if r["event"] == "table" and r["outcome"] == "refused"]
    assert table["model"] == "tiny" and "7" in table["reason"]
    refusals = [r for r in lines if r["event"] == "auth_refused"]
    assert sum(r["count"] for r in refusals) == 2001  # 2,000 bad keys and the client key on /admin
    assert len(refusals) <= 2 * 4  # (3 bad fingerprints + the client's) per minute, the burst spanning at most 2
    assert {r["outcome"] for r in refusals} == {"unauthorized", "forbidden"}
    assert all(len(r["caller"]) == 16 and r["client"] for r in refusals)
    assert lines[-1]["event"] == "stop" and verify(file) == 0


def test_required_refuses_admin_calls_while_writes_fail_and_predict_answers(tmp_path, tiny_model_repo):
    failures = metric(metrics.render()[0].decode(), "bertserve_audit_write_failures_total", event="admin")

    async def scenario():
        async with _app(tmp_path, tiny_model_repo, audit_required=True) as app:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            before = await app.client.post("/admin/models/tiny/load", headers=admin)
            full = os.open("/dev/full", os.O_WRONLY)  # every write now fails (ENOSPC), as on a full disk
            os.dup2(full, audit.current.fd)
            os.close(full)
            refused = await app.client.post("/admin/models/tiny/unload", headers=admin)
            client = {"Authorization": f"Bearer {CLIENT}"}
            predicted = await app.client.post("/predict", json={"inputs": "fine"}, headers=client)
            listed = await app.client.get("/models", headers=admin)
            audit.current = None  # its descriptor is /dev/full now: nothing more to write
            return before, refused, predicted, listed

    before, refused, predicted, listed = asyncio.run(scenario())
    assert before.status_code == 200
    assert refused.status_code == 503 and refused.json()["error_type"] == "unhealthy"
    assert "audit log" in refused.json()["error"]
    assert predicted.status_code == 200
    assert [m["state"] for m in listed.json()] == ["ready"]  # the unload was not made
    assert metric(metrics.render()[0].decode(), "bertserve_audit_write_failures_total", event="admin") == failures + 1


def test_standard_output_lines_verify(tmp_path, capfd):
    key = tmp_path / "key"
    key.write_text("k" * 64)
    audit.open_log(Settings(model_repository=tmp_path, audit_log="-", audit_hmac_key_file=key))
    audit.event("table", "refused", model="tiny", reason="version 7 missing")
    audit.refused(b"bad", "10.0.0.1", "client", "unauthorized")
    audit.close_log()
    captured = tmp_path / "captured.jsonl"
    captured.write_text(capfd.readouterr().out)
    assert [r["event"] for r in records(captured)] == ["start", "table", "auth_refused", "stop"]
    assert verify(captured) == 0
