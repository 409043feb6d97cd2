"""Long texts read whole (`truncate: false`): a text longer than the model's max length is scored in overlapping
windows — the windows transformers' tokenizer makes with `return_overflowing_tokens=True` and `stride` — and its
answer is the mean, max or first of the windows' scores; a pair keeps its first text whole and windows the second.
Every answer says how many texts it cut (X-Truncated-Texts, V2's `truncated`, bertserve_truncated_texts). The
reference here scores each window alone on the served model's own engine; the app runs in-process on the tiny
real model."""

from __future__ import annotations

import numpy as np
import pytest

from app.scores import aggregate, softmax
from app.settings import Settings
from tests.support.apps import in_process_with_service
from tests.support.metrics import metric
from tests.support.tiny import CORPUS

LONG = " ".join(CORPUS * 6)  # several times the tiny model's 64 tokens
SHORT = CORPUS[0]


@pytest.fixture(scope="module")
def app(tiny_model_repo, tiny_checkpoint):
    """(call, the served tiny model, transformers' tokenizer of its checkpoint)."""
    from transformers import AutoTokenizer

    for call, service in in_process_with_service(Settings(
            model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False, provider="cpu",
            log_level="warning", max_request_sequences=40)):
        yield call, service.resolve("tiny"), AutoTokenizer.from_pretrained(str(tiny_checkpoint))


def window_scores(served, tokenizer, text, stride, pair=None) -> np.ndarray:
    """Each window's probabilities, scoring the windows transformers makes one at a time."""
    encoded = tokenizer(text, pair, truncation="only_second" if pair else True, max_length=served.max_length,
                        stride=stride, return_overflowing_tokens=True)
    rows = []
    for k, ids in enumerate(encoded["input_ids"]):
        types = encoded["token_type_ids"][k] if pair else None
        rows.append(served.infer([ids], None if types is None or not any(types) else [types])[0])
    return softmax(np.stack(rows))


def scores_of(answer: list[dict], labels: list[str]) -> list[float]:
    by_label = {item["label"]: item["score"] for item in answer}
    return [by_label[label] for label in labels]


@pytest.mark.parametrize("how", ["mean", "max", "first"])
@pytest.mark.parametrize("stride", [None, 5])
def test_a_long_text_is_answered_from_its_windows(app, how, stride):
    call, served, tokenizer = app
    body = {"inputs": [SHORT, LONG], "truncate": False, "window_aggregation": how}
    if stride is not None:
        body["stride"] = stride
    r = call("POST", "/predict", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["X-Truncated-Texts"] == "0"  # nothing cut: every token was read
    windows = window_scores(served, tokenizer, LONG, served.max_length // 4 if stride is None else stride)
    assert len(windows) >= 3
    expected = aggregate(windows, [len(windows)], how)[0]
    labels = served.config.labels
    np.testing.assert_allclose(scores_of(r.json()[1], labels), expected, atol=1e-5)
    # A text that fits is one window: answered as ever
    cut = call("POST", "/predict", json={"inputs": [SHORT, LONG]})
    assert r.json()[0] == cut.json()[0]
    assert cut.headers["X-Truncated-Texts"] == "1"
    if how == "first":  # the first window is what truncation reads
        np.testing.assert_allclose(scores_of(r.json()[1], labels), scores_of(cut.json()[1], labels), atol=1e-6)


def test_a_pair_keeps_its_first_text_whole_and_windows_the_second(app):
    call, served, tokenizer = app
    r = call("POST", "/predict", json={"inputs": [[SHORT, LONG]], "truncate": False, "stride": 8})
    assert r.status_code == 200, r.text
    windows = window_scores(served, tokenizer, SHORT, 8, pair=LONG)
    assert len(windows) >= 3
    np.testing.assert_allclose(scores_of(r.json()[0], served.config.labels), windows.mean(axis=0), atol=1e-5)


def test_v2_reads_long_texts_whole_and_says_what_it_cut(app):
    call, served, tokenizer = app
    text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": [SHORT, LONG]}
    whole = call("POST", "/v2/models/tiny/infer", json={"inputs": [text], "parameters": {
        "truncate": False, "stride": 8, "window_aggregation": "max"}})
    assert whole.status_code == 200, whole.text
    assert whole.json()["parameters"] == {"truncated": 0}
    scores = np.array(next(o for o in whole.json()["outputs"] if o["name"] == "scores")["data"]).reshape(2, -1)
    np.testing.assert_allclose(scores[1], window_scores(served, tokenizer, LONG, 8).max(axis=0), atol=1e-5)
    cut = call("POST", "/v2/models/tiny/infer", json={"inputs": [text]})
    assert cut.json()["parameters"] == {"truncated": 1}


def test_cut_and_windowed_texts_are_counted(app):
    call, _, _ = app

    def counted() -> tuple[float, float, float]:
        text = call("GET", "/metrics").text
        return (metric(text, "bertserve_truncated_texts_total", model="tiny", version="1"),
                metric(text, "bertserve_windowed_texts_total", model="tiny", version="1", count="texts"),
                metric(text, "bertserve_windowed_texts_total", model="tiny", version="1", count="windows"))

    before = counted()
    assert call("POST", "/predict", json={"inputs": [LONG, LONG, SHORT]}).headers["X-Truncated-Texts"] == "2"
    assert call("POST", "/predict", json={"inputs": [LONG, SHORT], "truncate": False}).status_code == 200
    after = counted()
    assert after[0] - before[0] == 2 and after[1] - before[1] == 1 and after[2] - before[2] >= 3


@pytest.mark.parametrize(("body", "named"), [
    ({"inputs": LONG, "truncate": False, "stride": 62}, "stride 62 must be below the tokens a window holds (62"),
    ({"inputs": LONG, "truncate": False, "stride": -1}, "stride"),
    ({"inputs": LONG, "truncate": False, "window_aggregation": "median"}, "window_aggregation"),
    ({"inputs": [LONG * 4, LONG * 4], "truncate": False}, "BERTSERVE_MAX_REQUEST_SEQUENCES"),
    ({"inputs": [[LONG, "a"]], "truncate": False}, "the room the first text of a pair leaves"),
    # Token classification's options on a sequence model: a 422 naming the model's task.
    ({"inputs": LONG, "truncate": False, "parameters": {"aggregation_strategy": "simple"}},
     "model tiny (version 1) is a text-classification model"),
])
def test_bad_window_requests_are_a_clear_422_and_the_server_keeps_serving(app, body, named):
    call, _, _ = app
    r = call("POST", "/predict", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and named in r.json()["error"]
    assert call("POST", "/predict", json={"inputs": LONG, "truncate": False}).status_code == 200
