"""The prediction log's Parquet format (BERTSERVE_PREDICTION_LOG_FORMAT=parquet, app.prediction_log.ParquetSink),
in-process with real pyarrow and no model: the same queued records written once as JSONL and once as Parquet read
back equal; row groups, finishing (size, age, an idle writer, shutdown), the byte bound on kept files, file names
never reused; `train --from-log`'s reader taking Parquet; and the refusal to start without pyarrow. The one mock
here is that refusal's: pyarrow made unimportable with sys.modules["pyarrow"] = None (it is installed for tests)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from app import prediction_log
from app.lifecycle.prediction_log_data import PredictionLog as LogData
from app.prediction_log import ParquetSink, PredictionLog, parquet_records
from app.repository import ModelServing
from app.scores import Head
from app.settings import Settings, settings_or_exit
from tests.support.records import LABELS, answered_record

WALL = 1_800_000_000.0


def _queued() -> list:
    """What the request side and POST /feedback queue for the writer: every head, text mode and feedback label form.
    Entity scores are float32 scalars as the token path gives them, chosen exactly representable: JSONL writes a
    float32 by its shortest repr (0.9), Parquet keeps its exact value as a double (0.8999999761581421)."""
    entities = [[{"entity_group": "PER", "score": np.float32(0.75), "word": "alice", "start": 0, "end": 5}],
                [{"entity": "B-PER", "score": np.float32(0.5), "index": 1, "word": "bob", "start": 0, "end": 3}]]
    return [
        (answered_record(["good pill", ("query", "doc")], [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], Head(LABELS)), "m", "full",
         WALL, 0.0123),
        (answered_record(["a"], [[0.9, 0.2, 0.6]], Head(LABELS, "multi_label_classification"), request_id="rid-2"), "m",
         "hash", WALL + 1, 0.002),
        (answered_record(["a"], [[3.5]], Head(("score",), "regression", 0.25), labels=("score",), request_id="rid-3"), "reg",
         "none", WALL + 2, 0.001),
        (answered_record(["alice went", "bob"], entities=entities, task="token-classification", labels=("O", "B-PER"),
                 request_id="rid-4"), "ner", "full", WALL + 3, 0.004),
        (answered_record(["a"], [[0.8, 0.2]], task="zero-shot-classification", labels=("sports", "news"),
                 request_id=None), "zs", "none", WALL + 4, 0.005),
        {"type": "feedback", "id": "rid-1", "index": 1, "time": prediction_log.iso_time(WALL + 5), "model": "m",
         "version": "3", "label": "neutral", "predicted": "negative", "key": None},
        {"type": "feedback", "id": "rid-2", "index": 0, "time": prediction_log.iso_time(WALL + 6), "model": "m",
         "version": "3", "label": ["negative"], "predicted": ["negative", "positive"], "key": "0123456789abcdef"},
        {"type": "feedback", "id": "rid-3", "index": 0, "time": prediction_log.iso_time(WALL + 7), "model": "reg",
         "version": "3", "label": 3.25, "predicted": 3.5, "key": None},
    ]


def _written(folder, log_format: str) -> PredictionLog:
    key = folder.parent / "hash-key"  # one key for both folders: equal text hashes
    if not key.exists():
        key.write_text("k" * 32)
    settings = Settings(prediction_log_dir=folder, prediction_log_format=log_format, prediction_log_text="full",
                        prediction_log_hash_key_file=key)
    log = PredictionLog(settings, lambda m: ModelServing())
    for item in _queued():
        log.queue.put(item)
    log.close()
    return log


def test_parquet_rows_read_back_equal_the_jsonl_records(tmp_path):
    _written(tmp_path / "jsonl", "jsonl")
    _written(tmp_path / "parquet", "parquet")
    (jsonl,) = (tmp_path / "jsonl").glob("*.jsonl")
    expected = [json.loads(line) for line in jsonl.read_text().splitlines()]
    (parquet,) = (tmp_path / "parquet").glob("*.parquet")
    assert parquet.name == f"predictions-{os.getpid()}-000001.parquet" and stat.S_IMODE(parquet.stat().st_mode) == 0o600
    assert len(expected) == 8 and parquet_records(parquet) == expected
    # what a pandas or duckdb user sees: flat columns, a UTC timestamp, items as a list of structs
    table = pq.read_table(parquet)
    assert str(table.schema.field("time").type) == "timestamp[us, tz=UTC]"
    frame = table.to_pandas()
    assert list(frame["type"]) == ["prediction"] * 5 + ["feedback"] * 3
    assert frame["items"][0][0]["label"] == "positive" and frame["items"][0][1]["text_pair"] == "doc"
    assert json.loads(frame["label"][6]) == ["negative"]  # feedback labels: JSON text


def test_from_log_training_reads_parquet_as_it_reads_jsonl(tmp_path):
    _written(tmp_path / "jsonl", "jsonl")
    _written(tmp_path / "parquet", "parquet")
    from_jsonl, from_parquet = LogData(tmp_path / "jsonl"), LogData(tmp_path / "parquet")
    assert [r.record for r in from_parquet.records] == [r.record for r in from_jsonl.records]
    assert from_parquet.labelled("m", list(LABELS)).labels == ["neutral"]  # feedback joined to its logged text
    assert from_parquet.files[0].name.endswith(".parquet")


def test_a_file_is_unreadable_until_finished_so_it_is_named_partial(tmp_path, monkeypatch):
    monkeypatch.setattr(prediction_log, "PARQUET_ROW_GROUP", 2)
    settings = Settings(prediction_log_dir=tmp_path, prediction_log_format="parquet")
    log = PredictionLog(settings, lambda m: ModelServing())
    for k in range(5):  # one writer batch each
        log.queue.put((answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS), request_id=f"r{k}"), "m", "none", WALL, 0.0))
        asyncio.run(log.flush(30))
    (partial,) = tmp_path.glob("predictions-*")
    assert partial.name.endswith(".parquet.partial") and not list(tmp_path.glob("*.parquet"))
    with pytest.raises(Exception, match="(?i)magic|footer|parquet"):
        pq.read_table(partial)
    log.close()
    (finished,) = tmp_path.glob("*.parquet")
    assert not partial.exists() and finished.name == partial.name.removesuffix(".partial")
    assert pq.ParquetFile(finished).metadata.num_row_groups == 3  # 2, 2, and the last one at shutdown
    assert [r["id"] for r in parquet_records(finished)] == [f"r{k}" for k in range(5)]


def test_files_finish_past_max_bytes_and_are_kept_within_max_bytes_times_max_files(tmp_path, monkeypatch):
    monkeypatch.setattr(prediction_log, "PARQUET_ROW_GROUP", 50)  # its footer (~3 KB a row group) comes on top
    max_bytes, max_files = 30_000, 3
    sink = ParquetSink(tmp_path, max_bytes, max_files)
    sent = []
    for k in range(1000):
        logged, _ = prediction_log.prediction_record(
            answered_record([f"text {k} " * 20], [[0.1, 0.2, 0.7]], Head(LABELS), request_id=f"r{k}"), "m", "full", None,
            WALL + k, 0.0)
        sink.take([logged], [])
        sent.append(logged)
        finished = list(tmp_path.glob("*.parquet"))
        assert sum(p.stat().st_size for p in finished) <= max_bytes * max_files or len(finished) == 1
        assert len(list(tmp_path.glob("*.partial"))) <= 1
    sink.close()
    finished = sorted(tmp_path.glob("*.parquet"))
    assert len(finished) >= 2 and not list(tmp_path.glob("*.partial"))
    kept = [r for path in finished for r in parquet_records(path)]
    assert kept == sent[-len(kept):] and len(kept) < len(sent)  # the newest kept, in order; the oldest deleted
    numbers = [int(p.name.split("-")[-1].split(".")[0]) for p in finished]
    assert numbers == list(range(numbers[0], numbers[-1] + 1)) and numbers[0] > 1


def test_an_idle_writer_finishes_a_file_when_it_is_due(tmp_path, monkeypatch):
    monkeypatch.setattr(prediction_log, "WRITER_IDLE_S", 0.05)
    monkeypatch.setattr(prediction_log, "PARQUET_FILE_S", 0.2)
    settings = Settings(prediction_log_dir=tmp_path, prediction_log_format="parquet")
    log = PredictionLog(settings, lambda m: ModelServing())
    try:
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "m", 200)
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob("*.parquet")):  # no further record, no shutdown: the idle wake-up finishes it
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (finished,) = tmp_path.glob("*.parquet")
        assert [r["id"] for r in parquet_records(finished)] == ["rid-1"]
    finally:
        log.close()


def test_a_later_worker_with_the_same_pid_never_overwrites_a_file(tmp_path):
    for request_id in ("first", "second"):
        sink = ParquetSink(tmp_path, 2**20, 5)
        logged, _ = prediction_log.prediction_record(
            answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS), request_id=request_id), "m", "none", None, WALL, 0.0)
        sink.take([logged], [])
        sink.close()
    files = sorted(tmp_path.glob("*.parquet"))
    assert [p.name[-14:] for p in files] == ["000001.parquet", "000002.parquet"]
    assert [parquet_records(p)[0]["id"] for p in files] == ["first", "second"]


def test_parquet_is_refused_at_start_without_pyarrow(monkeypatch, capsys):
    # The one mock of this suite: pyarrow is installed for the tests, so "not installed" is simulated.
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match="parquet needs pyarrow, which is not installed"):
        Settings(prediction_log_format="parquet")
    assert Settings(prediction_log_format="jsonl").prediction_log_format == "jsonl"  # JSONL never needs it
    monkeypatch.setenv("BERTSERVE_PREDICTION_LOG_FORMAT", "parquet")
    with pytest.raises(SystemExit) as stopped:
        settings_or_exit()
    assert stopped.value.code == 2
    assert "bad setting BERTSERVE_PREDICTION_LOG_FORMAT: parquet needs pyarrow" in capsys.readouterr().err


def test_a_record_the_columns_cannot_hold_is_dropped_alone_and_counted(tmp_path):
    from prometheus_client import REGISTRY

    def dropped() -> float:
        return REGISTRY.get_sample_value("bertserve_prediction_log_dropped_total",
                                         {"model": "odd", "reason": "error"}) or 0

    sink = ParquetSink(tmp_path, 2**20, 5)
    good, _ = prediction_log.prediction_record(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "odd", "none", None,
                                               WALL, 0.0)
    bad = dict(good, id="bad", items=[{"index": 0, "label": "positive", "score": "not a number"}])
    before = dropped()
    sink.take([good, bad, dict(good, id="rid-2")], [])
    sink.close()
    (finished,) = tmp_path.glob("*.parquet")
    assert [r["id"] for r in parquet_records(finished)] == ["rid-1", "rid-2"] and dropped() == before + 1
