"""The prediction log: a sampled record of answered requests, written off the request's path, and the join index
feedback (POST /feedback, app.api.feedback) is matched against.

Off by default; on when a sink is set: a folder (BERTSERVE_PREDICTION_LOG_DIR: rotated JSONL files, one per
worker, `predictions-<pid>.jsonl`, so no two workers ever write one file; or Parquet files with
BERTSERVE_PREDICTION_LOG_FORMAT=parquet, see ParquetSink) and/or a URL (BERTSERVE_PREDICTION_LOG_URL: CloudEvents over
HTTP). Per model, serving.json's "prediction_log" {"sample", "text"} overrides the global
BERTSERVE_PREDICTION_LOG_SAMPLE / _TEXT (read through Service.serving_of: the last valid serving.json).

**Never on the request's path.** At a request's end (app.api.accounting.finish, which HTTP and gRPC both call) an
answered request (status 200) whose record carries its answer (`scores` or `entities`, app.record) is offered:
one random() against the model's sample rate and a put_nowait of references (no copies, no JSON) on a bounded
queue; a full queue drops the record (bertserve_prediction_log_dropped_total{reason="queue_full"}). One writer
thread per worker builds the JSON (orjson), appends it to the worker's file, adds the prediction rows to the join
index, and hands the bodies to the HTTP sender, a thread of its own with its own bounded queue: a sink that is
down or hangs costs its records (counted, reason sink_error or sink_backlog), never a request's time.

CloudEvents: binary mode, one event per record, as KServe's payload logger sends (ce-specversion, ce-id, ce-source,
ce-type, ce-time headers; the record's JSON as body): every CloudEvents receiver (Knative brokers, KServe's
message-dumper) takes it, which is not true of the batched mode. Each POST has short timeouts; a failed one is not
retried, and the rest of its flush (at most HTTP_BATCH records) is dropped with it, so a hanging receiver costs
one timeout per flush, not one per record.

**The join index** (index.sqlite3 in the folder, SQLite in WAL mode, shared by every worker of the replica): a row
per logged item (request id, index, model, version, task, head, labels, predicted) and one per feedback, keyed by
(id, index), so feedback sent to any worker finds a prediction any worker logged, and a second feedback for the
same item is refused by the key itself, across workers. Rows older than BERTSERVE_FEEDBACK_WINDOW_S are purged.
A prediction is in the index once its worker's writer has written it (within milliseconds); feedback that comes
sooner flushes its own worker's queue and then looks again for up to FEEDBACK_WAIT_S before answering 404.

Texts: "none" (default) logs none; "hash" an HMAC-SHA256 of each text (a pair: text + "\\x1f" + text_pair) under a
key every worker and restart shares (BERTSERVE_PREDICTION_LOG_HASH_KEY_FILE, else one made once in the folder,
published with link(2) as the audit log's key is, so workers starting together agree on it); "full" the texts
(personal data: an explicit choice). Entity words of token models are text: only with "full"."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import queue
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from app import metrics
from app.audit import make_key_once
from app.record import RequestRecord
from app.scores import REGRESSION_BOUND, THRESHOLD
from app.settings import Settings

if TYPE_CHECKING:
    from app.repository import ModelServing

log = logging.getLogger("bertserve.prediction_log")

INDEX_FILE = "index.sqlite3"
KEY_FILE = ".hash-key"
WRITER_BATCH = 256  # records the writer takes from its queue per round (one index transaction, one file write)
HTTP_BATCH = 64  # records the HTTP sender posts per flush; a failure drops the rest of its flush
HTTP_QUEUE = 2048  # records waiting for the HTTP sender; past it: dropped (sink_backlog)
HTTP_TIMEOUT_S, HTTP_CONNECT_TIMEOUT_S = 2.0, 1.0
PARQUET_ROW_GROUP = 4096  # records buffered per Parquet row group (few large row groups read fast; bounds memory)
PARQUET_FILE_S = 600.0  # a Parquet file is finished this long after its first record: what a crash can lose
# After a round that emptied the queue the writer rests this long, so records gather: one wake-up, one index
# transaction and one file write per rest under load, not one per request (each wake-up takes the GIL from the
# event loop). Feedback's flush and shutdown wait at most this much longer.
WRITER_PACE_S = 0.05
WRITER_IDLE_S = 5.0  # an idle writer wakes this often (to finish a Parquet file that is due)
FEEDBACK_WAIT_S = 1.0  # how long feedback for an id not yet in the index looks again before 404
PURGE_EVERY_S = 60.0
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True, slots=True)
class Policy:
    """One model's logging: the share of its answered requests logged, and what of their texts."""

    sample: float
    text: str  # none, hash, full


def hash_key(settings: Settings) -> bytes | None:
    """The key of text hashes and feedback key fingerprints: the given file's, else the one kept in the log folder,
    made here if there is none yet (written aside, then link(2)ed into place: exactly one of several workers
    starting together publishes it, whole; the others read it). None without either (a URL-only log)."""
    if settings.prediction_log_hash_key_file is not None:
        path = settings.prediction_log_hash_key_file
    elif settings.prediction_log_dir is not None:
        path = settings.prediction_log_dir / KEY_FILE
        make_key_once(path)
    else:
        return None
    key = path.read_bytes().strip()
    if not key:
        raise ValueError(f"prediction log hash key {path} is empty")
    return key


def text_hash(key: bytes, text: Any) -> str:
    joined = text if isinstance(text, str) else f"{text[0]}\x1f{text[1]}"
    return hmac.new(key, joined.encode(), hashlib.sha256).hexdigest()


# ---- the records ----

def _text_fields(item: dict[str, Any], text: Any, mode: str, key: bytes | None) -> None:
    if mode == "full":
        if isinstance(text, str):
            item["text"] = text
        else:
            item["text"], item["text_pair"] = text[0], text[1]
    elif mode == "hash" and key is not None:
        item["text_hash"] = text_hash(key, text)


def prediction_record(record: RequestRecord, model: str, mode: str, key: bytes | None, wall: float,
                      latency_s: float) -> tuple[dict[str, Any], list[tuple]]:
    """The log record of an answered request (the JSONL line's object), and its join index rows
    (id, index, model, version, task, head, labels, predicted, bound, time)."""
    items: list[dict[str, Any]] = []
    rows: list[tuple] = []
    head = record.head
    kind = head.kind if head is not None else ""
    labels = list(record.labels)
    labels_json = orjson.dumps(labels).decode()
    bound = (head.bound or REGRESSION_BOUND) if head is not None and kind == "regression" else None
    if record.entities is not None:
        for index, (text, found) in enumerate(zip(record.texts, record.entities, strict=True)):
            entities = found if mode == "full" else [{k: v for k, v in e.items() if k != "word"} for e in found]
            item = {"index": index, "entities": entities}
            _text_fields(item, text, mode, key)
            items.append(item)
            rows.append((record.request_id, index, model, record.version, record.task, kind, labels_json,
                         "null", None, wall))
    else:
        for index, (text, row) in enumerate(zip(record.texts, np.asarray(record.scores).tolist(), strict=True)):
            top = max(range(len(row)), key=row.__getitem__)
            item = {"index": index, "label": labels[top], "score": row[top], "scores": dict(zip(labels, row))}
            if head is None or head.single_label:
                predicted: Any = labels[top]
            elif kind == "regression":
                predicted = row[0] if len(row) == 1 else row
            else:  # a sigmoid head: every label over the threshold
                predicted = item["labels"] = [label for label, value in zip(labels, row) if value > THRESHOLD]
            _text_fields(item, text, mode, key)
            items.append(item)
            rows.append((record.request_id, index, model, record.version, record.task, kind, labels_json,
                         orjson.dumps(predicted).decode(), bound, wall))
    logged = {"type": "prediction", "id": record.request_id, "time": iso_time(wall), "model": model,
              "version": record.version, "route": record.route, "protocol": record.protocol, "task": record.task,
              "latency_ms": round(latency_s * 1000, 3), "truncated": record.truncated, "items": items}
    return logged, rows if record.request_id is not None else []


def iso_time(wall: float) -> str:
    """A record's time: ISO 8601 in UTC, to the microsecond."""
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds")


# ---- the sinks ----

class FileSink:
    """This worker's JSONL file (mode 0600: it may hold texts), rotated past max_bytes into .1 ... .max_files."""

    def __init__(self, folder: Path, max_bytes: int, max_files: int) -> None:
        self.path = folder / f"predictions-{os.getpid()}.jsonl"
        self.max_bytes, self.max_files = max_bytes, max_files
        self.fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(fd).st_size
        return fd

    def take(self, records: list[dict[str, Any]], lines: list[bytes]) -> None:
        """The writer's batch: its JSON lines (the records themselves are the Parquet sink's)."""
        self.write(b"".join(lines))

    def tick(self) -> None:
        """Nothing is ever pending here: every batch is in the file when take returns."""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)
        if self.size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        os.close(self.fd)
        oldest = self.path.with_name(f"{self.path.name}.{self.max_files}")
        oldest.unlink(missing_ok=True)
        for k in range(self.max_files - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{k}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{k + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        self.fd = self._open()

    def close(self) -> None:
        os.close(self.fd)


def parquet_schema() -> Any:
    """The Parquet files' columns: a JSONL record's top-level fields, flat (one row per record, `type` telling
    prediction from feedback, null where a type has no such field), `time` a UTC timestamp, `items` a list of structs
    (fields absent from an item are null; `scores` a map, label to score), and feedback's `label` and `predicted` as
    JSON text (a string, a list of labels or a number, by head: no one column type holds them all)."""
    import pyarrow as pa

    entity = pa.struct([("entity", pa.string()), ("entity_group", pa.string()), ("score", pa.float64()),
                        ("index", pa.int64()), ("word", pa.string()), ("start", pa.int64()), ("end", pa.int64())])
    item = pa.struct([("index", pa.int64()), ("label", pa.string()), ("score", pa.float64()),
                      ("scores", pa.map_(pa.string(), pa.float64())), ("labels", pa.list_(pa.string())),
                      ("text", pa.string()), ("text_pair", pa.string()), ("text_hash", pa.string()),
                      ("entities", pa.list_(entity))])
    text = pa.string()
    return pa.schema([("type", text), ("id", text), ("time", pa.timestamp("us", tz="UTC")), ("model", text),
                      ("version", text), ("route", text), ("protocol", text), ("task", text),
                      ("latency_ms", pa.float64()), ("truncated", pa.int64()), ("items", pa.list_(item)),
                      ("index", pa.int64()), ("label", text), ("predicted", text), ("key", text)])


# The fields of each record type, as the JSONL has them (reading a Parquet row back keeps these, nulls included).
RECORD_FIELDS = {"prediction": ("type", "id", "time", "model", "version", "route", "protocol", "task", "latency_ms",
                                "truncated", "items"),
                 "feedback": ("type", "id", "index", "time", "model", "version", "label", "predicted", "key")}
JSON_TEXT_FIELDS = ("label", "predicted")  # feedback's: JSON text in Parquet


def _parquet_row(logged: dict[str, Any]) -> dict[str, Any]:
    row = dict(logged, time=datetime.fromisoformat(logged["time"]))
    if logged["type"] == "feedback":
        for name in JSON_TEXT_FIELDS:
            row[name] = orjson.dumps(logged[name], option=JSON_OPTIONS).decode()
    return row


def parquet_records(path: Path) -> list[dict[str, Any]]:
    """A finished Parquet log file's records, as the JSONL lines' objects would be (ParquetSink's rows back)."""
    import pyarrow.parquet as pq

    records = []
    for row in pq.read_table(path).to_pylist():
        record = {name: row.get(name) for name in RECORD_FIELDS.get(row["type"], row)}
        if isinstance(record.get("time"), datetime):
            record["time"] = record["time"].astimezone(UTC).isoformat(timespec="microseconds")
        if row["type"] == "feedback":
            for name in JSON_TEXT_FIELDS:
                record[name] = None if record[name] is None else orjson.loads(record[name])
        if record.get("items") is not None:
            record["items"] = [_present(item) for item in record["items"]]
            for item in record["items"]:
                if "scores" in item:  # a map reads back as (key, value) pairs
                    item["scores"] = dict(item["scores"])
                if "entities" in item:
                    item["entities"] = [_present(entity) for entity in item["entities"]]
        records.append(record)
    return records


def _present(struct: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in struct.items() if value is not None}


class ParquetSink:
    """This worker's Parquet files (BERTSERVE_PREDICTION_LOG_FORMAT=parquet; columns: parquet_schema).

    A Parquet file is readable only once its footer is written, so the file being written is named
    `predictions-<pid>-<n>.parquet.partial` (no `*.parquet` glob reads it half-made) and is finished (footer, then
    renamed `predictions-<pid>-<n>.parquet`) past max_bytes, PARQUET_FILE_S after its first record, and at
    shutdown. Records are buffered as rows and converted to Arrow PARQUET_ROW_GROUP at a time, one row group each
    (or fewer, when the file is finished), all in the writer thread. A crash (SIGKILL, out of memory) loses the worker's unfinished file: at most PARQUET_FILE_S of
    its records, or max_bytes of them if that comes sooner. Because files are also finished by age, the bound on
    finished files is in bytes: a worker keeps its newest ones within max_bytes x max_files (the JSONL files' bound),
    deleting the oldest. <n> continues past the files of an earlier worker with this pid, so none is overwritten."""

    SUFFIX, PARTIAL = ".parquet", ".parquet.partial"

    def __init__(self, folder: Path, max_bytes: int, max_files: int) -> None:
        import pyarrow as pa  # only with the parquet format (settings refused it without pyarrow)
        import pyarrow.parquet as pq

        self.pa, self.pq, self.schema = pa, pq, parquet_schema()
        self.folder, self.max_bytes, self.max_files = folder, max_bytes, max_files
        self.stem = f"predictions-{os.getpid()}-"
        self.number = max((self._number(p) for p in folder.glob(f"{self.stem}*")), default=0)
        self.path = self._name(self.number + 1, self.PARTIAL)  # the next file to write (made at its first row group)
        self.writer: Any = None
        self.pending: list[dict[str, Any]] = []  # rows not yet in a row group
        self.since: float | None = None  # monotonic time of the unfinished file's first record

    def _name(self, number: int, suffix: str) -> Path:
        return self.folder / f"{self.stem}{number:06d}{suffix}"

    def _number(self, path: Path) -> int:
        digits = path.name.removeprefix(self.stem).split(".", 1)[0]
        return int(digits) if digits.isdigit() else 0

    def take(self, records: list[dict[str, Any]], lines: list[bytes]) -> None:
        self.pending += [_parquet_row(r) for r in records]  # to Arrow once per row group: ~100x cheaper than per batch
        if self.since is None:
            self.since = time.monotonic()
        if len(self.pending) >= PARQUET_ROW_GROUP:
            self._flush()

    def tick(self) -> None:
        """Finish the file when it is due (the writer calls this after each batch and when idle)."""
        if self.since is not None and time.monotonic() - self.since >= PARQUET_FILE_S:
            self._finish()

    def _flush(self) -> None:
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        table = self._table(rows)
        if not table.num_rows:
            return
        try:
            if self.writer is None:
                self.number += 1
                self.path = self._name(self.number, self.PARTIAL)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # 0600: it may hold texts
                self.writer = self.pq.ParquetWriter(str(self.path), self.schema, compression="zstd")
            self.writer.write_table(table, row_group_size=len(table))
        except BaseException:
            self._abandon()
            raise
        if self.path.stat().st_size >= self.max_bytes:
            self._finish()

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        try:
            return self.pa.Table.from_pylist(rows, schema=self.schema)
        except (self.pa.ArrowException, ValueError, TypeError):  # a row Arrow cannot take: only it is dropped
            kept = []
            for row in rows:
                try:
                    kept.append(self.pa.Table.from_pylist([row], schema=self.schema))
                except (self.pa.ArrowException, ValueError, TypeError) as exc:
                    log.error("prediction log: a %s record of model %s does not fit the Parquet columns: %s",
                              row.get("type"), row.get("model"), exc)
                    metrics.PREDICTION_LOG_DROPPED.labels(row.get("model") or "", "error").inc()
            return self.pa.concat_tables(kept) if kept else self.schema.empty_table()

    def _finish(self) -> None:
        self._flush()
        self.since = None
        if self.writer is None:
            return
        try:
            self.writer.close()  # the footer: from here the file is readable
        except BaseException:
            self._abandon()
            raise
        self.writer = None
        self.path.rename(self._name(self.number, self.SUFFIX))
        finished = sorted(self.folder.glob(f"{self.stem}*{self.SUFFIX}"), key=self._number, reverse=True)
        total = 0
        for path in finished:  # newest first: the oldest past the bound are deleted (the newest never is)
            total += path.stat().st_size
            if total > self.max_bytes * self.max_files and path != finished[0]:
                path.unlink(missing_ok=True)

    def _abandon(self) -> None:
        """After a failed write: the file is left as it is (unreadable) and the next row group starts a new one."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:  # noqa: BLE001 - already failing: the write's own error is the one reported
                log.debug("prediction log: closing the failed %s: %s", self.path, exc)
            self.writer = None
        self.since = None

    def close(self) -> None:
        self._finish()


class HttpSink:
    """CloudEvents over HTTP in binary mode (see the module docstring), from a thread of its own."""

    def __init__(self, url: str) -> None:
        import httpx  # imported only where a URL sink is set

        self.url = url
        self.source = f"urn:bertserve:{socket.gethostname()}:{os.getpid()}"
        self.queue: queue.Queue = queue.Queue(HTTP_QUEUE)
        self.client = httpx.Client(timeout=httpx.Timeout(HTTP_TIMEOUT_S, connect=HTTP_CONNECT_TIMEOUT_S))
        self.failing = False
        self.thread = threading.Thread(target=self._run, name="prediction-log-http", daemon=True)
        self.thread.start()

    def put(self, model: str, kind: str, event_id: str, when: str, body: bytes) -> None:
        headers = {"ce-specversion": "1.0", "ce-id": event_id, "ce-source": self.source,
                   "ce-type": f"org.bertserve.{kind}", "ce-time": when, "ce-subject": model,
                   "content-type": "application/json"}
        try:
            self.queue.put_nowait((model, headers, body))
        except queue.Full:
            metrics.PREDICTION_LOG_DROPPED.labels(model, "sink_backlog").inc()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < HTTP_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            for k, item in enumerate(batch):
                if item is None:
                    return
                model, headers, body = item
                try:
                    answer = self.client.post(self.url, content=body, headers=headers)
                    if answer.status_code >= 300:
                        raise RuntimeError(f"HTTP {answer.status_code}")
                except Exception as exc:  # noqa: BLE001 - down, refused, slow, or an error status: never retried
                    if not self.failing:
                        log.warning("prediction log: the HTTP sink failed (%s); its records are dropped while it "
                                    "fails (bertserve_prediction_log_dropped_total{reason=\"sink_error\"})",
                                    type(exc).__name__)
                    self.failing = True
                    for lost in batch[k:]:
                        if lost is None:
                            return
                        metrics.PREDICTION_LOG_DROPPED.labels(lost[0], "sink_error").inc()
                    break
                if self.failing:
                    log.info("prediction log: the HTTP sink answers again")
                self.failing = False
                metrics.PREDICTION_LOG_RECORDS.labels(model, "http").inc()

    def close(self, timeout_s: float) -> None:
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self.thread.join(timeout_s)
        if not self.thread.is_alive():
            self.client.close()


class JoinIndex:
    """The replica's join index (see the module docstring): one SQLite file, one connection per thread using it."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS predictions (
            id TEXT NOT NULL, idx INTEGER NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, task TEXT NOT NULL,
            head TEXT NOT NULL, labels TEXT NOT NULL, predicted TEXT NOT NULL, bound REAL, time REAL NOT NULL,
            PRIMARY KEY (id, idx)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
        CREATE TABLE IF NOT EXISTS feedback (
            id TEXT NOT NULL, idx INTEGER NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, label TEXT NOT NULL,
            predicted TEXT NOT NULL, correct INTEGER NOT NULL, key TEXT, time REAL NOT NULL,
            PRIMARY KEY (id, idx)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time);
        CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model, version);
    """

    def __init__(self, path: Path, window_s: float) -> None:
        self.path, self.window_s = path, window_s
        self.lock = threading.Lock()  # the request side's connection, used from worker threads one at a time
        self.reader = self.connect()

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA busy_timeout = 10000")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(self.SCHEMA)
        return connection

    @staticmethod
    def add(connection: sqlite3.Connection, rows: list[tuple]) -> None:
        """The prediction rows (a request id a client sent twice keeps its first logged answer)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("INSERT OR IGNORE INTO predictions VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def purge(self, connection: sqlite3.Connection) -> None:
        since = time.time() - self.window_s
        connection.execute("DELETE FROM predictions WHERE time < ?", (since,))
        connection.execute("DELETE FROM feedback WHERE time < ?", (since,))

    def find(self, request_id: str) -> list[tuple]:
        """The logged items of a request within the window: (idx, model, version, task, head, labels, predicted,
        bound), by index."""
        with self.lock:
            return self.reader.execute(
                "SELECT idx, model, version, task, head, labels, predicted, bound FROM predictions "
                "WHERE id = ? AND time >= ? ORDER BY idx", (request_id, time.time() - self.window_s)).fetchall()

    def record_feedback(self, rows: list[tuple]) -> tuple[str, int] | None:
        """Insert feedback rows (id, idx, model, version, label, predicted, correct, key, time) all or none; the
        (id, index) already given feedback when one was (nothing is then inserted)."""
        with self.lock:
            self.reader.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    try:
                        self.reader.execute("INSERT INTO feedback VALUES (?,?,?,?,?,?,?,?,?)", row)
                    except sqlite3.IntegrityError:
                        self.reader.execute("ROLLBACK")
                        return row[0], row[1]
            except BaseException:
                self.reader.execute("ROLLBACK")
                raise
            self.reader.execute("COMMIT")
            return None

    def quality(self, model: str) -> dict[str, dict[str, Any]]:
        """Per version of `model`: feedback joined within the window, how many were correct, and the share."""
        with self.lock:
            found = self.reader.execute(
                "SELECT version, count(*), sum(correct) FROM feedback WHERE model = ? AND time >= ? GROUP BY version",
                (model, time.time() - self.window_s)).fetchall()
        return {version: {"feedback": n, "correct": int(correct or 0), "accuracy": (correct or 0) / n}
                for version, n, correct in found}

    def close(self) -> None:
        with self.lock:
            self.reader.close()


# ---- one worker's log ----

class PredictionLog:
    def __init__(self, settings: Settings, serving_of: Callable[[str], ModelServing]) -> None:
        self.settings = settings
        self.serving_of = serving_of
        self.sample = 1.0 if settings.prediction_log_sample is None else settings.prediction_log_sample
        self.text = settings.prediction_log_text
        folder = settings.prediction_log_dir
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.key = hash_key(settings)
        self.queue: queue.Queue = queue.Queue(settings.prediction_log_queue_size)
        sink = ParquetSink if settings.prediction_log_format == "parquet" else FileSink
        self.file = (sink(folder, settings.prediction_log_max_bytes, settings.prediction_log_max_files)
                     if folder is not None else None)
        self.index = JoinIndex(folder / INDEX_FILE, settings.feedback_window_s) if folder is not None else None
        self.http = HttpSink(settings.prediction_log_url) if settings.prediction_log_url else None
        self._policies: dict[str, tuple[Any, Policy]] = {}  # model -> (the ModelServing read, its policy)
        self._warned_no_key: set[str] = set()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.thread.start()
        log.info("prediction log on: folder %s (%s), URL %s, sample %s, text %s (serving.json may override per model)",
                 folder, settings.prediction_log_format, "set" if self.http else "none", self.sample, self.text)

    # ---- the request's side (event loop): cheap, never blocking ----

    def policy(self, model: str) -> Policy:
        serving = self.serving_of(model)
        cached = self._policies.get(model)
        if cached is not None and cached[0] is serving:
            return cached[1]
        own = serving.prediction_log
        text = own.text or self.text
        if text == "hash" and self.key is None:  # serving.json asks for hashes where no shared key exists
            if model not in self._warned_no_key:
                self._warned_no_key.add(model)
                log.warning("model %s: serving.json asks prediction_log.text hash, but no hash key is set "
                            "(BERTSERVE_PREDICTION_LOG_HASH_KEY_FILE) and no folder keeps one: its texts are not "
                            "logged", model)
            text = "none"
        policy = Policy(self.sample if own.sample is None else own.sample, text)
        self._policies[model] = (serving, policy)
        return policy

    def offer(self, record: RequestRecord, model: str, status: int) -> None:
        """At a request's end: queue an answered request's record when its model's sample draws it."""
        if status != 200 or (record.scores is None and record.entities is None):
            return
        policy = self.policy(model)
        if policy.sample < 1 and random.random() >= policy.sample:
            return
        try:
            self.queue.put_nowait((record, model, policy.text, time.time(), time.perf_counter() - record.started))
        except queue.Full:
            metrics.PREDICTION_LOG_DROPPED.labels(model, "queue_full").inc()

    def offer_feedback(self, logged: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(logged)
        except queue.Full:
            metrics.PREDICTION_LOG_DROPPED.labels(logged["model"], "queue_full").inc()

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most timeout_s) until the writer has written what this worker queued so far."""
        done = threading.Event()
        try:
            self.queue.put_nowait(done)
        except queue.Full:
            return
        await asyncio.to_thread(done.wait, timeout_s)

    # ---- the writer thread ----

    def _run(self) -> None:
        connection = self.index.connect() if self.index is not None else None
        purged = 0.0
        while True:
            try:
                batch = [self.queue.get(timeout=WRITER_IDLE_S)]
            except queue.Empty:  # idle: only the sink's tick below
                batch = []
            while batch and len(batch) < WRITER_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write([item for item in batch if isinstance(item, tuple | dict)], connection)
            except Exception:  # the writer must outlive anything: its records are lost (counted), not the log
                log.exception("prediction log: writing %d record(s) failed", len(batch))
                for item in batch:
                    if isinstance(item, tuple | dict):
                        metrics.PREDICTION_LOG_DROPPED.labels(item["model"] if isinstance(item, dict) else item[1],
                                                              "error").inc()
            if self.file is not None:
                try:
                    self.file.tick()
                except Exception as exc:  # noqa: BLE001 - as a failed write: logged, the writer goes on
                    log.error("prediction log: finishing %s failed: %s", self.file.path, exc)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            if connection is not None and time.monotonic() - purged > PURGE_EVERY_S:
                purged = time.monotonic()
                try:
                    self.index.purge(connection)  # type: ignore[union-attr]
                except sqlite3.Error as exc:
                    log.warning("prediction log: purging the join index failed: %s", exc)
            if any(item is None for item in batch):
                if connection is not None:
                    connection.close()
                return
            if batch and len(batch) < WRITER_BATCH:
                time.sleep(WRITER_PACE_S)

    def _write(self, items: list[Any], connection: sqlite3.Connection | None) -> None:
        lines: list[bytes] = []
        records: list[dict[str, Any]] = []
        models: list[str] = []
        rows: list[tuple] = []
        for item in items:
            try:
                if isinstance(item, dict):  # feedback, already made
                    logged, model = item, item["model"]
                    event_id = f"{item['id']}-feedback-{item['index']}"
                else:
                    record, model, mode, wall, latency = item
                    logged, own_rows = prediction_record(record, model, mode, self.key, wall, latency)
                    rows += own_rows
                    event_id = record.request_id or uuid.uuid4().hex
                line = orjson.dumps(logged, option=JSON_OPTIONS)
            except Exception as exc:  # noqa: BLE001 - a record that cannot be made is dropped, never the writer
                log.error("prediction log: a record could not be made: %s", type(exc).__name__)
                metrics.PREDICTION_LOG_DROPPED.labels(item["model"] if isinstance(item, dict) else item[1],
                                                      "error").inc()
                continue
            lines.append(line + b"\n")
            records.append(logged)
            models.append(model)
            if self.http is not None:
                self.http.put(model, logged["type"], event_id, logged["time"], line)
        if self.file is not None and lines:
            try:
                self.file.take(records, lines)
                for model, count in Counter(models).items():
                    metrics.PREDICTION_LOG_RECORDS.labels(model, "file").inc(count)
            except Exception as exc:  # noqa: BLE001 - OSError, or a record Arrow cannot convert: the batch is lost
                log.error("prediction log: writing %s failed: %s", self.file.path, getattr(exc, "strerror", None) or exc)
                for model in models:
                    metrics.PREDICTION_LOG_DROPPED.labels(model, "sink_error").inc()
        if connection is not None and rows:
            try:
                JoinIndex.add(connection, rows)
            except sqlite3.Error as exc:
                log.error("prediction log: the join index could not take %d row(s): %s", len(rows), exc)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (at most timeout_s), then stop the writer and the sinks; what is still queued then
        is counted as dropped (shutdown). Once: later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            self.queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self.thread.join(timeout_s)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, tuple | dict):
                model = item["model"] if isinstance(item, dict) else item[1]
                metrics.PREDICTION_LOG_DROPPED.labels(model, "shutdown").inc()
        if self.http is not None:
            self.http.close(min(timeout_s, HTTP_TIMEOUT_S + 1))
        if self.file is not None and not self.thread.is_alive():
            self.file.close()
        if self.index is not None:
            self.index.close()


# ---- which service has which log (one per app; none when off) ----
# Kept on the service object itself (the transports already hold it), so apps in one process never share a log.
ATTRIBUTE = "prediction_log"


def open_log(settings: Settings, service: Any) -> PredictionLog | None:
    """The worker's prediction log for `service` (an app.service.Service), or None when no sink is set."""
    made = None
    if settings.prediction_log_dir is not None or settings.prediction_log_url is not None:
        made = PredictionLog(settings, service.serving_of)
    setattr(service, ATTRIBUTE, made)
    return made


def of(service: Any) -> PredictionLog | None:
    return getattr(service, ATTRIBUTE, None)


def offer(service: Any, record: RequestRecord, model: str, status: int) -> None:
    """The request's end (app.api.accounting.finish): its record offered to the service's log, when it has one."""
    prediction_log = getattr(service, ATTRIBUTE, None)
    if prediction_log is not None:
        prediction_log.offer(record, model, status)
