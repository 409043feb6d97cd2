"""Amplification on a real `bertserve serve` (tiny model, 127.0.0.1): long texts sent to /explain and /predict
keep the server's memory bounded, and a SIGTERM while such work runs lets it exit within its drain bound. Counts
(VmRSS from /proc, an exit status), no timings: the times are benchmarks/abuse.py's."""

from __future__ import annotations

import re
import signal
import subprocess
import threading

import httpx
import pytest

from tests.support.servers import post
from tests.support.texts import KIB, prose

pytestmark = pytest.mark.process

MIB_TEXT = 1024 * KIB - 64  # a 1 MiB body: the JSON around the text takes a few bytes


def _rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+) kB", open(f"/proc/{pid}/status").read()).group(1)) / 1024


def _explain(server, text: str) -> httpx.Response:
    return httpx.post(server.url + "/explain", json={"inputs": text, "max_features": 256}, timeout=120)


def test_long_texts_keep_memory_bounded(tiny_model_repo, start_server):
    server = start_server(tiny_model_repo)
    warm = prose(128 * KIB)
    assert _explain(server, warm).status_code == 200 and post(server, {"inputs": [warm] * 4}).status_code == 200
    before = _rss_mb(server.process.pid)
    for size in (128 * KIB, MIB_TEXT, MIB_TEXT):
        r = _explain(server, prose(size))
        assert r.status_code == 200 and r.json()["read"] < 4096, r.text[:200]
    for _ in range(3):
        assert post(server, {"inputs": prose(MIB_TEXT)}).status_code == 200
    growth = _rss_mb(server.process.pid) - before
    print(f"RSS {before:.0f} MB, growth {growth:.1f} MB after 3 long explanations and 3 1 MiB predictions")
    assert growth < 200, growth


def test_sigterm_during_long_explanations_exits_within_the_drain_bound(tiny_model_repo, start_server):
    """Two clients keep sending 1 MiB explanations (max_features 256); once answers are flowing, SIGTERM: the
    server exits 0, well within the generous bound (the old server went on tokenizing 257 copies of the text)."""
    server = start_server(tiny_model_repo, env={"BERTSERVE_DRAIN_TIMEOUT_S": "5"})
    text = prose(MIB_TEXT)
    answered = threading.Event()
    stop = threading.Event()
    statuses: list[int] = []

    def client():
        for _ in range(100):  # bounded; ends at the first refusal or closed connection
            if stop.is_set():
                return
            try:
                status = _explain(server, text).status_code
            except httpx.TransportError:
                return
            statuses.append(status)
            if status != 200:
                return
            answered.set()

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert answered.wait(120), server.output()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(60)  # the drain bound is 5 s: 60 is only a bound for a broken server
    except subprocess.TimeoutExpired:
        code = None
    stop.set()
    for thread in threads:
        thread.join(130)
    assert code == 0, server.output()
    assert set(statuses) <= {200, 503}, statuses
