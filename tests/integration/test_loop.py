"""The loop from production back to the next version, end to end on a tiny random BERT (README: "The loop"):
serve version 1 with the prediction log on (text "full") -> answers -> POST /feedback with each answer's
X-Request-ID -> live accuracy counted -> `bertserve train --from-log` (starting from the checkpoint version 1's
report.source names) -> `bertserve export` publishes version 2 -> serving.json "shadow": 2 compares it on live
traffic -> "traffic": {"2": 100} moves the answers to it. The real app in-process (httpx ASGITransport), its real
prediction log writer, real training and export; every wait is on a condition."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from app import metrics
from app.cli import main as cli
from tests.support.apps import App, write_serving
from tests.support.metrics import metric
from tests.support.tiny import CORPUS, make_tiny_checkpoint

pytestmark = pytest.mark.slow

# The tiny corpus with its true sentiment; each text sent in a few variants, so the set has several per class.
TRUTH = ["positive", "negative", "neutral", "neutral", "negative", "positive"]
SENT = [(f"{text} {suffix}".strip(), label) for suffix in ("", "really", "today", "again", "for me", "honestly")
        for text, label in zip(CORPUS, TRUTH)]


def scrape(name: str, **labels) -> float:
    return metric(metrics.render()[0].decode(), name, **labels)


def feedback_counts() -> tuple[float, float]:
    """Version 1's joined feedback, all and wrong (the true label is not the logged prediction)."""
    labels = set(TRUTH)
    return (scrape("bertserve_feedback_total", model="tiny", version="1"),
            sum(scrape("bertserve_feedback_total", model="tiny", version="1", label=t, predicted=p)
                for t in labels for p in labels if t != p))


def shadow_compared() -> float:
    return sum(scrape("bertserve_shadow_decisions_total", model="tiny", version="2", outcome=o)
               for o in ("agree", "disagree"))


def log_records(folder: Path, kind: str) -> list[dict]:
    """The log's records of a type; a last line the writer has not finished (no newline yet) is not read."""
    return [r for path in sorted(folder.glob("*.jsonl*")) for line in path.read_text().split("\n")[:-1]
            if line.strip() and (r := json.loads(line))["type"] == kind]


async def until(condition, what: str, timeout_s: float = 30.0) -> None:
    """Wait for `condition()` (the log writer is a thread of its own): a bound on failure, never a timing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.01)


def test_log_feedback_retrain_shadow_then_shift_traffic(tmp_path, capsys):
    repo, log, checkpoint_2 = tmp_path / "repo", tmp_path / "log", tmp_path / "checkpoint-2"
    base = make_tiny_checkpoint(tmp_path / "checkpoint-1")
    cli(["export", str(base), "--name", "tiny", "--model-repository", str(repo), "--quantize", "none"])
    write_serving(repo, '{"version_policy": {"specific": [1]}}')  # publishing 2 must not move traffic to it
    before = feedback_counts()
    shadow_before = shadow_compared()

    async def scenario():
        async with App(repo, prediction_log_dir=log, prediction_log_text="full") as app:
            # 1. Production: answers, logged with their texts; feedback on each with the id its answer carried.
            answers = [await app.predict(text) for text, _ in SENT]
            assert {a.status_code for a in answers} == {200}
            for answer, (_, label) in zip(answers, SENT):
                given = await app.client.post("/feedback", json={"id": answer.headers["x-request-id"], "index": 0,
                                                                 "label": label})
                assert given.status_code == 200, given.text
            await until(lambda: len(log_records(log, "feedback")) == len(SENT), "the feedback records")
            wrong = sum(a.json()[0]["label"] != label for a, (_, label) in zip(answers, SENT))
            listed = (await app.client.get("/models/tiny")).json()

            # 2. The next version, from the log, while version 1 serves.
            await asyncio.to_thread(cli, ["train", "--from-log", str(log), "--output", str(checkpoint_2),
                                          "--model-repository", str(repo), "--epochs", "2"])
            trained = capsys.readouterr().out
            await asyncio.to_thread(cli, ["export", str(checkpoint_2), "--name", "tiny", "--model-repository",
                                          str(repo), "--quantize", "none"])

            # 3. Shadow: version 2 runs a copy of each answered request; 1 still answers.
            write_serving(repo, '{"version_policy": {"specific": [1]}, "shadow": 2}')
            await app.service.registry.sync()
            shadowed = [await app.predict(text) for text, _ in SENT]
            await app.service.inference.idle()
            compared = (await app.client.get("/models/tiny")).json()

            # 4. Shift the traffic: version 2 answers, and its answers are logged for the next round.
            write_serving(repo, '{"traffic": {"2": 100}}')
            await app.service.registry.sync()
            shifted = [await app.predict(text) for text, _ in SENT[:6]]
            for answer, (_, label) in zip(shifted, SENT):  # live accuracy of version 2, from its own feedback
                given = await app.client.post("/feedback", json={"id": answer.headers["x-request-id"],
                                                                 "label": label})
                assert given.status_code == 200 and given.json()["feedback"][0]["version"] == "2", given.text
            await until(lambda: sum(r["version"] == "2" for r in log_records(log, "prediction")) == 6,
                        "version 2's logged answers")
            live = (await app.client.get("/models/tiny")).json()
            return wrong, listed, trained, shadowed, compared, shifted, live

    wrong, listed, trained, shadowed, compared, shifted, live = asyncio.run(scenario())
    n = len(SENT)
    # Live accuracy: every feedback joined, the wrong answers counted as such (label: the truth, predicted: v1's).
    after = feedback_counts()
    assert after[0] - before[0] == n and after[1] - before[1] == wrong > 0
    assert listed[0]["version"] == 1
    assert listed[0]["live_quality"] == {"feedback": n, "correct": n - wrong, "accuracy": (n - wrong) / n}

    # The training set is the log joined with its feedback, from version 1's own checkpoint.
    assert f"model 'tiny' (versions 1): {n} texts logged ({n} in full), {n} with feedback, {n} used " \
           "(negative 12, neutral 12, positive 12)" in trained
    assert f"starting from {base} (report.source of tiny:1)" in trained
    report = json.loads((checkpoint_2 / "report.json").read_text())
    assert report["base"] == str(base) and report["labels"] == ["negative", "neutral", "positive"]
    assert report["data"][0]["rows"] == n and report["data"][0]["file"] == "prediction log log (1 files)"
    published = json.loads((repo / "tiny" / "2" / "bertserve.json").read_text())
    assert published["report"]["source"] == str(checkpoint_2)  # the next round starts from this one

    assert {a.headers["x-model-version"] for a in shadowed} == {"1"}
    v2 = compared[1]
    assert v2["shadow"] is True and v2["shadow_agreement"]["compared"] == n
    assert shadow_compared() - shadow_before == n  # bertserve_shadow_decisions_total: what the dashboard compares

    assert {a.headers["x-model-version"] for a in shifted} == {"2"}
    [v2] = [entry for entry in live if entry["version"] == 2]
    assert v2["live_quality"]["feedback"] == 6 and v2["default"] is True


def _log(folder: Path, text_mode: str = "full") -> Path:
    """A hand-written log of model tiny version 1: one prediction, its feedback."""
    item = {"index": 0, "label": "positive", "score": 0.9, **({"text": CORPUS[0]} if text_mode == "full" else
                                                             {"text_hash": "ab12"} if text_mode == "hash" else {})}
    records = [{"type": "prediction", "id": "r1", "time": "2026-12-07T18:00:00+00:00", "model": "tiny",
                "version": "1", "task": "text-classification", "items": [item]},
               {"type": "feedback", "id": "r1", "index": 0, "time": "2026-12-07T18:01:00+00:00", "model": "tiny",
                "version": "1", "label": "negative", "predicted": "positive", "key": None}]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _published(repo: Path, **fields) -> None:
    """A bertserve.json for tiny:1 (all --from-log reads of it: labels, problem_type, report.source)."""
    (repo / "tiny" / "1").mkdir(parents=True)
    config = {"labels": ["negative", "neutral", "positive"], "report": {"source": "gone/checkpoint"}, **fields}
    (repo / "tiny" / "1" / "bertserve.json").write_text(json.dumps(config))


@pytest.mark.parametrize("setup, argv, message", [
    (lambda t: None, ["--base", "b"], "give --data and --base (or --from-log LOGDIR"),
    (lambda t: _log(t / "log", "hash"), ["--from-log", "{log}"],
     "holds no text of 'tiny' (1 with text mode 'hash'"),
    (lambda t: _log(t / "log"), ["--from-log", "{log}"], "repo/tiny/1: no published version here (--model-repository"),
    (lambda t: (_log(t / "log"), _published(t / "repo")), ["--from-log", "{log}"],
     ("its checkpoint gone/checkpoint (report.source) is not on this machine (model images ship no checkpoints); "
      "give --base")),
    (lambda t: (_log(t / "log"), _published(t / "repo", problem_type="multi_label_classification")),
     ["--from-log", "{log}", "--base", "{log}"], "tiny:1 is a multi_label_classification head"),
    (lambda t: _log(t / "log"), ["--from-log", "{log}", "--model", "other"], "no predictions of model 'other'"),
])
def test_from_log_refusals_are_one_line_and_write_nothing(tmp_path, capsys, setup, argv, message):
    setup(tmp_path)
    argv = [a.format(log=tmp_path / "log") for a in argv]
    with pytest.raises(SystemExit) as info:
        cli(["train", *argv, "--output", str(tmp_path / "out"), "--model-repository", str(tmp_path / "repo")])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
