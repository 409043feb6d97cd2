"""What the prediction log costs a loaded server: request throughput and latency at concurrency 32 with the log
off, on with hashed texts, and on with full texts, all to JSONL files (app.prediction_log), side by side.

Three `bertserve serve` processes (same model, same workers) run at once; rounds alternate between them (the
order rotated each round) so drift of the machine (other load, thermal) falls on all three alike; only one is
loaded at a time. The load client is benchmarks/loadgen.py in its own process (its CPU is not the server's).

    python -m benchmarks.prediction_log [--model-repository models] [--rounds 5] [--duration 8] [--workers 2]

Prints one JSON object: per mode the median over rounds of req/s, p50 and p99 (ms), every round's figures, and
the records each server wrote."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import summarize_latencies
from benchmarks.service import ROOT, Server

REVIEWS = [
    "This medicine worked wonders and I feel great after two weeks.",
    "Terrible side effects, I would never take it again; dizziness every single day.",
    "It was okay, nothing special, but no harm either. My doctor kept the dose.",
    "Best treatment I have had in years, highly recommend it to anyone with migraines.",
]
MODES = {"off": {}, "hash": {"BERTSERVE_PREDICTION_LOG_TEXT": "hash"}, "full": {"BERTSERVE_PREDICTION_LOG_TEXT": "full"}}


def round_of(server: Server, bodies: Path, concurrency: int, duration: float) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loadgen", "--port", str(server.port), "--bodies", str(bodies),
         "-c", str(concurrency), "-d", str(duration)], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    return summarize_latencies(result["latencies_s"], result["requests"], result["errors"], result["duration_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", type=Path, default=ROOT / "models")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-prediction-log-"))
    bodies = work / "bodies.jsonl"
    bodies.write_text("".join(json.dumps({"inputs": f"{text} ({k})"}) + "\n"
                              for k in range(64) for text in REVIEWS))
    servers: dict[str, Server] = {}
    try:
        for mode, env in MODES.items():
            if mode != "off":
                env = env | {"BERTSERVE_PREDICTION_LOG_DIR": str(work / mode)}
            servers[mode] = Server(args.model_repository, args.workers, 0, env | {"BERTSERVE_POLL_INTERVAL_S": "0"},
                                   work)
        for server in servers.values():  # warm every worker before measuring
            round_of(server, bodies, args.concurrency, 2.0)
        rounds: dict[str, list[dict]] = {mode: [] for mode in MODES}
        order = list(MODES)
        for r in range(args.rounds):
            for mode in order[r % len(order):] + order[:r % len(order)]:
                rounds[mode].append(round_of(servers[mode], bodies, args.concurrency, args.duration))
    finally:
        for server in servers.values():
            server.stop()
    written = {mode: sum(len(f.read_text().splitlines()) for f in (work / mode).glob("*.jsonl*"))
               for mode in MODES if mode != "off"}
    report = {"concurrency": args.concurrency, "workers": args.workers, "duration_s": args.duration,
              "records_written": written, "modes": {}}
    for mode, found in rounds.items():
        report["modes"][mode] = {
            "rps": statistics.median(f["rps"] for f in found),
            "p50_ms": statistics.median(f["p50_ms"] for f in found),
            "p99_ms": statistics.median(f["p99_ms"] for f in found),
            "errors": sum(f["errors"] for f in found),
            "rounds_rps": [round(f["rps"], 1) for f in found],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
