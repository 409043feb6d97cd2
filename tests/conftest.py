"""Shared fixtures: a tiny real model repository, and real `bertserve serve` processes on loopback (their helpers:
tests/support/)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import servers
from tests.support.paths import DEMO_MODEL, DEMO_REPOSITORY
from tests.support.servers import Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Lanes (pyproject.toml markers, Makefile): a fixture that starts a server process needs `process`, the demo model
# `slow`, so that `make test-fast` selects neither.
NEEDS_MARK = {"start_server": "process", "tiny_server": "process", "demo_repository": "slow"}


def pytest_collection_modifyitems(config, items):
    unmarked = [f"{item.nodeid} uses {fixture} but is not marked `{mark}`"
                for item in items for fixture, mark in NEEDS_MARK.items()
                if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(mark) is None
                and item.get_closest_marker("deploy") is None]
    if unmarked:
        raise pytest.UsageError("tests outside their lane:\n" + "\n".join(unmarked))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    servers.running_test = item  # before the item's fixtures: a module-scoped server is checked against its test too


def pytest_runtest_teardown(item):
    servers.running_test = None


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tests.support.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "bert", "bert")


@pytest.fixture(scope="session")
def tiny_model_repo(tmp_path_factory, tiny_checkpoint) -> Path:
    """A model repository with one tiny random BERT classifier, exported with optimum: <repo>/tiny/1/."""
    from tests.support.tiny import export_tiny_model

    repo = tmp_path_factory.mktemp("repo")
    export_tiny_model(tiny_checkpoint, repo / "tiny" / "1")
    return repo


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """Factory: start_server(repository, workers=1, env={...}) -> a ready Server, stopped after the test."""
    servers: list[Server] = []

    def start(repository: Path, **kwargs) -> Server:
        server = Server(repository, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_model_repo) -> Iterator[Server]:
    """One server on the tiny model shared by a test module (read-only tests)."""
    server = Server(tiny_model_repo)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    if not (DEMO_REPOSITORY / DEMO_MODEL / "1" / "bertserve.json").is_file():
        pytest.fail("the demo model is missing: `make test` builds it first (`make demo`)")
    return DEMO_REPOSITORY
