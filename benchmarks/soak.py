"""Soak: bertserve under steady mixed load for a long while; does it keep answering, and does its memory level off?

    python benchmarks/soak.py [--duration 600] [--concurrency 32] [--invalid-every 10] [--json soak.json]

Starts `bertserve serve` as `make run` does (one worker, the server's own engine layout, default settings) on the
demo model (models/drug-review-sentiment) on 127.0.0.1, then drives it closed-loop at --concurrency keep-alive
connections with real reviews, about one request in --invalid-every invalid, in turn: malformed JSON, an empty
input, a long text read whole (`truncate: false`) with a stride past a window, an unknown model. Reports requests served, the
outcomes by kind (every status, and transport errors), and the server's RSS at the start, every minute and at
the end, with the least-squares slope of RSS over the last 5 minutes (MB/min): memory that levels off has a
slope near 0. Wrap it in `flock /tmp/bertserve-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import load_reviews  # noqa: E402
from benchmarks.service import Server  # noqa: E402

INVALID_KINDS = ("bad_json", "empty", "bad_stride", "unknown_model")
EXPECTED = {"valid": 200, "bad_json": 422, "empty": 422, "bad_stride": 422, "unknown_model": 404}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_m = sum(m for _, m in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (m - mean_m) for t, m in points) / var if var else 0.0


def cpu_name() -> str:
    model, flags = "unknown CPU", ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line
    return f"{model}, {os.cpu_count()} cores, AMX {'yes' if ' amx_bf16' in flags else 'no'}"


def request_for(kind: str, review: str, long_text: str) -> tuple[str, bytes]:
    """(kind, body) of one request of a kind."""
    if kind == "valid":
        body = {"inputs": review}
    elif kind == "bad_json":
        return kind, b'{"inputs": "' + review[:40].encode() + b'"'  # unterminated
    elif kind == "empty":
        body = {"inputs": ""}
    elif kind == "bad_stride":  # windows overlapping by more than a window holds
        body = {"inputs": long_text, "truncate": False, "stride": 100_000}
    else:
        body = {"inputs": review, "model": "no-such-model"}
    return kind, json.dumps(body).encode()


async def drive(url: str, reviews: list[str], concurrency: int, duration_s: float, invalid_every: int,
                on_tick) -> tuple[Counter, Counter]:
    outcomes: Counter = Counter()  # (kind, status or error name)
    served: Counter = Counter()
    long_text = " ".join(reviews[:40])  # thousands of tokens: over any max length
    deadline = time.monotonic() + duration_s
    rng = random.Random(0)
    counter = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.monotonic() < deadline:
            counter += 1
            if counter % invalid_every == 0:
                kind = INVALID_KINDS[(counter // invalid_every) % len(INVALID_KINDS)]
            else:
                kind = "valid"
            kind, body = request_for(kind, rng.choice(reviews), long_text)
            try:
                r = await client.post(url + "/predict", content=body, headers={"content-type": "application/json"})
                outcome = str(r.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            outcomes[kind, outcome] += 1
            served["total"] += 1

    async def ticker() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            on_tick()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(ticker(), *(worker(client) for _ in range(concurrency)))
    return outcomes, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--invalid-every", type=int, default=10, help="one request in N is invalid (default 10)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling period (default 10 s)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    reviews = load_reviews()
    log_dir = Path(tempfile.mkdtemp(prefix="bertserve-soak-"))
    server = Server(args.model_repository, workers=1, threads=0, env={"BERTSERVE_LOG_LEVEL": "info"},
                    log_dir=log_dir)
    pid = server.process.pid
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    samples.append((0.0, rss_mb(pid)))
    print(f"soak: {cpu_name()}; server pid {pid}, RSS at start {samples[0][1]:.1f} MB; "
          f"{args.duration:.0f} s at c={args.concurrency}, 1 in {args.invalid_every} invalid", flush=True)

    def on_tick() -> None:
        now = time.monotonic() - started
        if now - samples[-1][0] >= args.sample_s:
            samples.append((now, rss_mb(pid)))
            if int(samples[-1][0] // 60) != int(samples[-2][0] // 60):
                print(f"soak: {now / 60:4.1f} min RSS {samples[-1][1]:.1f} MB", flush=True)

    try:
        outcomes, served = asyncio.run(
            drive(server.url, reviews, args.concurrency, args.duration, args.invalid_every, on_tick))
        elapsed = time.monotonic() - started
        samples.append((elapsed, rss_mb(pid)))
        alive = server.process.poll() is None
    finally:
        server.stop()
    exit_code = server.process.returncode

    per_minute = {}
    for t, mb in samples:  # the first sample at or after each whole minute
        per_minute.setdefault(int(t // 60), (t, mb))
    last5 = [(t, mb) for t, mb in samples if t >= elapsed - 300]
    unexpected = {f"{k} -> {o}": n for (k, o), n in outcomes.items() if o != str(EXPECTED[k])}
    result = {
        "cpu": cpu_name(), "python": platform.python_version(), "duration_s": round(elapsed, 1),
        "concurrency": args.concurrency, "requests": served["total"],
        "requests_per_s": round(served["total"] / args.duration, 1),
        "outcomes": {f"{k} {o}": n for (k, o), n in sorted(outcomes.items())},
        "unexpected": unexpected,
        "rss_mb": {"start": round(samples[0][1], 1), **{f"{m} min": round(mb, 1) for m, (_, mb) in per_minute.items()
                                                          if m > 0}, "end": round(samples[-1][1], 1)},
        "rss_slope_last_5_min_mb_per_min": round(slope_per_min(last5), 3),
        "server_alive_at_end": alive, "server_exit_code": exit_code, "server_log": str(server.log_path),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if unexpected or not alive or exit_code != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
