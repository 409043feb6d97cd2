"""Where a lone request's time goes: concurrency-1 latency of `bertserve serve` (as `make run` starts it) against
the raw engine's batch-1 latency on the session a lone request runs on, split into stages (issue 34 item 1).

    .venv/bin/python benchmarks/latency.py --rounds 3 --json /tmp/latency.json

Per round, over every review of the test set once, alternating so that the machine's drift hits both alike:
raw batch-1 pass, service pass (c=1, one keep-alive connection), HTTP floor pass (GET /health/live, c=1), raw again.

- **raw b1**: tokenize + pad + run on the engine the server reports (GET /models: provider, artifact, the wide
  session's threads), in this process, garbage collector off (benchmarks.raw.RawModel, as benchmarks/bench.py).
- **service**: the client is a blocking socket in this process sending prebuilt requests (no HTTP library): its
  own CPU per request is measured (time.thread_time) and reported, since it shares the 2 cores.
- **stages** (server side, means from /metrics deltas over the pass): tokenization, queue (both thread hand-offs
  in: the tokenize thread's wake-up and the inference thread's), inference (pad + run in the inference thread),
  and the handler's remainder (request duration minus those: read and parse the body, routing to the version,
  the answer's hand-off back to the event loop, encoding, accounting). What the client sees beyond the request
  duration is HTTP (uvicorn's parsing and writing, the sockets, the client); the floor of that is the
  /health/live pass.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import raw
from benchmarks.common import load_reviews, median, percentile, request_bodies
from benchmarks.loadgen import build_requests, parse_head
from benchmarks.service import Server, model_info

STAGES = {
    "request": "bertserve_request_duration_seconds",
    "tokenize": "bertserve_request_tokenization_duration_seconds",
    "queue": "bertserve_request_queue_duration_seconds",
    "inference": "bertserve_request_inference_duration_seconds",
}


class Connection:
    """One keep-alive HTTP/1.1 connection, blocking, TCP_NODELAY: the leanest client Python has."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def call(self, request: bytes) -> int:
        self.sock.sendall(request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self.buffer += self._recv()
        status, length, _ = parse_head(self.buffer[:end])
        need = end + 4 + length
        while len(self.buffer) < need:
            self.buffer += self._recv()
        self.buffer = self.buffer[need:]
        return status

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def stage_sums(url_port: int, model: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each stage histogram for the model, over every label set."""
    conn = Connection(url_port)
    try:
        conn.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while (end := conn.buffer.find(b"\r\n\r\n")) < 0:
            conn.buffer += conn._recv()
        _, length, _ = parse_head(conn.buffer[:end])
        while len(conn.buffer) < end + 4 + length:
            conn.buffer += conn._recv()
        text = conn.buffer[end + 4:end + 4 + length].decode()
    finally:
        conn.close()
    wanted = {name: stage for stage, name in STAGES.items()}
    out = {stage: [0.0, 0.0] for stage in STAGES}
    for family in text_string_to_metric_families(text):
        stage = wanted.get(family.name)
        if stage is None:
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_sum"):
                out[stage][0] += sample.value
            elif sample.name.endswith("_count"):
                out[stage][1] += sample.value
    return {stage: (s, c) for stage, (s, c) in out.items()}


def service_pass(port: int, requests: list[bytes], model: str) -> dict:
    before = stage_sums(port, model)
    conn = Connection(port)
    latencies, errors = [], 0
    cpu0 = time.thread_time()
    try:
        for request in requests:
            t0 = time.perf_counter()
            status = conn.call(request)
            latencies.append(time.perf_counter() - t0)
            errors += not 200 <= status < 300
    finally:
        conn.close()
    client_cpu = time.thread_time() - cpu0
    after = stage_sums(port, model)
    means = {}
    for stage in STAGES:
        count = after[stage][1] - before[stage][1]
        means[stage] = (after[stage][0] - before[stage][0]) / count if count else float("nan")
    return {"latencies_s": latencies, "errors": errors, "client_cpu_per_request_s": client_cpu / len(requests),
            "stage_means_s": means}


def floor_pass(port: int, count: int) -> list[float]:
    conn = Connection(port)
    request = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    out = []
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            conn.call(request)
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out


def raw_pass(model: raw.RawModel, texts: list[str]) -> list[float]:
    gc.collect()
    gc.disable()
    try:
        out = []
        for text in texts:
            t0 = time.perf_counter()
            model.run([text])
            out.append(time.perf_counter() - t0)
        return out
    finally:
        gc.enable()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="drug-review-sentiment")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="Extra server environment (e.g. BERTSERVE_PREDICTION_LOG_DIR=...).")
    parser.add_argument("--src", type=Path, help="Serve another checkout's app package (compare before/after).")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    texts = load_reviews()
    env = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="bertserve-latency-"))
    server = Server(args.model_repository, 1, 0, env, work, src=args.src)
    try:
        info, _ = model_info(server.url, args.model, None)
        version_dir = args.model_repository / args.model / str(info["version"])
        found = raw.engines(version_dir, [info.get("provider", "cpu")])
        key = raw.engine_key(found, info.get("provider", "cpu"), info.get("artifact"))
        provider, artifact = found[key]
        threads = info.get("wide_session_threads") or info.get("intra_op_threads") or os.cpu_count()
        engine = raw.RawModel(version_dir, threads, provider, artifact)
        engine.warm(texts)
        requests = build_requests("127.0.0.1", server.port, "/predict", request_bodies(texts))
        for request in requests[:20]:  # warm the server's paths
            conn = Connection(server.port)
            conn.call(request)
            conn.close()
        print(f"engine {provider} on {artifact}, {threads} thread(s); {len(texts)} reviews per pass", flush=True)
        rounds = []
        for k in range(args.rounds):
            raw_before = raw_pass(engine, texts)
            service = service_pass(server.port, requests, args.model)
            floor = floor_pass(server.port, len(texts))
            raw_after = raw_pass(engine, texts)
            b1 = raw_before + raw_after
            lat = service["latencies_s"]
            stages = service["stage_means_s"]
            row = {
                "raw_b1_p50_ms": ms(percentile(b1, 50)), "raw_b1_mean_ms": ms(sum(b1) / len(b1)),
                "service_p50_ms": ms(percentile(lat, 50)), "service_mean_ms": ms(sum(lat) / len(lat)),
                "gap_p50_ms": ms(percentile(lat, 50) - percentile(b1, 50)),
                "http_floor_p50_ms": ms(percentile(floor, 50)),
                "client_cpu_per_request_ms": ms(service["client_cpu_per_request_s"]),
                "stage_means_ms": {s: ms(v) for s, v in stages.items()},
                "handler_rest_ms": ms(stages["request"] - stages["tokenize"] - stages["queue"] - stages["inference"]),
                "outside_handler_ms": ms(sum(lat) / len(lat) - stages["request"]),
                "errors": service["errors"],
            }
            rounds.append(row)
            print(f"round {k}: service p50 {row['service_p50_ms']:.2f} ms, raw b1 p50 {row['raw_b1_p50_ms']:.2f} ms, "
                  f"gap {row['gap_p50_ms']:+.2f} ms | means: request {row['stage_means_ms']['request']:.2f}, "
                  f"tokenize {row['stage_means_ms']['tokenize']:.2f}, queue {row['stage_means_ms']['queue']:.2f}, "
                  f"inference {row['stage_means_ms']['inference']:.2f}, handler rest {row['handler_rest_ms']:.2f}, "
                  f"outside handler {row['outside_handler_ms']:.2f} (http floor p50 {row['http_floor_p50_ms']:.2f}, "
                  f"client cpu {row['client_cpu_per_request_ms']:.2f}); raw b1 mean {row['raw_b1_mean_ms']:.2f}, "
                  f"service mean {row['service_mean_ms']:.2f}; errors {row['errors']}", flush=True)
        summary = {k: median([r[k] for r in rounds]) for k in rounds[0] if isinstance(rounds[0][k], (int, float))}
        summary["stage_means_ms"] = {s: median([r["stage_means_ms"][s] for r in rounds]) for s in STAGES}
        print("median over rounds: " + json.dumps(summary), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"engine": {"provider": provider, "artifact": artifact,
                                                        "threads": threads},
                                             "rounds": rounds, "median": summary, "cpu": _cpu()}, indent=1))
    finally:
        server.stop()


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
