"""Fixtures of the integration layer (shared helpers: tests/support/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny import make_slow_model_repo


@pytest.fixture(scope="session")
def slow_model_repo(tmp_path_factory) -> Path:
    """A repository holding the slow tiny model (<repo>/slow/1), built once for the session: served with
    tests.support.servers.SLOW_ENV, one full batch holds its engine busy (start_busy_batch)."""
    return make_slow_model_repo(tmp_path_factory.mktemp("slow"))
