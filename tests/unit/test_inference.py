"""The inference core in-process, on the tiny model's real sessions and batchers: admission, the deadline, draining.
No HTTP."""

from __future__ import annotations

import asyncio

from app.errors import DeadlineExceeded, InvalidInput, ShuttingDown
from app.service import Service
from app.settings import Settings
from tests.support.services import service_on


def test_inference_admission_and_deadline(tiny_model_repo):
    async def scenario():
        service = service_on(tiny_model_repo, max_client_batch_size=2)
        await service.load_all()
        outcomes = []
        for call in (
            lambda: service.classify(["a", "b", "c"], timeout_s=10),  # more inputs than allowed
            lambda: service.classify(["a"], timeout_s=1e-9),  # a deadline nothing can meet
        ):
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - the kind of error is what is checked
                outcomes.append(exc)
        await service.drain(1.0)
        try:
            await service.classify(["a"], timeout_s=10)
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)
        await service.close()
        return outcomes

    too_many, late, draining = asyncio.run(scenario())
    assert isinstance(too_many, InvalidInput) and "3 inputs in one request; the limit is 2" in str(too_many)
    assert isinstance(late, DeadlineExceeded) and isinstance(draining, ShuttingDown)


def test_the_deadline_a_request_asks_for_is_bounded():
    inference = Service(Settings(request_timeout_ms=30_000, max_request_timeout_ms=60_000)).inference
    assert inference.timeout_s(None) == 30.0 and inference.timeout_s(5_000) == 5.0 and inference.timeout_s(1e9) == 60.0


def test_the_prepare_hook_and_the_queue_bound_hold_for_every_caller(tiny_model_repo):
    """One hook (`prepare`: rerank's head check, explain's variants) runs once the version is chosen and may refuse
    it before anything is queued; a submission that could never fit the queue is a 422 (InvalidInput) whoever
    sends it — classify with its own input limit (rerank's), an explanation — never a 429."""
    async def refuse(served, texts):
        raise InvalidInput(f"not this one: {served.name}")

    async def scenario():
        service = service_on(tiny_model_repo, max_queue_size=4, max_client_batch_size=4)
        await service.load_all()
        outcomes = []
        for call in (
            lambda: service.classify(["a"], timeout_s=10, prepare=refuse),
            lambda: service.classify(["a"] * 5, timeout_s=10, max_inputs=8),
            lambda: service.explain("one two three four", max_features=4, timeout_s=10),  # 1 + 4 sequences
        ):
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - the kind of error is what is checked
                outcomes.append(exc)
        held = service.resolve("tiny").batcher.load
        await service.close()
        return outcomes, held

    (refused, classify, explain), held = asyncio.run(scenario())
    assert isinstance(refused, InvalidInput) and str(refused) == "not this one: tiny"
    for exc in (classify, explain):
        assert isinstance(exc, InvalidInput) and "over the queue limit of 4" in str(exc), exc
    assert "needs 5 sequences" in str(classify) and "needs 5 sequences" in str(explain)
    assert held == 0  # nothing was queued
