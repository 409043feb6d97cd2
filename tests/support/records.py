"""A request record as the inference core leaves it for the prediction log (app.record, app.prediction_log), made
without a model: the prediction log's unit tests (JSONL and Parquet) build their records here."""

from __future__ import annotations

import time

import numpy as np

from app.record import RequestRecord

LABELS = ("negative", "neutral", "positive")


def answered_record(texts, scores=None, head=None, entities=None, task="text-classification", labels=LABELS,
                    request_id="rid-1") -> RequestRecord:
    record = RequestRecord("http", "/predict", "m", request_id, time.perf_counter())
    record.version, record.task, record.head, record.texts, record.labels = "3", task, head, texts, labels
    record.scores, record.entities = (None if scores is None else np.asarray(scores, dtype=np.float32)), entities
    return record
