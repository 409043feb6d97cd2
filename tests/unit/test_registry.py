"""The registry in-process, on the tiny model's real sessions and batchers: no HTTP."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from app.errors import ModelNotFound
from tests.support.services import service_on


def test_load_classify_list_and_unload(tiny_model_repo):
    async def scenario():
        service = service_on(tiny_model_repo)
        assert service.readiness()[1]["status"] == "loading"
        await service.load_all()
        ready, detail = service.readiness()
        model, scores = await service.classify(["great", "awful"], timeout_s=10)
        listed = service.list_models()
        states = service.version_states("tiny")
        await service.admin_unload("tiny")
        after = service.readiness(), service.router.served
        with pytest.raises(ModelNotFound):
            service.version_states("tiny")
        await service.admin_load("tiny")
        back = service.router.resolve("tiny").version
        await service.close()
        return ready, detail, model, scores, listed, states, after, back

    ready, detail, model, scores, listed, states, after, back = asyncio.run(scenario())
    assert ready and detail == {"status": "ready", "models": {"tiny": {"1": "ready"}}}
    assert (model.name, model.version) == ("tiny", 1) and scores.shape == (2, 3)
    assert abs(scores.sum(axis=1) - 1).max() < 1e-5
    assert [(m["name"], m["version"], m["state"], m["default"]) for m in listed] == [("tiny", 1, "ready", True)]
    assert states == {1: "ready"}
    (ready_after, detail_after), served_after = after
    assert not ready_after and detail_after["models"] == {} and served_after == set()
    assert back == 1


def test_a_failed_version_beside_a_serving_one_keeps_it_serving(tiny_model_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    (repo / "tiny" / "2" / "model.onnx").write_bytes(b"broken")
    (repo / "tiny" / "serving.json").write_text('{"version_policy": {"all": true}}')

    async def scenario():
        service = service_on(repo)
        await service.load_all()
        result = service.readiness(), service.version_states("tiny"), service.router.resolve("tiny").version
        await service.close()
        return result

    (ready, detail), states, serving = asyncio.run(scenario())
    assert ready and states == {1: "ready", 2: "failed"} and serving == 1
    assert detail["models"]["tiny"]["2"].startswith("failed: ")
