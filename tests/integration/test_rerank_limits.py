"""Rerank requests held to the version's queue bound and the request's deadline, as /predict is: in-process
(httpx ASGITransport) on a tiny random one-logit BERT pair classifier exported with `bertserve export`. The engine
sessions are held (as a long batch would hold them; `HeldUntil`, as tests/unit/test_explain.py holds them), so a
full queue and a passed deadline are conditions, not races; once the sessions are given back the routes answer."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from app.cli import main as cli
from app.main import create_app
from app.settings import Settings
from tests.support.metrics import metric
from tests.support.sessions import HeldUntil
from tests.support.tiny import CORPUS, make_head_checkpoint

pytestmark = pytest.mark.slow

QUERY = "side effects of the treatment"
SECRET = "zqxj-client-text"  # client text that must never come back in an answer's body or headers
QUEUE = 12  # BERTSERVE_MAX_QUEUE_SIZE here
FILLER = 8  # sequences held on the engine, leaving room for 4

BODIES = {  # each route's body for these documents
    "/rerank": lambda documents, **extra: {"model": "reranker", "query": QUERY, "texts": documents, **extra},
    "/v1/rerank": lambda documents, **extra: {"model": "reranker", "query": QUERY, "documents": documents, **extra},
    "/v2/rerank": lambda documents, **extra: {"model": "reranker", "query": QUERY, "documents": documents, **extra},
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank-limits")
    checkpoint = make_head_checkpoint(root / "reranker", ["relevance"], None, 0)
    cli(["export", str(checkpoint), "--name", "reranker", "--model-repository", str(root / "repo"),
         "--quantize", "none"])
    return root / "repo"


async def until(condition, what: str, bound_s: float = 30) -> None:
    """Wait (yielding to the loop) until condition() holds, within bound_s."""
    deadline = asyncio.get_running_loop().time() + bound_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.001)


def test_a_full_queue_is_429_and_a_passed_deadline_504_on_the_rerank_routes_and_then_they_answer(repo):
    """With the sessions held and 8 of 12 queue places taken: 6 documents do not fit now, so 429 with Retry-After
    and nothing of them queued (not 422: they would fit an empty queue); 2 documents with timeout_ms 50 are queued
    and answered 504 at their deadline, leaving nothing behind. The three routes alike, counted in
    bertserve_requests_total under the reranker; once the sessions are given back they answer 200."""

    async def scenario():
        app = create_app(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, log_level="warning",
                                  max_queue_size=QUEUE, max_client_batch_size=FILLER))
        service = app.state.service
        await service.load_all()
        served = service.resolve("reranker")
        batcher = served.batcher
        held = [served._idle.get() for _ in served.engines]
        released = threading.Event()  # the low-load (all-core) session is held too, until the sessions are given back
        if served.wide is not None:
            served.wide = HeldUntil(served.wide, released)
        answers, loads = {}, {}
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://in-process") as client:
                before = (await client.get("/metrics")).text
                filler = asyncio.create_task(batcher.submit(["filler"] * FILLER))
                await until(lambda: batcher.load == FILLER, "the filler to be queued")
                for path, body in BODIES.items():
                    answers[path, 429] = await client.post(path, json=body([f"{SECRET} {k}" for k in range(6)]))
                    loads[path, 429] = batcher.load
                    answers[path, 504] = await client.post(path, json=body([SECRET, CORPUS[0]], timeout_ms=50))
                    # its sequences are released by their futures' callbacks, on the loop's next turn
                    await until(lambda: batcher.load == FILLER, "the expired request's sequences to be dropped")
                for engine in held:
                    served._idle.put(engine)
                released.set()
                await filler
                for path, body in BODIES.items():
                    answers[path, 200] = await client.post(path, json=body(CORPUS[:4]))
                await until(lambda: batcher.load == 0, "the queue to empty")
                after = (await client.get("/metrics")).text
        finally:  # a failed step must not leave the sessions held (the close would wait on them)
            if not released.is_set():
                for engine in held:
                    served._idle.put(engine)
                released.set()
            await service.close()
        return answers, loads, before, after

    answers, loads, before, after = asyncio.run(scenario())
    for path in BODIES:
        refused, late, answered = answers[path, 429], answers[path, 504], answers[path, 200]
        assert refused.status_code == 429, (path, refused.text)
        assert refused.json()["error_type"] == "overloaded" and set(refused.json()) == {"error", "error_type"}
        assert int(refused.headers["retry-after"]) >= 1
        assert loads[path, 429] == FILLER  # nothing of the refused request was queued
        assert late.status_code == 504, (path, late.text)
        assert late.json()["error_type"] == "timeout" and set(late.json()) == {"error", "error_type"}
        assert "within 0.050 s" in late.json()["error"]  # the request's own deadline, not the 30 s default
        for response in (refused, late):
            assert SECRET not in response.text and SECRET not in str(response.headers)
        assert answered.status_code == 200, (path, answered.text)
    assert len(answers["/rerank", 200].json()) == 4 and len(answers["/v2/rerank", 200].json()["results"]) == 4

    def grew(status: str, **route: str) -> float:
        name, labels = "bertserve_requests_total", {"model": "reranker", "status": status, "protocol": "http"}
        return metric(after, name, **labels, **route) - metric(before, name, **labels, **route)

    assert (grew("429"), grew("504"), grew("200")) == (3, 3, 3)
    for route in BODIES:  # each under its own route label
        assert (grew("429", route=route), grew("504", route=route), grew("200", route=route)) == (1, 1, 1)
    documents = {"model": "reranker", "kind": "scored"}  # only answered requests' documents are counted
    for route in BODIES:
        assert metric(after, "bertserve_rerank_documents_total", route=route, **documents) - metric(
            before, "bertserve_rerank_documents_total", route=route, **documents) == 4
