"""The event loop's CPU per request: `bertserve serve` (one worker) under wrk at one concurrency, and the CPU time
of the worker's main thread (the event loop: HTTP, routing, admission, answers; the tokenizer and engine threads
are others) divided by the requests answered. Several checkouts alternate in one run, e.g. before / after.

    python benchmarks/loop_cpu.py --src /tmp/old-main --src . [--repository ...] [-c 32] [-d 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_reviews, median, write_bodies  # noqa: E402
from benchmarks.service import Client, Server, ensure_wrk  # noqa: E402


def thread_cpu_s(pid: int, tid: int) -> float:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", action="append", required=True, help="A checkout to run the server from (repeatable).")
    p.add_argument("--repository", action="append", type=Path,
                   help="Model repository per --src, in the same order (default: models/ of this checkout).")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-batch-size", type=int, default=8, help="Batch cap for every checkout (default 8).")
    args = p.parse_args()
    repositories = args.repository or [ROOT / "models"] * len(args.src)
    work = Path(tempfile.mkdtemp(prefix="bertserve-loop-"))
    client = Client(ensure_wrk(install=True), write_bodies(work / "bodies.jsonl", load_reviews()))
    # The same batch caps for every checkout: autotuned ones differ from run to run, and the loop's work per request
    # follows the number of batches (one hand-back per batch).
    fixed = {"BERTSERVE_BATCH_AUTOTUNE": "false", "BERTSERVE_MAX_BATCH_SIZE": str(args.max_batch_size)}
    servers = [Server(repo, 1, 0, fixed, work, src=Path(src)) for src, repo in zip(args.src, repositories)]
    per_request: dict[str, list[float]] = {src: [] for src in args.src}
    try:
        for server in servers:
            client.run(server.url, 8, 2.0)  # warm-up
        for rnd in range(args.rounds):
            for src, server in zip(args.src, servers):
                pid = server.process.pid
                before = thread_cpu_s(pid, pid)
                point = client.run(server.url, args.concurrency, args.duration, offset=rnd * 97)
                cpu = thread_cpu_s(pid, pid) - before
                per_request[src].append(1000 * cpu / point["requests"])
                print(f"round {rnd} {src}: {point['rps']:.1f} req/s, event loop {per_request[src][-1]:.3f} ms CPU "
                      f"per request, errors {point['errors']}", flush=True)
    finally:
        for server in servers:
            server.stop()
    for src, values in per_request.items():
        print(f"{src}: median {median(values):.3f} ms of event-loop CPU per request at c={args.concurrency} "
              f"({', '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
