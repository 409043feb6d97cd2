"""Fallback load client when wrk is missing: closed-loop HTTP/1.1 keep-alive over raw asyncio sockets.

Run as its own process (the benchmark measures its CPU):
    python benchmarks/loadgen.py --host 127.0.0.1 --port 8000 --path /predict --bodies FILE -c 32 -d 10
Each of the c connections sends one request, waits for the whole answer, sends the next. Only answers that
arrive before the deadline count. Prints one JSON object: requests, errors (non-2xx or I/O), duration_s,
latencies_s (every one, for exact percentiles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, Content-Length and keep-alive of a response head (status line + headers, no final CRLF)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    status = int(parts[1])
    length, keep_alive = -1, parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection":
            keep_alive = value.strip().lower() != b"close"
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            raise ValueError("chunked responses are not supported by this client")
    if length < 0:
        raise ValueError("response without Content-Length")
    return status, length, keep_alive


def build_requests(host: str, port: int, path: str, bodies: list[bytes], authorization: str | None = None
                   ) -> list[bytes]:
    extra = f"Authorization: {authorization}\r\n".encode() if authorization else b""
    return [
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
        + b"\r\nContent-Type: application/json\r\n" + extra + b"Content-Length: " + str(len(b)).encode()
        + b"\r\n\r\n" + b
        for b in bodies
    ]


async def _connection(host, port, requests, start_index, deadline, latencies, counts) -> None:
    reader = writer = None
    k = start_index
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)  # asyncio sets TCP_NODELAY
        request = requests[k % len(requests)]
        k += 1
        t0 = time.perf_counter()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status, length, keep_alive = parse_head(head[:-4])
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
            writer.close()
            writer = None
            continue
        t1 = time.perf_counter()
        if t1 <= deadline:
            counts["requests"] += 1
            latencies.append(t1 - t0)
            if not 200 <= status < 300:
                counts["errors"] += 1
        if not keep_alive:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def run(host: str, port: int, path: str, bodies: list[bytes], concurrency: int, duration: float,
              offset: int = 0, authorization: str | None = None) -> dict:
    requests = build_requests(host, port, path, bodies, authorization)
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    start = time.perf_counter()
    deadline = start + duration
    step = max(1, len(requests) // concurrency)
    await asyncio.gather(*(
        _connection(host, port, requests, offset + c * step, deadline, latencies, counts)
        for c in range(concurrency)
    ))
    return {"requests": counts["requests"], "errors": counts["errors"], "duration_s": duration,
            "latencies_s": latencies}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/predict")
    p.add_argument("--bodies", required=True, help="File with one JSON request body per line.")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--authorization", help="Authorization header value, e.g. 'Bearer KEY'.")
    args = p.parse_args()
    with open(args.bodies, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    try:
        import uvloop  # the cheapest event loop there is, when installed (uvicorn[standard] brings it)

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args.host, args.port, args.path, bodies, args.concurrency, args.duration, args.offset,
                        args.authorization))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
