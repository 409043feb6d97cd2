"""The inference core: one classification request from texts to scores. Admission (draining, inputs per request),
the deadline, the version the router picks, its batcher, the score function, and the per-request metrics."""

from __future__ import annotations

import asyncio

import numpy as np

from app.errors import DeadlineExceeded, InvalidInput, ShuttingDown
from app.registry import Registry
from app.router import Router
from app.scores import ScoreFunction, apply_function
from app.served import ServedModel
from app.settings import Settings


class Inference:
    def __init__(self, settings: Settings, registry: Registry, router: Router) -> None:
        self.settings = settings
        self.registry = registry
        self.router = router

    def timeout_s(self, asked_ms: float | None) -> float:
        """The request's deadline: what it asked for (or the default), within the server's bound."""
        return min(asked_ms or self.settings.request_timeout_ms, self.settings.max_request_timeout_ms) / 1000

    async def classify(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        version: int | None = None,
        truncate: bool = True,
        function: ScoreFunction = "softmax",
        timeout_s: float,
    ) -> tuple[ServedModel, np.ndarray]:
        """Scores [len(texts), labels] in label order, from the model version the router picks."""
        if self.registry.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        if len(texts) > self.settings.max_client_batch_size:
            raise InvalidInput(
                f"{len(texts)} inputs in one request; the limit is {self.settings.max_client_batch_size}"
            )
        try:
            async with asyncio.timeout(timeout_s):
                if self.registry.loading:  # e.g. a worker replacing a dead one already gets connections: wait
                    await self.registry.loaded()
                # No await between choosing the version and entering its queue, so an unload that starts
                # afterwards finds this request in the queue and waits for it.
                served = self.router.resolve(model, version)
                assert served.batcher is not None
                rows = await served.batcher.submit(texts, truncate)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f} s; the request was dropped") from None
        logits = np.stack([row for row, _ in rows])
        probabilities = apply_function(logits, "softmax")
        served.metrics.observe(probabilities, [timing for _, timing in rows])
        return served, probabilities if function == "softmax" else apply_function(logits, function)
