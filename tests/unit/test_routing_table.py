"""Traffic tables the server cannot honour (issue 21), on the tiny model's real sessions through the real app
in-process: the issue's 80/20 canary with a shadow under the default cap, a weighted version missing or failing,
a malformed serving.json, a bad new table while a good one is in force; readiness that names a model and a cause
code but no path; a removed broken model that no longer holds readiness; a misspelt BERTSERVE_DEFAULT_MODEL;
admin load of unknown names retaining nothing; admin unload saying which worker it acted on."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from app import metrics
from app.errors import ModelNotFound
from tests.support.apps import TEXTS, App, write_serving
from tests.support.metrics import metric

ISSUE_TABLE = '{"version_policy": {"latest": 3}, "traffic": {"1": 80, "2": 20}, "shadow": 3}'


def repo_of(tmp_path: Path, tiny_model_repo: Path, versions: tuple[int, ...], serving: str | None) -> Path:
    repo = tmp_path / "repo"
    for v in versions:
        shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / str(v))
    if serving is not None:
        write_serving(repo, serving)
    return repo


def refused_gauge(model: str = "tiny") -> float:
    return metric(metrics.render()[0].decode(), "bertserve_routing_table_refused", model=model)


async def state(app: App) -> dict:
    """What each of the four places says: readiness (open), the model listing, the metric (the log: caplog)."""
    ready = await app.client.get("/health/ready")
    v2 = await app.client.get("/v2/health/ready")
    listed = (await app.client.get("/models/tiny")).json()
    model_ready = await app.client.get("/v2/models/tiny/ready")
    return {"ready": ready, "v2": v2, "listed": listed, "gauge": refused_gauge(), "model_ready": model_ready}


def logged(capfd, level: str, words: str) -> list[str]:
    """The messages of the app's JSON log lines (stderr) at `level` that hold `words`."""
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if line["level"] == level and words in line["message"]]


def refusals(capfd) -> list[str]:
    return logged(capfd, "error", "traffic table of serving.json is not in force")


def test_the_issue_canary_80_20_with_a_shadow_under_the_default_cap(tmp_path, tiny_model_repo):
    """Three copies as versions 1, 2, 3, 80/20 over 1 and 2, 3 the shadow, BERTSERVE_MAX_LOADED_VERSIONS=2: the
    weighted and shadow versions lift the cap, so the table is honoured: 80/20 within 5 points over 1,000
    requests, none answered by the shadow."""
    repo = repo_of(tmp_path, tiny_model_repo, (1, 2, 3), ISSUE_TABLE)

    async def scenario():
        async with App(repo) as app:
            assert app.service.settings.max_loaded_versions == 2
            answers = await app.many(1_000)
            await app.service.inference.idle()
            return answers, await state(app)

    answers, seen = asyncio.run(scenario())
    assert Counter(r.status_code for r in answers) == {200: 1_000}
    split = Counter(r.headers["x-model-version"] for r in answers)
    assert set(split) <= {"1", "2"} and abs(split["1"] / 10 - 80) <= 5 and split["2"] / 10 <= 25, split
    assert seen["ready"].status_code == 200 and "causes" not in seen["ready"].json()
    rows = {m["version"]: m for m in seen["listed"]}
    assert {v: (m["state"], m["traffic"], m["shadow"]) for v, m in rows.items()} == {
        1: ("ready", 80.0, False), 2: ("ready", 20.0, False), 3: ("ready", 0.0, True)}
    assert rows[1]["routing"] == {"asked": {"traffic": {"1": 80.0, "2": 20.0}, "shadow": 3},
                                  "in_force": {"traffic": {"1": 80.0, "2": 20.0}, "shadow": 3}, "refused": None}
    assert rows[3]["shadow_agreement"]["compared"] > 0 and seen["gauge"] == 0


def _missing_folder(repo: Path) -> None:
    shutil.rmtree(repo / "tiny" / "1")


def _broken_onnx(repo: Path) -> None:
    (repo / "tiny" / "1" / "model.onnx").write_bytes(b"not a graph")


def _malformed(repo: Path) -> None:
    write_serving(repo, '{"traffic": {"1": 80, "2": 20}, "shadow": 3')  # cut short


@pytest.mark.parametrize(("breakage", "cause", "why", "named_status"), [
    (_missing_folder, "table_refused", "version 1 has no folder in the repository", 200),
    (_broken_onnx, "table_refused", "version 1 failed (load_failed): ", 200),
    (_malformed, "bad_serving_json", "serving.json: (root): ", 503),  # the file cannot say what to load
])
def test_at_start_a_table_that_cannot_be_served_leaves_the_model_not_ready(
        tmp_path, tiny_model_repo, capfd, breakage, cause, why, named_status):
    """Never "the default takes everything" (3 here, or 2, the canary): the model is not ready and says why in
    the log (error, once), /models/{name} (asked, in force, why), /health/ready (a cause code, no path) and the
    metric; requests naming no version are refused (503), a named ready version still answers."""
    repo = repo_of(tmp_path, tiny_model_repo, (1, 2, 3), ISSUE_TABLE)
    breakage(repo)

    async def scenario():
        async with App(repo) as app:
            unnamed = [await app.predict(t) for t in TEXTS[:20]]
            named = await app.predict(TEXTS[0], version=2)
            seen = await state(app)
            await app.service.registry.sync()  # later scans of the same files log nothing new
            await app.service.registry.sync()
            return unnamed, named, seen

    unnamed, named, seen = asyncio.run(scenario())
    assert {r.status_code for r in unnamed} == {503} and named.status_code == named_status
    assert {r.json()["error_type"] for r in unnamed} == {"unhealthy"}
    assert seen["ready"].status_code == 503 and seen["v2"].status_code == 503
    assert seen["model_ready"].status_code in (400, 404), seen["model_ready"].text  # V2: it cannot infer unnamed
    body = seen["ready"].json()
    assert body["status"] == "not ready" and body["causes"] == {"tiny": cause}
    assert seen["v2"].json()["causes"] == {"tiny": cause}
    assert str(tmp_path) not in seen["ready"].text and str(tmp_path) not in seen["v2"].text  # no path, open route
    routing = seen["listed"][0]["routing"]
    assert routing["in_force"] is None and routing["refused"]["cause"] == cause
    assert why in routing["refused"]["reason"], routing
    assert seen["gauge"] == 1
    errors = refusals(capfd)
    assert len(errors) == 1 and cause in errors[0] and "no table is in force" in errors[0], errors


def test_a_bad_new_table_leaves_the_one_in_force(tmp_path, tiny_model_repo, capfd):
    """A good 80/20 table in force; then a table naming a version with no folder, then a malformed file: the
    80/20 split stays (and its versions stay loaded), the replica stays ready, the refusal is logged once per
    change and shown; then a good table takes over and the gauge goes back to 0."""
    repo = repo_of(tmp_path, tiny_model_repo, (1, 2), '{"traffic": {"1": 80, "2": 20}}')

    async def scenario():
        async with App(repo) as app:
            registry = app.service.registry
            write_serving(repo, '{"traffic": {"1": 50, "4": 50}}')
            await registry.sync()
            await registry.sync()
            missing = await state(app), app.service.router.traffic("tiny"), app.service.version_states("tiny")
            answers = await app.many(400)
            write_serving(repo, '{"traffic": {"1": 50, "4": 50')
            await registry.sync()
            await registry.sync()
            malformed = await state(app), app.service.router.traffic("tiny")
            write_serving(repo, '{"traffic": {"2": 100}}')
            await registry.sync()
            good = await state(app), app.service.router.traffic("tiny"), app.service.version_states("tiny")
            return missing, answers, malformed, good

    missing, answers, malformed, good = asyncio.run(scenario())
    (seen, traffic, states) = missing
    assert traffic == {1: 80.0, 2: 20.0} and states == {1: "ready", 2: "ready"}
    assert seen["ready"].status_code == 200 and seen["ready"].json()["causes"] == {"tiny": "table_refused"}
    routing = seen["listed"][0]["routing"]
    assert routing["asked"] == {"traffic": {"1": 50.0, "4": 50.0}, "shadow": None}
    assert routing["in_force"] == {"traffic": {"1": 80.0, "2": 20.0}, "shadow": None}
    assert "version 4 has no folder" in routing["refused"]["reason"] and seen["gauge"] == 1
    split = Counter(r.headers["x-model-version"] for r in answers)
    # Routing draws at random: 400 answers put version 1 at 80 % +- 2 points (one sigma); 8 points is 4 sigma, and
    # still far from the refused table's 50 %.
    assert {r.status_code for r in answers} == {200} and abs(split["1"] / 4 - 80) <= 8, split
    (seen, traffic) = malformed
    assert traffic == {1: 80.0, 2: 20.0} and seen["ready"].json()["causes"] == {"tiny": "bad_serving_json"}
    assert seen["listed"][0]["routing"]["asked"] is None and seen["gauge"] == 1
    (seen, traffic, states) = good
    assert traffic == {2: 100.0} and states == {2: "ready"} and seen["gauge"] == 0
    assert seen["ready"].status_code == 200 and "causes" not in seen["ready"].json()
    errors = refusals(capfd)
    assert len(errors) == 2 and "previous table stays in force" in errors[0], errors  # once per change


def test_readiness_names_the_model_and_a_cause_code_never_a_path(tmp_path, tiny_model_repo):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / "1")
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "broken" / "1")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    (repo / "broken" / "1" / "tokenizer.json").rename(repo / "broken" / "1" / "gone.json")
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "noonnx" / "1")
    (repo / "noonnx" / "1" / "model.onnx").write_bytes(b"garbage")

    async def scenario():
        async with App(repo) as app:
            return (await app.client.get("/health/ready"), await app.client.get("/v2/health/ready"),
                    (await app.client.get("/models")).json())

    ready, v2, listed = asyncio.run(scenario())
    assert ready.status_code == 503
    body = ready.json()
    assert body["models"] == {"tiny": {"1": "ready"}, "broken": {"1": "failed: missing_files"},
                              "noonnx": {"1": "failed: load_failed"}}
    assert body["causes"] == {"broken": "missing_files", "noonnx": "load_failed"}
    for text in (ready.text, v2.text):
        assert str(tmp_path) not in text and "tokenizer.json" not in text and "onnxruntime" not in text
    reasons = {m["name"]: m.get("reason", "") for m in listed}  # the details: on the authenticated listing
    assert str(repo / "broken" / "1" / "tokenizer.json") in reasons["broken"]
    assert "onnxruntime cannot load it" in reasons["noonnx"]


def test_a_removed_model_with_a_malformed_serving_json_no_longer_holds_readiness(tmp_path, tiny_model_repo):
    """Readiness stuck (issue 21): admin unload of such a model works, and removing its folder clears it."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / "1")
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "bad" / "1")
    (repo / "bad" / "serving.json").write_text("{not json")

    async def scenario():
        async with App(repo) as app:
            registry = app.service.registry
            at_start = app.service.readiness()
            await app.service.admin_unload("bad")  # not 404
            unloaded = app.service.readiness()
            with pytest.raises(ModelNotFound, match="bad_serving_json"):  # its serving.json still cannot be read
                await app.service.admin_load("bad")
            reloaded = app.service.readiness()
            shutil.rmtree(repo / "bad")
            await registry.sync()
            removed = app.service.readiness(), set(registry.tables), set(registry.slots)
            return at_start, unloaded, reloaded, removed

    at_start, unloaded, reloaded, (removed, tables, slots) = asyncio.run(scenario())
    assert not at_start[0] and at_start[1]["causes"] == {"bad": "bad_serving_json"}
    assert unloaded[0] and "bad" not in unloaded[1]["models"]
    assert not reloaded[0] and reloaded[1]["causes"] == {"bad": "bad_serving_json"}
    assert removed[0] and removed[1] == {"status": "ready", "models": {"tiny": {"1": "ready"}}}
    assert tables == slots == {"tiny"}


def test_a_misspelt_default_model_is_caught_when_the_repository_is_read(tmp_path, tiny_model_repo, capfd):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "tiny" / "1")
    shutil.copytree(tiny_model_repo / "tiny" / "1", repo / "other" / "1")

    async def scenario():
        async with App(repo, default_model="tnyi") as app:
            return app.service.readiness(), (await app.client.get("/models")).json()

    (ready, detail), listed = asyncio.run(scenario())
    assert not ready and detail["causes"] == {"tnyi": "unknown_default_model"}
    assert {"name": "tnyi", "state": "failed", "cause": "unknown_default_model",
            "reason": "BERTSERVE_DEFAULT_MODEL names no model of the repository"} in listed
    assert len(logged(capfd, "warning", "BERTSERVE_DEFAULT_MODEL='tnyi' names no model")) == 1


def test_admin_load_of_unknown_names_retains_nothing(tiny_model_repo):
    """1,000 admin loads of distinct unknown names: each 404, and no registry, router or metric entry is left."""
    def retained(app: App) -> tuple:
        registry, router = app.service.registry, app.service.router
        return (len(registry.slots), len(registry.tables), len(registry.unloaded_by_admin), len(router._routing),
                len(router._known), len(metrics.ROUTING_TABLE_REFUSED._metrics), len(metrics.QUEUE_SIZE._metrics))

    async def scenario():
        async with App(tiny_model_repo, admin_without_key=True) as app:
            before = retained(app)
            answers = [await app.client.post(f"/admin/models/nope-{k}/load") for k in range(50)]
            for k in range(950):
                with pytest.raises(ModelNotFound):
                    await app.service.admin_load(f"unknown-{k}")
            unload = await app.client.post("/admin/models/nope-1/unload")
            return before, retained(app), answers, unload

    before, after, answers, unload = asyncio.run(scenario())
    assert {r.status_code for r in answers} == {404} and unload.status_code == 404
    assert after == before


def test_admin_unload_says_it_acted_on_this_worker_only(tiny_model_repo):
    async def scenario():
        async with App(tiny_model_repo, admin_without_key=True) as app:
            return await app.client.post("/admin/models/tiny/unload")

    r = asyncio.run(scenario())
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert r.json()["scope"].startswith(f"this worker (pid {os.getpid()})")


def test_while_a_table_loads_its_first_ready_version_takes_no_unnamed_request(tmp_path, tiny_model_repo,
                                                                              monkeypatch):
    """A model published with {"1": 20, "2": 80}: version 1 (the canary) is ready before 2 loads; meanwhile it
    must not become the default that answers everything. What the router says is read as each load starts."""
    from app import registry as registry_module

    repo = repo_of(tmp_path, tiny_model_repo, (1, 2), '{"traffic": {"1": 20, "2": 80}}')
    seen: list[tuple] = []
    real = registry_module.load_model

    async def scenario():
        async with App(repo) as app:
            router = app.service.router

            def load(name, version, *args, **kwargs):
                seen.append((version, router.default_version(name), router.traffic(name)))
                return real(name, version, *args, **kwargs)

            monkeypatch.setattr(registry_module, "load_model", load)
            await app.service.admin_unload("tiny")
            await app.service.admin_load("tiny")
            return router.traffic("tiny")

    assert asyncio.run(scenario()) == {1: 20.0, 2: 80.0}
    assert seen == [(1, None, {}), (2, None, {})]


def test_a_removed_weighted_version_drains_then_its_table_no_longer_holds(tmp_path, tiny_model_repo, capfd):
    """80/20 over 1 and 2, then version 2's folder removed: it drains and unloads, then the table in force is
    dropped (logged once) and no other split is made up: requests naming no version are refused, a named one
    answers."""
    repo = repo_of(tmp_path, tiny_model_repo, (1, 2), '{"traffic": {"1": 80, "2": 20}}')

    async def scenario():
        async with App(repo) as app:
            shutil.rmtree(repo / "tiny" / "2")
            await app.service.registry.sync()
            await app.service.registry.sync()
            return (await state(app), app.service.version_states("tiny"), await app.predict(TEXTS[0]),
                    await app.predict(TEXTS[0], version=1))

    seen, states, unnamed, named = asyncio.run(scenario())
    assert states == {1: "ready"} and unnamed.status_code == 503 and named.status_code == 200
    routing = seen["listed"][0]["routing"]
    assert routing["in_force"] is None and "version 2 has no folder" in routing["refused"]["reason"]
    assert seen["ready"].status_code == 503 and seen["ready"].json()["causes"] == {"tiny": "table_refused"}
    assert len(logged(capfd, "error", "version(s) [2] of the traffic table in force are gone")) == 1
