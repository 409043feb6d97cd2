"""Amplification probes, timed: `bertserve serve` (as `make run` starts it) on 127.0.0.1, default settings, then
- a 128 KiB and a 1 MiB text to /explain with max_features 256,
- 32 concurrent 1 MiB texts to /predict,
each while a bystander posts a short review to /predict one request after another. Reports per probe the
attacker's statuses and time, the bystander's latencies meanwhile (median, max, count), and the server's VmRSS
before and after. The demo model when present, else the tests' tiny model (built in a temporary folder).

    python benchmarks/abuse.py [--repository models] [--json docs/abuse.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name  # noqa: E402
from benchmarks.common import median  # noqa: E402
from benchmarks.service import Server  # noqa: E402

KIB = 1024
MIB_TEXT = 1024 * KIB - 64  # the default body limit is 1 MiB: the JSON around the text takes a few bytes
REVIEW = "This medicine worked wonders for my migraines, and the side effects were mild."
PROSE = ("I took this for three months. The first week was rough, with headaches and some nausea, but after that it "
         "settled and my mood improved a lot. My doctor adjusted the dose twice. ")


def prose(size: int) -> str:
    return (PROSE * (size // len(PROSE) + 1))[:size]


def rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


async def probe(server: Server, name: str, path: str, bodies: list[dict], timeout_s: float) -> dict:
    """Send the bodies at once; a bystander posts REVIEW to /predict in a loop until they are all answered."""
    pid = server.worker_pids()[0]
    before = rss_mb(pid)
    done = asyncio.Event()
    bystander: list[float] = []
    bystander_errors: list[int] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=timeout_s,
                                 limits=httpx.Limits(max_connections=len(bodies) + 1)) as client:
        features: list[int] = []

        async def attack(body: dict) -> tuple[int | str, float]:
            started = time.perf_counter()
            try:
                r = await client.post(path, json=body)
                status = r.status_code
                if path == "/explain" and status == 200:
                    features.append(len(r.json()["features"]))
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            return status, time.perf_counter() - started

        async def bystand() -> None:
            await asyncio.sleep(0.05)  # the attack's requests go first
            while not done.is_set():
                started = time.perf_counter()
                try:
                    r = await client.post("/predict", json={"inputs": REVIEW})
                    if r.status_code != 200:
                        bystander_errors.append(r.status_code)
                except httpx.HTTPError:
                    bystander_errors.append(0)
                bystander.append(time.perf_counter() - started)

        watcher = asyncio.create_task(bystand())
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(attack(body) for body in bodies))
        wall = time.perf_counter() - started
        done.set()
        await watcher
    statuses: dict[str, int] = {}
    for status, _ in outcomes:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "probe": name, "attacker_statuses": statuses, "attacker_s": round(wall, 3),
        "attacker_max_s": round(max(t for _, t in outcomes), 3),
        **({"features": features} if features else {}),
        "bystander_requests": len(bystander), "bystander_errors": len(bystander_errors),
        "bystander_median_ms": round(1000 * median(bystander), 1) if bystander else None,
        "bystander_max_ms": round(1000 * max(bystander), 1) if bystander else None,
        "rss_before_mb": round(before, 1), "rss_after_mb": round(rss_mb(pid), 1),
    }


def tiny_repository() -> Path:
    from tests.support.tiny import export_tiny_model, make_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="bertserve-abuse-"))
    export_tiny_model(make_tiny_checkpoint(folder / "checkpoint", "bert"), folder / "repo" / "tiny" / "1")
    return folder / "repo"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, help="default: models/ when the demo model is there, else a tiny one")
    p.add_argument("--timeout", type=float, default=300, help="client timeout per request, seconds")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    demo = ROOT / "models" / "drug-review-sentiment" / "1" / "bertserve.json"
    repository = args.repository or (ROOT / "models" if demo.is_file() else tiny_repository())
    server = Server(repository, workers=1, threads=0, env={}, log_dir=Path(tempfile.mkdtemp()))
    try:
        httpx.post(server.url + "/predict", json={"inputs": REVIEW}, timeout=60).raise_for_status()  # warm-up
        probes = [
            ("explain 128 KiB, max_features 256", "/explain", [{"inputs": prose(128 * KIB), "max_features": 256}]),
            ("explain 1 MiB, max_features 256", "/explain", [{"inputs": prose(MIB_TEXT), "max_features": 256}]),
            ("predict 32 x 1 MiB at once", "/predict", [{"inputs": prose(MIB_TEXT)}] * 32),
        ]
        results = [asyncio.run(probe(server, name, path, bodies, args.timeout)) for name, path, bodies in probes]
    finally:
        started = time.perf_counter()
        server.stop()
        stop_s = time.perf_counter() - started
    report = {"cpu": cpu_name(), "repository": str(repository), "probes": results, "sigterm_exit_s": round(stop_s, 2)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
