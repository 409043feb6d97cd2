"""What an explanation costs next to a prediction: `bertserve serve` (as `make run` starts it) on 127.0.0.1, one
client (c=1), alternating /predict and /explain on the same review of about 100 words from the demo data set,
N times each; medians and the ratio, and how many features and sequences the explanation took.

    python benchmarks/explain_latency.py [--repository models] [-n 20] [--words 100] [--json docs/explain.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name  # noqa: E402
from benchmarks.common import load_reviews, median  # noqa: E402
from benchmarks.service import Server  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--words", type=int, default=100)
    p.add_argument("--max-features", type=int, default=128)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    review = min(load_reviews(), key=lambda t: abs(len(t.split()) - args.words))
    server = Server(args.repository, workers=1, threads=0, env={}, log_dir=Path(tempfile.mkdtemp()))
    try:
        timings: dict[str, list[float]] = {"predict": [], "explain": []}
        bodies = {"predict": {"inputs": review}, "explain": {"inputs": review, "max_features": args.max_features}}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for path in ("predict", "explain"):  # warm-up
                client.post("/" + path, json=bodies[path]).raise_for_status()
            for _ in range(args.n):
                for path in ("predict", "explain"):
                    started = time.perf_counter()
                    r = client.post("/" + path, json=bodies[path])
                    timings[path].append(time.perf_counter() - started)
                    r.raise_for_status()
            features = len(r.json()["features"])
    finally:
        server.stop()
    result = {
        "cpu": cpu_name(), "words": len(review.split()), "features": features, "sequences": features + 1,
        "n": args.n, "predict_ms": round(1000 * median(timings["predict"]), 1),
        "explain_ms": round(1000 * median(timings["explain"]), 1),
    }
    result["ratio"] = round(result["explain_ms"] / result["predict_ms"], 1)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
