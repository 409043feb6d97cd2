"""Is the engine choice the same at every start? N real starts of `bertserve serve` (as `make run` starts it) with
1 and with 2 workers, the engine cache cleared before each start, so every start measures afresh: each worker's
engine, whether it measured or read the other's entry, the rule, and the measured medians, as a table.

    .venv/bin/python benchmarks/engine_starts.py --starts 10 --workers 1 2

The cache cleared is the one the server uses: BERTSERVE_ENGINE_CACHE if set (or --cache), else
<model repository>/.engine-cache (a read-only repository's temp folder is not handled: give --cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ENGINE = r"(\w+ on \S+ \(\w+\))"
MEASURED = re.compile(rf"model (\S+) version (\d+): engine measured now \(([\d.]+) s\) and recorded in (\S+): "
                      rf"{ENGINE}, (.+)$")
CACHED = re.compile(rf"model (\S+) version (\d+): engine from the engine cache (\S+) \(measured (\S+)\): {ENGINE}, "
                    r"(.+)$")
READY = re.compile(r"model (\S+) version (\d+) ready: ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(repository: Path, workers: int, cache: Path | None, timeout_s: float) -> dict:
    """One start: until every worker logged its model ready; the workers' engine lines and the entry's figures."""
    port, log_path = free_port(), Path(tempfile.mkstemp(prefix="engine-starts-", suffix=".log")[1])
    env = {**os.environ, "BERTSERVE_LOG_FORMAT": "json", "BERTSERVE_LOG_LEVEL": "info",
           "BERTSERVE_GRPC_PORT": str(free_port())}
    if cache is not None:
        env["BERTSERVE_ENGINE_CACHE"] = str(cache)
    started = time.monotonic()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
                                   str(workers), "--model-repository", str(repository)], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            lines: list[dict] = []
            while True:
                lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
                ready = {line["pid"] for line in lines if READY.search(line["message"])}
                if len(ready) >= workers:
                    break
                if server.poll() is not None or time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"the server did not get ready:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.2)
            seconds = time.monotonic() - started
            models = httpx.get(f"http://127.0.0.1:{port}/models", timeout=10).json()
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    per_worker = []
    entry_file = None
    for line in lines:
        if m := MEASURED.search(line["message"]):
            entry_file = m.group(4)
            per_worker.append({"pid": line["pid"], "source": "measured", "engine": m.group(5), "rule": m.group(6)})
        elif m := CACHED.search(line["message"]):
            entry_file = entry_file or m.group(3)
            per_worker.append({"pid": line["pid"], "source": "cache", "engine": m.group(5), "rule": m.group(6)})
    entry = json.loads(Path(entry_file).read_text()) if entry_file else {}
    medians = {f"{t['provider']}:{t['artifact']}": (t.get("sequences_per_s"), t.get("rounds"), t.get("agreement"))
               for t in entry.get("candidates", []) if t.get("passed")}
    log_path.unlink()
    return {"workers": workers, "seconds": round(seconds, 1), "per_worker": per_worker, "medians": medians,
            "confidence_margin": entry.get("engine_choice", {}).get("confidence_margin"),
            "measure_s": entry.get("measure_s"), "models_cache_sources": sorted(cache_sources(models))}


def cache_sources(document) -> list[str]:
    """engine.cache.source of every version /models shows (the worker that answered)."""
    if isinstance(document, list):
        return [s for item in document for s in cache_sources(item)]
    if isinstance(document, dict):
        engine = document.get("engine")
        own = [engine["cache"]["source"]] if isinstance(engine, dict) and "cache" in engine else []
        return own + [s for key, value in document.items() if key != "engine" for s in cache_sources(value)]
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--cache", type=Path, help="BERTSERVE_ENGINE_CACHE for the starts (default: the server's).")
    parser.add_argument("--timeout-s", type=float, default=300)
    args = parser.parse_args()
    cache = args.cache or (Path(os.environ["BERTSERVE_ENGINE_CACHE"]) if os.environ.get("BERTSERVE_ENGINE_CACHE")
                           else None)
    folder = cache or args.model_repository / ".engine-cache"
    results = []
    print("| workers | start | worker: source -> engine | rule | seq/s: best of each chunk [rounds] | confidence "
          "| ready s |")
    print("|---|---|---|---|---|---|---|")
    for workers in args.workers:
        for n in range(1, args.starts + 1):
            shutil.rmtree(folder, ignore_errors=True)  # every start measures afresh
            result = start(args.model_repository, workers, cache, args.timeout_s)
            results.append(result)
            who = "; ".join(f"{w['pid']}: {w['source']} -> {w['engine']}" for w in result["per_worker"])
            rules = sorted({w["rule"] for w in result["per_worker"]})
            rates = "; ".join(f"{k} {v[0]} {v[1]}" for k, v in result["medians"].items())
            print(f"| {workers} | {n} | {who} | {' / '.join(rules)} | {rates} | {result['confidence_margin']} | "
                  f"{result['seconds']} |", flush=True)
    for workers in args.workers:
        engines = [w["engine"] for r in results if r["workers"] == workers for w in r["per_worker"]]
        measured = [sum(w["source"] == "measured" for w in r["per_worker"]) for r in results if r["workers"] == workers]
        counts = {e: engines.count(e) for e in sorted(set(engines))}
        print(f"\n{workers} worker(s): {len(measured)} starts, engines {counts}, measurements per start "
              f"{sorted(set(measured))}")
    print("\nBENCH_JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
