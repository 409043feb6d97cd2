"""Reading the prediction log for `bertserve train --from-log` (app.lifecycle.prediction_log_data) on hand-written
JSONL files in the contract's format: two workers' files, rotated ones, hash-only logs, feedback without a
prediction, duplicates, labels the model lacks, heads train does not fit. No torch."""

from __future__ import annotations

import gzip
import json

import pytest

from app.lifecycle import LifecycleError
from app.lifecycle.prediction_log_data import PredictionLog, log_texts

LABELS = ["negative", "neutral", "positive"]


def prediction(rid, texts, minute, model="m", version="1", mode="full", task="text-classification", pairs=None):
    items = []
    for index, text in enumerate(texts):
        item = {"index": index, "label": "positive", "score": 0.9,
                "scores": {"negative": 0.05, "neutral": 0.05, "positive": 0.9}}
        if mode == "full":
            item["text"] = text
            if pairs:
                item["text_pair"] = pairs[index]
        elif mode == "hash":
            item["text_hash"] = f"{hash(text) & 0xffff:x}"
        items.append(item)
    return {"type": "prediction", "id": rid, "time": f"2026-12-07T18:{minute:02d}:00.000000+00:00", "model": model,
            "version": version, "route": "/predict", "protocol": "http", "task": task, "latency_ms": 3.2,
            "truncated": 0, "items": items}


def feedback(rid, label, minute, index=0, model="m", version="1"):
    return {"type": "feedback", "id": rid, "index": index, "time": f"2026-12-07T18:{minute:02d}:30.000000+00:00",
            "model": model, "version": version, "label": label, "predicted": "positive", "key": None}


def write(path, *records, raw=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + raw)


def test_two_workers_and_rotated_files_join_across_files(tmp_path):
    """Worker A logged the prediction, worker B took its feedback; a rotated file holds older records; a truncated
    last line (a worker killed mid-write) is skipped and counted."""
    write(tmp_path / "worker-1.jsonl.1", prediction("r1", ["good stuff", "meh"], 1), feedback("r2", "negative", 9))
    write(tmp_path / "worker-1.jsonl", prediction("r2", ["awful"], 5), raw='{"type": "predic')
    write(tmp_path / "sub" / "worker-2.jsonl", feedback("r1", "positive", 2), feedback("r1", "neutral", 3, index=1),
          prediction("r3", ["no feedback here"], 4))
    (tmp_path / "notes.txt").write_text("not a log file")
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert found.texts == ["good stuff", "meh", "awful"]  # in the predictions' time order
    assert found.labels == ["positive", "neutral", "negative"]
    assert (found.logged, found.with_text, found.with_feedback, found.files, found.bad_lines) == (4, 4, 3, 3, 1)
    summary = found.summary()
    assert "model 'm' (versions 1): 4 texts logged (4 in full), 3 with feedback, 3 used " in summary
    assert "(negative 1, neutral 1, positive 1)" in summary and "1 unreadable lines" in summary
    assert found.data_record()["rows"] == 3 and len(found.data_record()["sha256"]) == 64
    assert str(tmp_path) not in found.data_record()["file"]  # the card never shows a folder


def test_gzipped_rotation_is_read(tmp_path):
    with gzip.open(tmp_path / "w.jsonl.2.gz", "wt") as f:
        f.write(json.dumps(prediction("r1", ["zipped"], 1)) + "\n")
    write(tmp_path / "w.jsonl", feedback("r1", "neutral", 2))
    assert PredictionLog(tmp_path).labelled("m", LABELS).labels == ["neutral"]


def test_feedback_without_a_prediction_is_ignored_and_counted(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["fine"], 1), feedback("r1", "positive", 1),
          feedback("nobody-logged-this", "negative", 2), feedback("r1", "negative", 3, index=7))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert (found.texts, found.unmatched) == (["fine"], 2)
    assert "2 feedback without a logged prediction" in found.summary()


def test_the_first_feedback_for_an_item_wins_by_time_not_file_order(tmp_path):
    """As the server's join index rules (a second feedback for an item is refused there): a repeat appears only in
    the logs of several replicas read together, and the earliest counts, whichever file holds it."""
    write(tmp_path / "a.jsonl", feedback("r1", "negative", 8), feedback("r1", "neutral", 5))  # read first, later
    write(tmp_path / "b.jsonl", prediction("r1", ["changed my mind"], 1), feedback("r1", "positive", 2))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert (found.labels, found.repeated, found.with_feedback) == (["positive"], 2, 1)
    assert "2 repeated feedback for an item (the first counts)" in found.summary()


def test_a_reused_request_id_joins_its_first_prediction_as_the_server_does(tmp_path):
    """The server's join index keeps the first prediction logged under a request id (a client reusing
    X-Request-ID); feedback naming a version joins that version's."""
    write(tmp_path / "a.jsonl", prediction("same", ["first text"], 1), prediction("same", ["second text"], 4),
          feedback("same", "negative", 5), prediction("other", ["v1 text"], 6), prediction("other", ["v2 text"], 7,
                                                                                            version="2"),
          feedback("other", "positive", 8, version="2"))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert list(zip(found.texts, found.labels)) == [("first text", "negative"), ("v2 text", "positive")]


@pytest.mark.parametrize("mode", ["hash", "none"])
def test_a_log_without_text_is_refused_naming_the_text_mode(tmp_path, mode):
    write(tmp_path / "a.jsonl", prediction("r1", ["secret"], 1, mode=mode), feedback("r1", "positive", 2))
    log = PredictionLog(tmp_path)
    for read in (lambda: log.labelled("m", LABELS), lambda: log.texts()):
        with pytest.raises(LifecycleError) as info:
            read()
        message = str(info.value)
        assert f"1 with text mode {mode!r}" in message and 'text mode "full"' in message
        assert "BERTSERVE_PREDICTION_LOG_TEXT=full" in message and "\n" not in message


def test_feedback_on_hashed_items_is_counted_when_other_items_have_text(tmp_path):
    """The text mode changed while the log ran: only the items logged in full train."""
    write(tmp_path / "a.jsonl", prediction("r1", ["hidden"], 1, mode="hash"), feedback("r1", "negative", 1),
          prediction("r2", ["shown"], 2), feedback("r2", "neutral", 2),
          prediction("r3", ["shown too"], 3), feedback("r3", "positive", 3))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert (found.texts, found.without_text) == (["shown", "shown too"], 1)
    assert "1 with feedback but no logged text" in found.summary()


def test_a_label_outside_the_models_labels_is_refused_naming_the_record(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["x"], 1), feedback("r1", "Positive", 2))
    with pytest.raises(LifecycleError) as info:
        PredictionLog(tmp_path).labelled("m", LABELS)
    assert f"{tmp_path / 'a.jsonl'}:2: label 'Positive' is not one of the model's labels" in str(info.value)


@pytest.mark.parametrize("label, message", [
    (["nausea", "rash"], "multi-label feedback"),
    (3.5, "regression feedback"),
])
def test_heads_train_does_not_fit_are_refused_with_the_reason(tmp_path, label, message):
    write(tmp_path / "a.jsonl", prediction("r1", ["x"], 1), feedback("r1", label, 2))
    with pytest.raises(LifecycleError, match=message):
        PredictionLog(tmp_path).labelled("m", LABELS)


def test_token_and_zero_shot_answers_are_refused_when_nothing_else_has_feedback(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["aspirin for pain"], 1, task="token-classification"),
          feedback("r1", "negative", 2))
    with pytest.raises(LifecycleError, match="token-classification answers; train --from-log fits text classifiers"):
        PredictionLog(tmp_path).labelled("m", LABELS)
    write(tmp_path / "b.jsonl", prediction("r2", ["fine"], 3), feedback("r2", "positive", 3))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert found.texts == ["fine"] and "1 token-classification answers" in found.summary()


def test_one_logit_pairs_take_0_and_1(tmp_path):
    write(tmp_path / "a.jsonl",
          prediction("r1", ["headache", "headache"], 1, task="rerank", pairs=["aspirin helped", "my cat"]),
          feedback("r1", ["relevance"], 2, index=0), feedback("r1", [], 2, index=1))
    found = PredictionLog(tmp_path).labelled("m", ["relevance"], one_logit=True)
    assert found.texts == [("headache", "aspirin helped"), ("headache", "my cat")]
    assert found.labels == ["1", "0"]
    write(tmp_path / "a.jsonl", prediction("r1", ["q", "q"], 1, pairs=["d", "e"]), feedback("r1", 1, 2),
          feedback("r1", "0", 2, index=1))
    assert PredictionLog(tmp_path).labelled("m", ["relevance"], one_logit=True).labels == ["1", "0"]
    write(tmp_path / "a.jsonl", prediction("r1", ["q"], 1, pairs=["d"]), feedback("r1", "relevant", 2))
    with pytest.raises(LifecycleError, match=r"for a one-logit head \['relevance'\]; its feedback is \[\] or 0"):
        PredictionLog(tmp_path).labelled("m", ["relevance"], one_logit=True)


def test_models_are_kept_apart_and_one_must_be_named_when_several_logged(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["for m"], 1), prediction("r2", ["for other"], 2, model="other",
                                                                           version="3"),
          feedback("r1", "positive", 3), feedback("r2", "negative", 3, model="other", version="3"))
    log = PredictionLog(tmp_path)
    assert log.models() == {"m": ["1"], "other": ["3"]}
    with pytest.raises(LifecycleError, match="several models \\(m, other\\); name one with --model"):
        log.model(None)
    with pytest.raises(LifecycleError, match="no predictions of model 'nope'"):
        log.model("nope")
    found = log.labelled("other", LABELS)
    assert (found.texts, found.labels, found.versions, found.unmatched) == (["for other"], ["negative"], ["3"], 0)


def test_versions_of_one_model_all_train_and_are_listed(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["old"], 1, version="1"), prediction("r2", ["new"], 2, version="10"),
          feedback("r1", "negative", 3), feedback("r2", "positive", 3, version="10"))
    found = PredictionLog(tmp_path).labelled("m", LABELS)
    assert found.versions == ["1", "10"] and found.texts == ["old", "new"]


def test_no_feedback_at_all_says_how_to_send_it(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["lonely"], 1))
    with pytest.raises(LifecycleError, match="no feedback joins a logged prediction of 'm'.*POST /feedback"):
        PredictionLog(tmp_path).labelled("m", LABELS)


def test_log_texts_gives_every_full_text_with_or_without_feedback(tmp_path):
    write(tmp_path / "a.jsonl", prediction("r1", ["one", "two"], 1), feedback("r1", "positive", 2),
          prediction("r2", ["hashed"], 3, mode="hash"), prediction("r3", ["q"], 4, model="other", pairs=["d"]))
    assert log_texts(tmp_path) == ["one", "two", ("q", "d")]
    assert log_texts(tmp_path, "m") == ["one", "two"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, r"no prediction log files \(\*\.jsonl\)"),
    (lambda p: write(p / "a.jsonl", feedback("r1", "positive", 1)), "no prediction records"),
    (lambda p: write(p / "a.jsonl", raw="garbage\n"), "no prediction records"),
])
def test_empty_or_missing_logs_are_refused(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(LifecycleError, match=message):
        PredictionLog(tmp_path)
    with pytest.raises(LifecycleError, match="not a folder"):
        PredictionLog(tmp_path / "missing")
