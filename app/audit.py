"""The control-plane audit log (BERTSERVE_AUDIT_LOG): one JSON line per event — start and stop, every admin call,
every repository change a worker applied or refused, and authentication refusals counted per key fingerprint,
client address and minute — each line carrying the sha256 of the line before it in its chain (tamper evidence),
checked by `bertserve audit verify`.

Design: **one file and one chain per worker**, `<BERTSERVE_AUDIT_LOG>.<pid>`, written only by that worker. On Linux
a single write(2) on an O_APPEND descriptor of a local regular file is not interleaved with another process's
(the inode lock covers the offset update and the copy), whatever its size — PIPE_BUF bounds only pipes and FIFOs —
but POSIX does not promise it, NFS does not keep it, and rotation by several writers of one file would need
cross-process locking (who renames, who follows the rename). One writer per file needs none of that: the chain
never forks, rotation is a rename by the file's only writer, and a worker restarted under a new pid starts a new
file with a new `start` record. `-` (standard output) writes each line with one os.write; in a pipe only lines of
at most PIPE_BUF (4 KiB) are whole against other writers, so `-` is meant for one worker (a container's log), and
each line names its chain (`chain`: the pid) so `verify` separates interleaved chains.

Chain rules (`verify`): a chain begins with a `start` record (prev "") or, in a file that rotation began, a
`rotated` record whose prev is the last line of the file before it (checked when that file is given too: rotated
files `<file>.N` are read oldest first). Every other record's prev is the sha256 of the chain's previous line, so a
removed, edited, inserted or reordered record breaks the link at the first record after the change; a cut at the
very end is seen only by the missing `stop` record.

The caller is named by a key fingerprint, HMAC-SHA256 of the presented key under the audit key (16 hex digits;
never the key): the key is BERTSERVE_AUDIT_HMAC_KEY_FILE's, or one generated once beside the log (mode 0600,
published with link(2), so workers starting together agree on it). Writing is off the prediction path: an
authentication refusal only bumps a counter in memory (bounded), flushed once a minute and at stop."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app import __version__, metrics
from app.errors import NotReady
from app.logs import request_id
from app.repository import file_sha256
from app.settings import Settings

log = logging.getLogger("bertserve.audit")
FINGERPRINT_CHARS = 16
MAX_REFUSAL_BUCKETS = 10_000  # distinct (fingerprint, address, route group, refusal) per minute; past it: "other"


class AuditUnavailable(NotReady):
    """BERTSERVE_AUDIT_REQUIRED and the audit record of an admin call cannot be written: the call is refused (503)."""


class AuditError(Exception):
    """The audit log cannot be opened (or its HMAC key read or made): the message says which file and why."""


def key_path(settings: Settings) -> Path:
    if settings.audit_hmac_key_file is not None:
        return settings.audit_hmac_key_file
    log_path = Path(str(settings.audit_log))
    return log_path.with_name(log_path.name + "-hmac-key")


def make_key_once(path: Path) -> None:
    """A random key at `path` (mode 0600) unless one is there: written aside, then link(2)ed into place, so exactly
    one of several workers starting together publishes it, whole; the others read it. (The prediction log's hash key
    is made the same way: app.prediction_log.)"""
    if path.exists():
        return
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
    finally:
        os.close(fd)
    try:
        os.link(staging, path)
    except FileExistsError:
        pass  # another worker's is in place: use it
    finally:
        staging.unlink(missing_ok=True)


def hmac_key(settings: Settings) -> bytes:
    """The audit HMAC key: the given file's, or the one kept beside the log, made here if there is none yet (written
    aside, then link(2)ed into place: exactly one of several workers publishes it, whole; the others read it)."""
    path = key_path(settings)
    try:
        if settings.audit_hmac_key_file is None:
            make_key_once(path)
        key = path.read_bytes().strip()
    except OSError as exc:
        raise AuditError(f"audit HMAC key {path}: {exc.strerror or exc}") from None
    if not key:
        raise AuditError(f"audit HMAC key {path} is empty")
    return key


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """Every setting, secrets (SecretStr: keys) replaced; key files by path only, never their contents."""
    values = settings.model_dump(mode="json")
    for name, value in values.items():
        if name in ("api_keys", "admin_api_keys"):
            values[name] = f"<{len(value)} key(s), redacted>"
    return values


def check_writable(settings: Settings) -> str | None:
    """For `bertserve serve` before any worker starts: why the audit log cannot be opened, or None."""
    if settings.audit_log is None or str(settings.audit_log) == "-":
        return None
    path = Path(str(settings.audit_log))
    probe = path.with_name(f"{path.name}.{os.getpid()}")
    try:
        existed = probe.exists()
        os.close(os.open(probe, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        if not existed:
            probe.unlink()
        hmac_key(settings)
    except AuditError as exc:
        return str(exc)
    except OSError as exc:
        return f"{probe}: {exc.strerror or exc}"
    return None


class AuditLog:
    """This worker's audit chain: its file (or standard output), the last line's hash, rotation, and the
    authentication refusals counted since the last flush."""

    def __init__(self, settings: Settings) -> None:
        self.required = settings.audit_required
        self.max_bytes, self.max_files = settings.audit_log_max_bytes, settings.audit_log_max_files
        self.pid = os.getpid()
        self.key = hmac_key(settings)
        self.stdout = str(settings.audit_log) == "-"
        self.path = None if self.stdout else Path(f"{settings.audit_log}.{self.pid}")
        self.prev = ""
        self.size = 0
        self.fd = sys.stdout.fileno() if self.stdout else self._open()
        self.refusals: dict[tuple, list] = {}  # (fingerprint, address, group, refusal, minute) -> [count, first id]

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: {exc.strerror or exc}") from None
        self.size = os.fstat(fd).st_size
        return fd

    def fingerprint(self, token: bytes | None) -> str:
        if not token:
            return "none"
        return hmac.new(self.key, token, hashlib.sha256).hexdigest()[:FINGERPRINT_CHARS]

    # ---- writing ----

    def write(self, event: str, outcome: str, **fields: Any) -> bool:
        """One record, chained to the previous one; False (and counted on /metrics) when it could not be written."""
        record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, "outcome": outcome,
                  "chain": str(self.pid), "pid": self.pid, "request_id": request_id.get()}
        record |= {k: v for k, v in fields.items() if v is not None}
        try:
            if self.path is not None and self.max_bytes and self.size and self.size > self.max_bytes:
                self._rotate()
            self._append(record)
            return True
        except OSError as exc:
            metrics.AUDIT_WRITE_FAILURES.labels(event).inc()
            log.error("audit record %s not written: %s", event, exc.strerror or exc)
            return False

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record | {"prev": self.prev}, separators=(",", ":"), default=str) + "\n").encode()
        written = os.write(self.fd, line)  # one write of the whole line (see the module's docstring)
        if written != len(line):
            raise OSError(f"short write ({written} of {len(line)} bytes)")
        self.prev = hashlib.sha256(line.rstrip(b"\n")).hexdigest()
        self.size += written

    def _rotate(self) -> None:
        """<file> -> <file>.1 -> ... -> <file>.N (the oldest dropped); the new file begins with a `rotated` record
        whose prev is the last line of the file just rotated: the chain goes on across files."""
        os.close(self.fd)
        for n in range(self.max_files, 0, -1):
            older = Path(f"{self.path}.{n - 1}") if n > 1 else self.path
            if older.exists():
                os.replace(older, f"{self.path}.{n}")
        self.fd = self._open()
        self._append({"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": "rotated",
                      "outcome": "ok", "chain": str(self.pid), "pid": self.pid})

    # ---- authentication refusals: counted, written once a minute ----

    def refused(self, token: bytes | None, address: str | None, group: str, refusal: str) -> None:
        """Count one refusal in memory (no write, no I/O); bounded per minute whatever a flood sends."""
        minute = int(time.time() // 60)
        key = (self.fingerprint(token), address or "unknown", group, refusal, minute)
        bucket = self.refusals.get(key)
        if bucket is None:
            if len(self.refusals) >= MAX_REFUSAL_BUCKETS:
                key = ("other", "other", group, refusal, minute)
                bucket = self.refusals.setdefault(key, [0, request_id.get()])
            else:
                bucket = self.refusals[key] = [0, request_id.get()]
        bucket[0] += 1

    def flush_refusals(self, everything: bool = False) -> None:
        """Write the counts of finished minutes (all of them at stop)."""
        now = int(time.time() // 60)
        for key in [k for k in self.refusals if everything or k[4] < now]:
            count, first_id = self.refusals.pop(key)
            fingerprint, address, group, refusal, minute = key
            token = request_id.set(first_id)
            try:
                self.write("auth_refused", refusal, caller=fingerprint, client=address, route_group=group,
                           count=count, minute=datetime.fromtimestamp(minute * 60, UTC).isoformat())
            finally:
                request_id.reset(token)

    async def flush_every_minute(self) -> None:
        while True:
            await asyncio.sleep(60 - time.time() % 60 + 0.1)
            self.flush_refusals()

    def close(self) -> None:
        self.flush_refusals(everything=True)
        if not self.stdout:
            os.close(self.fd)


# This worker's audit log; None: off. Set by open_log (app.main), read by the hooks below.
current: AuditLog | None = None


def open_log(settings: Settings) -> AuditLog | None:
    """Open this worker's audit log and write its start record. A log that cannot be opened stops the worker when
    BERTSERVE_AUDIT_REQUIRED (AuditError), else is logged and left off."""
    global current
    if current is not None:
        current.close()
        current = None
    if settings.audit_log is None:
        return None
    try:
        current = AuditLog(settings)
    except AuditError as exc:
        if settings.audit_required:
            raise
        log.error("audit log off: %s", exc)
        return None
    current.write("start", "ok", bertserve=__version__, settings=redacted_settings(settings))
    return current


def close_log(served: Iterable[dict[str, Any]] = ()) -> None:
    global current
    if current is not None:
        current.flush_refusals(everything=True)
        current.write("stop", "ok", bertserve=__version__, served=[
            {"model": m.get("name"), "version": m.get("version"), "state": m.get("state")} for m in served])
        current.close()
        current = None


def event(event: str, outcome: str, **fields: Any) -> bool:
    """A control-plane record (a no-op returning True when the audit log is off)."""
    return True if current is None else current.write(event, outcome, **fields)


async def sha256_of(path: Path) -> str | None:
    """The file's sha256 for a record (a served artifact's), hashed in a thread; None when the audit log is off (no
    cost then)."""
    if current is None:
        return None

    return await asyncio.to_thread(file_sha256, path)


def refused(token: bytes | None, address: str | None, group: str, refusal: str) -> None:
    if current is not None:
        current.refused(token, address, group, refusal)


def caller(token: bytes | None) -> str | None:
    return None if current is None else current.fingerprint(token)


def admin_call(route: str, token: bytes | None, address: str | None, model: str) -> None:
    """The record of an admin call about to run; with BERTSERVE_AUDIT_REQUIRED, AuditUnavailable when it cannot be
    written (the call is then not made)."""
    if current is None:
        return
    if not current.write("admin", "requested", route=route, caller=current.fingerprint(token), client=address,
                         model=model) and current.required:
        raise AuditUnavailable("the audit log cannot be written (BERTSERVE_AUDIT_REQUIRED): admin calls are refused "
                               "until it can")


# ---- verification ----

_ROTATED_NAME = re.compile(r"(.*)\.(\d+)")


def _oldest_first(files: Iterable[Path]) -> list[Path]:
    """A worker's rotated files <f>.N ... <f>.1 before <f> (files given by a shell glob come in any order)."""
    names = {str(f) for f in files}

    def order(file: Path) -> tuple[str, int]:
        match = _ROTATED_NAME.fullmatch(str(file))
        if match and match.group(1) in names:
            return match.group(1), -int(match.group(2))
        return str(file), 0

    return sorted(files, key=order)


def verify(files: Iterable[Path]) -> str | None:
    """Check every chain in the files; None when whole, else the first broken record: file, line, chain, why."""
    last: dict[str, tuple[str, str]] = {}  # chain -> (hash of its last line, where that line is)
    for file in _oldest_first([Path(f) for f in files]):
        try:
            lines = file.read_bytes().splitlines()
        except OSError as exc:
            return f"{file}: {exc.strerror or exc}"
        for number, line in enumerate(lines, 1):
            where = f"{file}:{number}"
            try:
                record = json.loads(line)
                chain, prev, kind = str(record["chain"]), record["prev"], record["event"]
            except (ValueError, KeyError, TypeError):
                return f"{where}: not an audit record (edited, or not an audit log)"
            seen = last.get(chain)
            if kind == "start":
                ok, why = prev == "", 'a start record must begin its chain (prev "")'
            elif seen is None:
                ok = kind == "rotated"
                why = "the chain does not begin with a start or rotated record (records before it removed)"
            else:
                ok = prev == seen[0]
                why = (f"prev does not match the chain's previous record ({seen[1]}): that record was edited, or "
                       "records were removed or reordered here")
            if not ok:
                return f"{where} (chain {chain}): {why}"
            last[chain] = (hashlib.sha256(line).hexdigest(), where)
    return None
