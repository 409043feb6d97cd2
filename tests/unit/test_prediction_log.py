"""The prediction log's parts without a model (app.prediction_log, app.api.feedback's judging, serving.json's
compatibility rule): records as written for each head and text mode, sampling and the bounded queue, rotation,
the shared hash key, the settings it refuses, the CloudEvents sink against real sockets on 127.0.0.1 (a receiver
that records, one that hangs, a port that refuses), and the join index's one-feedback-per-item rule."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from app import prediction_log
from app.api.feedback import FeedbackItem, _judge
from app.errors import InvalidInput, ModelLoadError
from app.prediction_log import FileSink, JoinIndex, PredictionLog, hash_key, prediction_record, text_hash
from app.repository import ModelServing, read_serving
from app.scores import Head
from app.settings import Settings
from tests.support.receiver import Receiver
from tests.support.records import LABELS, answered_record
from tests.support.servers import free_port

KEY = b"k" * 32


def _dropped(model: str, reason: str) -> float:
    return REGISTRY.get_sample_value("bertserve_prediction_log_dropped_total", {"model": model, "reason": reason}) or 0


# ---- records ----

@pytest.mark.parametrize("mode", ["none", "hash", "full"])
def test_a_softmax_record_holds_the_answer_and_only_what_the_text_mode_allows(mode):
    texts = ["good pill", ("query text", "document text")]
    record = answered_record(texts, [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], Head(LABELS))
    record.truncated = 1
    logged, rows = prediction_record(record, "m", mode, KEY, 1_800_000_000.0, 0.0123)
    assert {k: logged[k] for k in ("type", "id", "model", "version", "route", "protocol", "task", "truncated")} == {
        "type": "prediction", "id": "rid-1", "model": "m", "version": "3", "route": "/predict", "protocol": "http",
        "task": "text-classification", "truncated": 1}
    assert logged["time"] == "2027-01-15T08:00:00.000000+00:00" and logged["latency_ms"] == 12.3
    first, second = logged["items"]
    assert (first["index"], first["label"], round(first["score"], 5)) == (0, "positive", 0.7)
    assert first["scores"].keys() == set(LABELS) and second["label"] == "negative"
    text_fields = {k for item in logged["items"] for k in item} & {"text", "text_pair", "text_hash"}
    assert text_fields == {"none": set(), "hash": {"text_hash"}, "full": {"text", "text_pair"}}[mode]
    if mode == "hash":
        assert first["text_hash"] == text_hash(KEY, "good pill") != text_hash(KEY, "good pill ")
        assert second["text_hash"] == text_hash(KEY, "query text\x1fdocument text")
    if mode == "full":
        assert (first["text"], second["text"], second["text_pair"]) == ("good pill", "query text", "document text")
    assert [(r[0], r[1], r[5], json.loads(r[7])) for r in rows] == [("rid-1", 0, "single-label", "positive"),
                                                                   ("rid-1", 1, "single-label", "negative")]
    orjson.dumps(logged)  # plain JSON


def test_sigmoid_and_regression_heads_log_what_they_decide():
    multi = Head(LABELS, "multi_label_classification")
    logged, rows = prediction_record(answered_record(["a"], [[0.9, 0.2, 0.6]], multi), "m", "none", None, 0.0, 0.0)
    assert logged["items"][0]["labels"] == ["negative", "positive"] and json.loads(rows[0][7]) == ["negative",
                                                                                                   "positive"]
    regression = Head(("score",), "regression", 0.25)
    logged, rows = prediction_record(answered_record(["a"], [[3.5]], regression, labels=("score",)), "m", "none", None, 0, 0)
    assert logged["items"][0]["score"] == 3.5 and json.loads(rows[0][7]) == 3.5 and rows[0][8] == 0.25


@pytest.mark.parametrize("mode", ["none", "hash", "full"])
def test_entity_words_are_text_logged_only_in_full(mode):
    found = [[{"entity_group": "PER", "score": np.float32(0.9), "word": "alice", "start": 0, "end": 5}]]
    record = answered_record(["alice went home"], entities=found, task="token-classification", labels=("O", "B-PER"))
    logged, rows = prediction_record(record, "m", mode, KEY, 0.0, 0.0)
    entity = logged["items"][0]["entities"][0]
    assert ("word" in entity) == (mode == "full") and entity["entity_group"] == "PER"
    assert ("alice" in orjson.dumps(logged, option=prediction_log.JSON_OPTIONS).decode()) == (mode == "full")
    assert rows[0][4] == "token-classification"


# ---- feedback's judging ----

def _judged(label, head, predicted, labels=LABELS, task="text-classification", bound=None):
    item = FeedbackItem(id="r", label=label)
    return _judge(item, "m", "1", task, head, list(labels), predicted, bound)


def test_feedback_labels_are_judged_by_the_head():
    assert _judged("positive", "single-label", "positive")[:2] == ("positive", True)
    assert _judged("neutral", "single-label", "positive")[2] == ("neutral", "positive")
    assert _judged(["positive", "negative"], "multi-label", ["negative", "positive"])[1:] == (
        True, ("negative,positive", "negative,positive"))
    assert _judged("positive", "one-logit", [], labels=("positive",))[:2] == (["positive"], False)
    assert _judged(3.6, "regression", 3.5, labels=("score",), bound=0.25)[1:] == (True, ("value", "within_bound"))
    assert _judged(4, "regression", 3.5, labels=("score",), bound=0.25)[1] is False


@pytest.mark.parametrize("label, head, task, says", [
    ("happy", "single-label", "text-classification", "one of the labels of model m version 1"),
    (["positive"], "single-label", "text-classification", "one of the labels"),
    (["positive", "positive"], "multi-label", "text-classification", "distinct labels"),
    ("positive", "regression", "text-classification", "a finite number"),
    ("PER", "", "token-classification", "as token-classification"),
    ("positive", "", "zero-shot-classification", "as zero-shot-classification"),
])
def test_a_label_the_head_cannot_have_is_a_422_saying_why(label, head, task, says):
    with pytest.raises(InvalidInput, match=says):
        _judged(label, head, "positive", task=task)


# ---- sampling and the queue: never blocking, drops counted ----

def test_only_answered_sampled_requests_are_queued_and_a_full_queue_drops_without_waiting(tmp_path):
    settings = Settings(prediction_log_dir=tmp_path, prediction_log_queue_size=1)
    serving = {"m": ModelServing(), "off": ModelServing.model_validate({"prediction_log": {"sample": 0}})}
    log = PredictionLog(settings, serving.__getitem__)
    log.queue.put(None)  # the writer stops: nothing takes from the queue now
    log.thread.join()
    log.queue.put(object())
    try:
        assert log.queue.full()
        before = _dropped("m", "queue_full")
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "m", 200)  # returns at once: the queue is full
        assert _dropped("m", "queue_full") == before + 1
        log.offer(answered_record(["a"]), "m", 200)  # no answer on the record (an explanation): never offered
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "m", 422)
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "off", 200)  # serving.json sample 0
        assert _dropped("m", "queue_full") == before + 1 and _dropped("off", "queue_full") == 0
        assert log.policy("off").sample == 0 and log.policy("m") == prediction_log.Policy(1.0, "none")
    finally:
        log.queue.get_nowait()
        log.close()


def test_records_reach_the_worker_file_and_the_join_index(tmp_path):
    log = PredictionLog(Settings(prediction_log_dir=tmp_path, prediction_log_text="full"), lambda m: ModelServing())
    log.offer(answered_record(["a text"], [[0.1, 0.2, 0.7]], Head(LABELS)), "m", 200)
    log.close()
    (file,) = tmp_path.glob("*.jsonl")
    assert file.name == f"predictions-{os.getpid()}.jsonl" and stat.S_IMODE(file.stat().st_mode) == 0o600
    (line,) = file.read_text().splitlines()
    assert json.loads(line)["items"][0]["text"] == "a text"
    index = JoinIndex(tmp_path / prediction_log.INDEX_FILE, 3600)
    assert [row[:3] for row in index.find("rid-1")] == [(0, "m", "3")] and index.find("other") == []
    index.close()


def test_files_rotate_within_their_size_and_count(tmp_path):
    sink = FileSink(tmp_path, max_bytes=100, max_files=2)
    for k in range(10):
        sink.write(b"x" * 60 + b"%d\n" % k)
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [sink.path.name, sink.path.name + ".1", sink.path.name + ".2"]
    assert all(p.stat().st_size < 200 for p in tmp_path.iterdir())
    assert (tmp_path / (sink.path.name + ".1")).read_bytes().endswith(b"9\n")  # the newest rotated


def test_the_hash_key_is_made_once_and_shared(tmp_path):
    settings = Settings(prediction_log_dir=tmp_path)
    key = hash_key(settings)
    assert key and hash_key(settings) == key and stat.S_IMODE((tmp_path / ".hash-key").stat().st_mode) == 0o600
    given = tmp_path / "given"
    given.write_text("operator-key\n")
    assert hash_key(Settings(prediction_log_dir=tmp_path, prediction_log_hash_key_file=given)) == b"operator-key"


@pytest.mark.parametrize("settings, says", [
    ({"prediction_log_url": "http://127.0.0.1:1/x", "prediction_log_text": "hash"}, "HASH_KEY_FILE"),
    ({"prediction_log_url": "ftp://x"}, "http:// or https://"),
    ({"prediction_log_sample": 1.5}, "less than or equal to 1"),
    ({"prediction_log_hash_key_file": "/nonexistent/key"}, "not a readable file"),
])
def test_settings_refuse_what_cannot_work(settings, says):
    with pytest.raises(ValueError, match=says):
        Settings(**settings)


# ---- serving.json: unknown keys warned once and ignored, known keys strict ----

def test_unknown_serving_keys_are_warned_once_per_change_and_ignored(tmp_path, caplog):
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"shadow": 2, "from_the_future": 1, "prediction_log": {"sample": 0.5, "later": 1}}))
    with caplog.at_level(logging.WARNING, "bertserve.repository"):
        serving = read_serving(tmp_path)
        read_serving(tmp_path)
    assert serving.shadow == 2 and serving.prediction_log.sample == 0.5
    warned = [r.getMessage() for r in caplog.records if "unknown key" in r.getMessage()]
    assert len(warned) == 1 and "from_the_future, prediction_log.later" in warned[0]
    caplog.clear()
    path.write_text(json.dumps({"shadow": 2, "another": True}))
    with caplog.at_level(logging.WARNING, "bertserve.repository"):
        read_serving(tmp_path)
    assert ["another" in r.getMessage() for r in caplog.records] == [True]


@pytest.mark.parametrize("content", ['{"prediction_log": {"sample": 2}}', '{"prediction_log": {"text": "all"}}',
                                     '{"shadow": "two", "unknown": 1}'])
def test_known_serving_keys_are_still_strict(tmp_path, content):
    (tmp_path / "serving.json").write_text(content)
    with pytest.raises(ModelLoadError):
        read_serving(tmp_path)


# ---- the CloudEvents sink on real sockets ----

def test_each_record_is_one_binary_mode_cloudevent(tmp_path):
    with Receiver() as receiver:
        log = PredictionLog(Settings(prediction_log_url=receiver.url), lambda m: ModelServing())
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "m", 200)
        ((headers, body),) = receiver.wait_for(1)
        log.close()
    assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == "rid-1"
    assert headers["ce-type"] == "org.bertserve.prediction" and headers["ce-source"].startswith("urn:bertserve:")
    record = json.loads(body)
    assert headers["ce-time"] == record["time"] and headers["content-type"] == "application/json"
    assert record["type"] == "prediction" and record["items"][0]["label"] == "positive"


def test_a_refusing_sink_costs_its_records_counted_never_the_offer(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/events"  # nothing listens: connections refused
    log = PredictionLog(Settings(prediction_log_dir=tmp_path, prediction_log_url=url), lambda m: ModelServing())
    before = _dropped("refused", "sink_error")
    for _ in range(5):
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS)), "refused", 200)
    deadline = time.monotonic() + 30
    while _dropped("refused", "sink_error") < before + 5:
        assert time.monotonic() < deadline, _dropped("refused", "sink_error") - before
        time.sleep(0.01)
    log.close()
    assert len((next(tmp_path.glob("*.jsonl"))).read_text().splitlines()) == 5  # the file sink kept them all


def test_a_hanging_sink_fills_only_its_own_queue(tmp_path, monkeypatch):
    monkeypatch.setattr(prediction_log, "HTTP_QUEUE", 2)
    monkeypatch.setattr(prediction_log, "HTTP_TIMEOUT_S", 120.0)  # the sender waits on it for the whole test
    with Receiver(hang=True) as receiver:
        log = PredictionLog(Settings(prediction_log_dir=tmp_path, prediction_log_url=receiver.url),
                            lambda m: ModelServing())
        before = _dropped("hung", "sink_backlog")
        log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS), request_id="first"), "hung", 200)
        receiver.wait_for(1)  # the sender is now held in its first POST
        for k in range(10):
            log.offer(answered_record(["a"], [[0.1, 0.2, 0.7]], Head(LABELS), request_id=f"r{k}"), "hung", 200)
        index = JoinIndex(tmp_path / prediction_log.INDEX_FILE, 3600)
        deadline = time.monotonic() + 30
        while not index.find("r9"):  # the writer goes on: file and join index are not held by the sink
            assert time.monotonic() < deadline
            time.sleep(0.01)
        index.close()
        assert _dropped("hung", "sink_backlog") == before + 10 - 2  # two wait behind the held one
        receiver.release.set()
        log.close()


# ---- the join index ----

def test_one_feedback_per_item_all_or_none(tmp_path):
    index = JoinIndex(tmp_path / "index.sqlite3", 3600)
    other = JoinIndex(tmp_path / "index.sqlite3", 3600)  # another worker's connection to the same file
    row = ("r", 0, "m", "1", '"a"', '"a"', 1, None, time.time())
    assert index.record_feedback([row]) is None
    assert other.record_feedback([("r", 1, "m", "1", '"a"', '"b"', 0, None, time.time()), row]) == ("r", 0)
    assert index.quality("m") == {"1": {"feedback": 1, "correct": 1, "accuracy": 1.0}}  # the second list: none
    index.close()
    other.close()
