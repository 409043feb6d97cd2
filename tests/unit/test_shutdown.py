"""The SIGTERM drain's own arithmetic, on a real service (tiny model) in-process: a short bound still drains.
The drain against a real server and its clients is in tests/integration/test_reliability.py."""

from __future__ import annotations

import asyncio
import logging
import signal

from app.shutdown import GracefulShutdown
from tests.support.services import service_on


def test_a_drain_bound_under_half_a_second_still_drains(tiny_model_repo, caplog):
    """uvicorn's own shutdown used to keep a fixed 0.5 s, leaving a 0.4 s bound no drain at all (0.0 s)."""
    given: list[float] = []

    async def scenario():
        service = service_on(tiny_model_repo)
        await service.load_all()
        drain = service.drain

        async def recorded(timeout_s: float) -> int:
            given.append(timeout_s)
            return await drain(timeout_s)

        service.drain = recorded
        shutdown = GracefulShutdown(service, 0.4)
        assert shutdown.server is None and not callable(shutdown.uvicorn_handler)  # nothing is handed over
        await shutdown.run(signal.SIGTERM)
        await service.close()

    with caplog.at_level(logging.INFO, logger="bertserve"):
        asyncio.run(scenario())
    assert given and given[0] >= 0.25, given  # 0.4 s less a quarter kept for uvicorn
    assert "draining for at most 0.4 s (BERTSERVE_DRAIN_TIMEOUT_S)" in caplog.text
