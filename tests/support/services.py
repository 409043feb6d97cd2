"""The registry (app.service) in-process, without the app: real sessions and batchers, no HTTP."""

from __future__ import annotations

from app.service import Service
from app.settings import Settings


def service_on(repository, **settings) -> Service:
    return Service(Settings(model_repository=repository, poll_interval_s=0, batch_autotune=False, **settings))
