"""gRPC vs HTTP V2 vs /predict on one `bertserve serve`: closed-loop clients (one review per request) at each
concurrency, the three protocols in turn in one run. gRPC through tritonclient.grpc.aio (one channel, calls
multiplexed), HTTP V2 and /predict through one httpx.AsyncClient with as many keep-alive connections as clients.
Figures only: requests/s and latency percentiles per protocol and concurrency (the clients share the machine).

    python benchmarks/grpc_bench.py [--repository models] [--model drug-review-sentiment] [-c 1 -c 32 -c 64] [-d 10]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc.aio as grpcclient  # noqa: E402

from benchmarks.common import load_reviews  # noqa: E402
from benchmarks.service import Server, free_port  # noqa: E402


def grpc_call(client: grpcclient.InferenceServerClient, model: str):
    async def call(text: str) -> None:
        tensor = grpcclient.InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([text], dtype=object))
        await client.infer(model, [tensor])
    return call


def http_call(client: httpx.AsyncClient, url: str, model: str, protocol: str):
    async def call(text: str) -> None:
        if protocol == "v2":
            body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
            r = await client.post(f"{url}/v2/models/{model}/infer", json=body)
        else:
            r = await client.post(f"{url}/predict", json={"inputs": text, "model": model})
        r.raise_for_status()
    return call


async def closed_loop(call, texts: list[str], concurrency: int, duration_s: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration_s

    async def worker(k: int) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await call(texts[i % len(texts)])
                latencies.append(time.perf_counter() - started)
            except Exception:  # counted, not raised: a figure, not a test
                errors += 1
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"rps": len(latencies) / wall, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "errors": errors}


async def run(server: Server, grpc_address: str, model: str, texts: list[str], levels: list[int], duration_s: float):
    async with grpcclient.InferenceServerClient(grpc_address) as grpc_client:
        for concurrency in levels:
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                calls = {"grpc": grpc_call(grpc_client, model), "v2": http_call(http, server.url, model, "v2"),
                         "predict": http_call(http, server.url, model, "predict")}
                for name, call in calls.items():
                    await closed_loop(call, texts, concurrency, min(2.0, duration_s))  # warm-up
                    point = await closed_loop(call, texts, concurrency, duration_s)
                    print(f"c={concurrency:<3} {name:<8} {point['rps']:8.1f} req/s  p50 {point['p50']:7.1f} ms  "
                          f"p99 {point['p99']:7.1f} ms  errors {point['errors']}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "models")
    p.add_argument("--model", default="drug-review-sentiment")
    p.add_argument("-c", "--concurrency", type=int, action="append")
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    grpc_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bertserve-grpc-bench-"))
    server = Server(args.repository, args.workers, 0, {"BERTSERVE_GRPC_PORT": str(grpc_port)}, work)
    print(f"bertserve {args.workers} worker(s), model {args.model}; CPU: {platform.processor() or platform.machine()}"
          f" ({__import__('os').cpu_count()} cores); client on the same machine", flush=True)
    try:
        texts = load_reviews()[:2000]
        asyncio.run(run(server, f"127.0.0.1:{grpc_port}", args.model, texts, args.concurrency or [1, 32, 64],
                        args.duration))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
