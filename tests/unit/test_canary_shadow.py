"""Canary weights and shadow versions (serving.json "traffic" and "shadow") on the tiny model's real sessions and
batchers, through the real app in-process (httpx's ASGITransport): the split, stickiness per routing key, weight
changes under load, shadow counts, shadow work dropped when the shadow's queue is full, and a shadow that raises.
No timing assertions: every wait is on a condition."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from app import metrics
from tests.support.apps import TEXTS, App, write_serving
from tests.support.metrics import metric

POISON = "dizziness"  # the word the broken version's graph fails on (a word of the tiny tokenizer's vocabulary)


@pytest.fixture(scope="module")
def versions(tiny_model_repo, tmp_path_factory) -> dict[int, Path]:
    """Version folders: 1 the tiny model, 2 another random tiny model (other seed: other decisions, same labels),
    3 the tiny model whose graph fails at run time on texts holding POISON (and only on those, so it loads)."""
    from tests.support.tiny import export_tiny_model, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("canary")
    other = export_tiny_model(make_tiny_checkpoint(root / "checkpoint", seed=1), root / "other" / "1")
    broken = root / "broken" / "1"
    shutil.copytree(tiny_model_repo / "tiny" / "1", broken)
    _fail_on_word(broken, POISON)
    return {1: tiny_model_repo / "tiny" / "1", 2: other, 3: broken}


def _fail_on_word(folder: Path, word: str) -> None:
    """Add to the graph a Gather whose index is out of bounds when the word's token is in the batch: onnxruntime
    raises at run time ("indices element out of data bounds"); other inputs run as before."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer

    [token] = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(word, add_special_tokens=False).ids
    model = onnx.load(folder / "model.onnx")
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
    graph.initializer.extend([
        helper.make_tensor("poison_token", TensorProto.INT64, [], [token]),
        helper.make_tensor("poison_scale", TensorProto.INT64, [], [1000]),
        helper.make_tensor("poison_table", TensorProto.FLOAT, [1], [0.0]),
    ])
    graph.node.extend([
        helper.make_node("Equal", ["input_ids", "poison_token"], ["poison_hit"]),
        helper.make_node("Cast", ["poison_hit"], ["poison_hit_int"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["poison_hit_int"], ["poison_any"], keepdims=0),
        helper.make_node("Mul", ["poison_any", "poison_scale"], ["poison_index"]),
        helper.make_node("Gather", ["poison_table", "poison_index"], ["poison_zero"]),
        helper.make_node("Add", ["logits_raw", "poison_zero"], ["logits"]),
    ])
    onnx.save(model, folder / "model.onnx")


def repository(tmp_path: Path, versions: dict[int, Path], serving: str, *wanted: int) -> Path:
    repo = tmp_path / "repo"
    for v in wanted:
        shutil.copytree(versions[v], repo / "tiny" / str(v))
    write_serving(repo, serving)
    return repo


def scrape(name: str, **labels) -> float:
    return metric(metrics.render()[0].decode(), name, **labels)


def test_canary_split_over_2000_requests_and_metrics_by_version(tmp_path, versions):
    repo = repository(tmp_path, versions, '{"traffic": {"1": 90, "2": 10}}', 1, 2)
    before = {v: scrape("bertserve_requests_total", model="tiny", version=v, status="200") for v in ("1", "2")}
    stage_before = scrape("bertserve_request_inference_duration_seconds_count", model="tiny", version="2")

    async def scenario():
        async with App(repo) as app:
            answers = await app.many(2_000)
            listed = (await app.client.get("/models/tiny")).json()
            return answers, listed

    answers, listed = asyncio.run(scenario())
    assert Counter(r.status_code for r in answers) == {200: 2_000}
    split = Counter(r.headers["x-model-version"] for r in answers)
    assert abs(split["2"] / 2_000 * 100 - 10) <= 5 and split["1"] + split["2"] == 2_000, split
    counted = {v: scrape("bertserve_requests_total", model="tiny", version=v, status="200") - before[v]
               for v in ("1", "2")}
    assert counted == {"1": split["1"], "2": split["2"]}  # the version label says which version answered
    assert scrape("bertserve_request_inference_duration_seconds_count", model="tiny", version="2") - stage_before \
        == split["2"]
    assert [(m["version"], m["traffic"], m["shadow"]) for m in listed] == [(1, 90.0, False), (2, 10.0, False)]


def test_a_routing_key_sticks_and_a_named_version_wins(tmp_path, versions):
    repo = repository(tmp_path, versions, '{"traffic": {"1": 50, "2": 50}}', 1, 2)

    async def scenario():
        async with App(repo) as app:
            keys = [f"session-{k}" for k in range(100)]
            first = {k: (await app.predict(TEXTS[0], key=k)).headers["x-model-version"] for k in keys}
            again = [(await app.predict(TEXTS[1], key=k)).headers["x-model-version"] == first[k]
                     for k in keys for _ in range(3)]
            v2 = [(await app.client.post("/v2/models/tiny/infer", headers={"x-routing-key": k}, json={
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXTS[2]]}]}))
                .headers["x-model-version"] == first[k] for k in keys[:20]]
            named = {(await app.predict(TEXTS[0], key=k, version=1)).headers["x-model-version"] for k in keys[:20]}
            missing = (await app.predict(TEXTS[0], key="x", version=7)).status_code
            return first, again, v2, named, missing

    first, again, v2, named, missing = asyncio.run(scenario())
    assert set(first.values()) == {"1", "2"}  # keys spread over both versions
    assert all(again) and all(v2)  # the same key, the same version, on /predict and V2
    assert named == {"1"} and missing == 404


def test_weights_change_on_the_next_scan_under_load_without_a_failed_request(tmp_path, versions):
    repo = repository(tmp_path, versions, '{"traffic": {"1": 90, "2": 10}}', 1, 2)

    async def scenario():
        async with App(repo, poll_interval_s=0.05) as app:
            poller = asyncio.create_task(app.service.poll())
            statuses: Counter = Counter()
            served_after: Counter = Counter()
            stop = asyncio.Event()
            phase = ["old"]

            async def client() -> None:
                k = 0
                while not stop.is_set():
                    k += 1
                    r = await app.predict(TEXTS[k % len(TEXTS)])
                    statuses[r.status_code] += 1
                    if phase[0] == "new":
                        served_after[r.headers.get("x-model-version")] += 1

            async def until(condition) -> None:
                while not condition():
                    await asyncio.sleep(0.01)

            clients = [asyncio.create_task(client()) for _ in range(16)]
            await until(lambda: statuses.total() >= 100)
            write_serving(repo, '{"traffic": {"1": 10, "2": 90}}')  # a weight change: both stay loaded
            await until(lambda: app.service.router.traffic("tiny") == {1: 10.0, 2: 90.0})
            mark = statuses.total()
            await until(lambda: statuses.total() >= mark + 100)
            write_serving(repo, '{"traffic": {"2": 100}}')  # all to 2: version 1 leaves (drained, unloaded)
            await until(lambda: app.service.router.traffic("tiny") == {2: 100.0}
                        and app.service.version_states("tiny") == {2: "ready"})
            phase[0] = "new"
            await until(lambda: served_after.total() >= 200)
            stop.set()
            await asyncio.gather(*clients)
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            return statuses, served_after

    statuses, served_after = asyncio.run(scenario())
    assert set(statuses) == {200}, statuses  # nothing failed while the table changed twice
    assert set(served_after) == {"2"}


def test_shadow_counts_add_up_to_the_texts_answered(tmp_path, versions):
    repo = repository(tmp_path, versions, '{"shadow": 2}', 1, 2)
    before = {o: scrape("bertserve_shadow_decisions_total", model="tiny", version="2", outcome=o)
              for o in ("agree", "disagree")}
    dropped_before = scrape("bertserve_shadow_dropped_total", model="tiny", version="2")
    diffs_before = scrape("bertserve_shadow_probability_difference_count", model="tiny", version="2")

    async def scenario():
        async with App(repo) as app:
            answers = await app.many(300, concurrency=8)
            batch = await app.predict(TEXTS[:2])  # two texts in one request: two comparisons
            await app.service.inference.idle()
            listed = (await app.client.get("/models/tiny")).json()
            direct = [await app.predict(t, version=2) for t in TEXTS[:5]]  # the shadow itself: no shadow work
            await app.service.inference.idle()
            after = (await app.client.get("/models/tiny")).json()
            return answers + [batch], listed, after, direct

    answers, listed, after, direct = asyncio.run(scenario())
    assert {r.status_code for r in answers} == {200} and {r.headers["x-model-version"] for r in answers} == {"1"}
    v1, v2 = listed
    assert (v1["default"], v1["traffic"], v1["shadow"], v2["default"], v2["traffic"], v2["shadow"]) == (
        True, 100.0, False, False, 0.0, True)
    record = v2["shadow_agreement"]
    assert record["compared"] + sum(record["dropped"].values()) == 302  # every text answered: compared or dropped
    assert record["compared"] > 0 and record["agree"] + record["disagree"] == record["compared"]
    assert record["agreement"] == round(record["agree"] / record["compared"], 4)
    counted = sum(scrape("bertserve_shadow_decisions_total", model="tiny", version="2", outcome=o) - before[o]
                  for o in ("agree", "disagree"))
    dropped = scrape("bertserve_shadow_dropped_total", model="tiny", version="2") - dropped_before
    assert (counted, dropped) == (record["compared"], sum(record["dropped"].values()))
    assert scrape("bertserve_shadow_probability_difference_count", model="tiny", version="2") - diffs_before \
        == record["compared"]
    assert scrape("bertserve_shadow_probability_difference_sum", model="tiny", version="2") > 0  # other model
    assert {r.headers["x-model-version"] for r in direct} == {"2"}
    assert after[1]["shadow_agreement"] == record


def test_shadow_work_is_dropped_not_queued_when_the_shadow_queue_is_full(tmp_path, versions):
    """The test holds the shadow's engine sessions (as a long batch would), so its queue stays full for as long
    as the test needs: a condition, not a race."""
    repo = repository(tmp_path, versions, '{"shadow": 2}', 1, 2)

    async def scenario():
        async with App(repo, max_queue_size=16, max_client_batch_size=4) as app:
            shadow = app.service.router.resolve("tiny", 2)
            held = [shadow._idle.get() for _ in shadow.engines]
            filler = asyncio.create_task(shadow.batcher.submit(TEXTS[:16]))  # the shadow's whole queue
            while shadow.batcher.load < 16:
                await asyncio.sleep(0.001)
            answers = [await app.predict(t) for t in TEXTS[:5]]
            await app.service.inference.idle()
            while_full = dict(shadow.shadow_record.dropped), shadow.batcher.load, shadow.shadow_record.agree
            for engine in held:
                shadow._idle.put(engine)
            await filler
            ok = await app.predict(TEXTS[6])
            await app.service.inference.idle()
            return answers, ok, while_full, shadow.shadow_record.summary()

    answers, ok, (dropped, load, compared), summary = asyncio.run(scenario())
    assert {r.status_code for r in answers} == {200} and ok.status_code == 200
    assert dropped["queue_full"] == 5 and load == 16 and compared == 0  # dropped at once, nothing queued
    assert summary["compared"] == 1 and summary["dropped"]["queue_full"] == 5


def test_a_shadow_that_raises_changes_no_answer(tmp_path, versions, capfd):
    repo = repository(tmp_path, versions, '{"version_policy": {"specific": [1]}}', 1, 3)
    text = f"terrible {POISON} and headache, marker-7f3a"

    async def scenario():
        async with App(repo, provider="cpu") as app:  # OpenVINO reads an out-of-bounds Gather without raising
            alone = [await app.predict(t) for t in (text, TEXTS[0])]
            write_serving(repo, '{"shadow": 3}')
            await app.service.registry.sync()  # the scan: version 3 loads as the shadow
            shadowed = [await app.predict(t) for t in (text, TEXTS[0])]
            await app.service.inference.idle()
            itself = await app.predict(text, version=3)  # the broken version really fails on that text
            listed = (await app.client.get("/models/tiny")).json()
            return alone, shadowed, itself, listed

    alone, shadowed, itself, listed = asyncio.run(scenario())
    log = capfd.readouterr().err  # the service's JSON log lines
    assert [r.status_code for r in shadowed] == [200, 200] and itself.status_code == 500
    assert [r.json() for r in shadowed] == [r.json() for r in alone]  # the same answers, from version 1
    assert {r.headers["x-model-version"] for r in shadowed} == {"1"}
    record = listed[1]["shadow_agreement"]
    assert record["dropped"]["error"] == 1 and record["compared"] == 1  # the poisoned text raised; the other ran
    assert "shadow version tiny:3 failed on 1 text(s): app.errors.BackendError at " in log
    assert "marker-7f3a" not in log and POISON not in log  # logged by type and place, never the text


def test_scores_decisions_row_by_row():
    from app.scores import decisions

    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
    candidate = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    agreed, diff = decisions(reference, candidate)
    assert agreed.tolist() == [True, False] and np.allclose(diff, [0.1, 0.2])


@pytest.mark.parametrize(("serving", "max_loaded", "loaded"), [
    ("{}", 2, [4]),
    ('{"shadow": 4}', 2, [3, 4]),                              # the policy's latest is picked among the others
    ('{"traffic": {"2": 90, "3": 10}}', 2, [2, 3, 4]),         # weighted versions load whatever the policy says
    ('{"traffic": {"2": 90, "3": 0}}', 2, [2, 4]),             # weight 0: not loaded for the split
    ('{"traffic": {"1": 50, "2": 50}, "shadow": 3}', 2, [1, 2, 3, 4]),  # named versions lift the cap
    ('{"traffic": {"1": 50, "2": 50}, "shadow": 3}', 1, [1, 2, 3, 4]),
    ('{"version_policy": {"specific": [1]}, "shadow": 3}', 2, [1, 3]),
    ('{"version_policy": {"all": true}, "shadow": 2}', 2, [2, 3, 4]),  # the cap bounds the policy's others
    ('{"version_policy": {"latest": 3}, "traffic": {"1": 80, "2": 20}, "shadow": 3}', 2, [1, 2, 3, 4]),
])
def test_versions_loaded_for_traffic_and_shadow(tmp_path, serving, max_loaded, loaded):
    from app.repository import wanted_versions

    for v in (1, 2, 3, 4):
        (tmp_path / "m" / str(v)).mkdir(parents=True)
        (tmp_path / "m" / str(v) / "bertserve.json").write_text("{}")
    (tmp_path / "m" / "serving.json").write_text(serving)
    wanted = wanted_versions(tmp_path, max_loaded)["m"]
    assert list(wanted.versions) == loaded and wanted.serving is not None


@pytest.mark.parametrize(("serving", "message"), [
    ('{"traffic": {"0": 1}}', "versions are positive integers"),
    ('{"traffic": {"2": -1}}', "weights are finite numbers >= 0"),
    ('{"traffic": {"two": 1}}', "traffic"),
    ('{"shadow": 0}', "shadow"),
])
def test_a_broken_serving_json_says_why(tmp_path, serving, message):
    from app.repository import wanted_versions

    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "bertserve.json").write_text("{}")
    (tmp_path / "m" / "serving.json").write_text(serving)
    why = wanted_versions(tmp_path, 2)["m"].refused
    assert why is not None and message in why, why
