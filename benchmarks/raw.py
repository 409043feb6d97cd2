"""The raw engine, as the server runs it: same artifact choice (with its INT8 guard), same session options,
tokenization included.

`RawModel` wraps app.repository.read_config + app.engine.Engine + app.tokenizer.TextTokenizer + app.tokenizer.pad,
i.e. exactly what a worker's inference path does minus HTTP and the batcher. `SingleThreadPool` keeps N
processes, each with its own 1-thread session, alive across rounds (started once, idle between rounds) for the
"N processes x 1 thread" configurations. `python -m benchmarks.raw` compares the engines side by side (`compare`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import batch_plan, percentile, shuffled

# (label, engine, processes, threads per session, batch, order). Engines are the keys of `engines`: onnxruntime CPU
# rows on its preferred artifact ("cpu") are labelled as before; the others start with the engine's key ("cpu-fp32",
# "openvino") and use the one-session-on-every-core layout only.
Config = tuple[str, str, int, int, int, str]


def engines(version_dir: Path, providers: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Every raw engine of a version: key -> (provider, artifact file), each provider on each artifact it may run.
    Its preferred artifact (the one it serves when that passes the gate) goes by the provider's name ("cpu":
    onnxruntime on INT8 when published), the others by provider and precision ("cpu-fp32")."""
    from app.repository import read_config

    config = read_config(version_dir)
    out: dict[str, tuple[str, str]] = {}
    for provider in providers:
        for k, artifact in enumerate(config.artifacts_for(provider)):
            key = provider if k == 0 else f"{provider}-{artifact.precision}"
            out[key if key not in out else f"{key}-{Path(artifact.file).stem}"] = (provider, artifact.file)
    return out


def engine_key(found: dict[str, tuple[str, str]], provider: str, artifact: str | None) -> str:
    """The raw engine a server's model runs (GET /models: provider, artifact); the provider's name if none is."""
    return next((key for key, pair in found.items() if pair == (provider, artifact)), provider)


def configs(cores: int, batches: Sequence[int], procs: int, providers: Sequence[str] = ("cpu",)) -> list[Config]:
    out: list[Config] = []
    for provider in providers:  # engine keys (`engines`)
        prefix = "" if provider == "cpu" else f"{provider} "
        for batch in batches:
            for order in ("arrival", "sorted"):
                if batch == 1 and order == "sorted":
                    continue  # one text per call: the order changes nothing
                out.append((f"{prefix}1p x {cores}t b{batch} {order}", provider, 1, cores, batch, order))
    if "cpu" in providers:
        out.append(("1p x 1t b1 arrival", "cpu", 1, 1, 1, "arrival"))
        if procs > 1:
            out.append((f"{procs}p x 1t b1 arrival", "cpu", procs, 1, 1, "arrival"))
            out.append((f"{procs}p x 1t b4 sorted", "cpu", procs, 1, 4, "sorted"))
    return out


def engine_of(label: str) -> str:
    """The engine (key of `engines`) a raw configuration's label stands for."""
    return label.split(" ", 1)[0] if not label[0].isdigit() else "cpu"


class RawModel:
    def __init__(self, version_dir: Path, threads: int, provider: str = "cpu", artifact: str | None = None,
                 openvino_precision: str = "auto", guarded: bool = True) -> None:
        from app.engine import open_engine
        from app.guard import open_guard
        from app.repository import TOKENIZER_FILE, read_config
        from app.tokenizer import TextTokenizer, pad

        self.threads = threads
        self.config = read_config(version_dir)
        self.tokenizer = TextTokenizer(version_dir / TOKENIZER_FILE, self.config.max_length)
        chosen = next((a for a in self.config.artifacts if a.file == artifact), None)
        self.engine = open_engine(version_dir, self.config, provider, chosen, threads, openvino_precision)
        # As the server runs the artifact: an INT8 one's near-ties re-decided by its fp32 guard (app.guard), on this
        # model's threads; `guarded=False` measures the INT8 graph alone.
        self.guard = open_guard(version_dir, self.config, self.engine.artifact, provider, threads) if guarded else None
        self._pad = pad

    def lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self.tokenizer.encode(list(texts))]

    def run(self, texts: list[str]):
        """What a worker does per batch: tokenize, pad, run."""
        encoded = self.tokenizer.encode(texts)
        input_ids, attention_mask = self._pad([e.ids for e in encoded], self.tokenizer.pad_id)
        logits = self.engine.run(input_ids, attention_mask)
        return logits if self.guard is None else self.guard.check(logits, input_ids, attention_mask, None)[0]

    def warm(self, texts: Sequence[str]) -> None:
        for k in (1, 4, 16):
            self.run(list(texts[:k]))
        self.run([max(texts, key=len)] * 2)

    def until(self, texts: Sequence[str], plan: list[list[int]], offset: int, seconds: float,
              calls: int | None = None) -> dict:
        """Batches of the plan, cyclically from `offset`, for `seconds` (or exactly `calls` batches); sequences/s
        and per-call latencies. Time-bounded so that a round takes the same time for every configuration, and so
        that processes sharing the CPU are all busy for the whole measured time. Callers pass the next round the
        returned offset."""
        latencies, seqs, k = [], 0, offset
        start = time.perf_counter()
        end = start
        while (end - start < seconds) if calls is None else (k - offset < calls):
            batch = plan[k % len(plan)]
            k += 1
            t0 = time.perf_counter()
            self.run([texts[i] for i in batch])
            end = time.perf_counter()
            latencies.append(end - t0)
            seqs += len(batch)
        elapsed = end - start
        return {"seq_s": seqs / elapsed, "seqs": seqs, "elapsed_s": elapsed, "call_latencies_s": latencies,
                "next_offset": k}


def _worker(conn, barrier, version_dir: str, provider: str, texts: list[str]) -> None:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    model = RawModel(Path(version_dir), threads=1, provider=provider)
    model.warm(texts)
    conn.send("ready")
    offsets: dict[tuple[int, str], int] = {}
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        _, batch, order, seconds, calls, shard, shards, lengths = msg
        plan = shuffled(batch_plan(lengths, batch, order))
        key = (batch, order, shards)
        offset = offsets.get(key, shard * len(plan) // shards)
        if shards > 1:
            barrier.wait()
        result = model.until(texts, plan, offset, seconds, calls)
        offsets[key] = result.pop("next_offset")  # next round goes on where this one stopped: all texts get used
        conn.send(result)


class SingleThreadPool:
    """N processes with a 1-thread session each, started once and kept idle between measurements."""

    def __init__(self, n: int, version_dir: Path, provider: str, texts: list[str]) -> None:
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(n)
        self.conns, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, self.barrier, str(version_dir), provider, texts),
                               daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if conn.recv() != "ready":
                raise RuntimeError("raw worker failed to start")

    def measure(self, procs: int, batch: int, order: str, seconds: float, lengths: list[int],
                calls: int | None = None) -> dict:
        """`procs` of the processes run at once (the others stay idle); sequences/s summed over them. With
        `calls`, each runs exactly that many batches instead of running for `seconds`."""
        if procs != len(self.conns) and procs != 1:
            raise ValueError("measure with 1 process or all of them (they meet at one barrier)")
        used = self.conns[:procs]
        for k, conn in enumerate(used):
            conn.send(("run", batch, order, seconds, calls, k, procs, lengths))
        results = [c.recv() for c in used]
        latencies = [x for r in results for x in r["call_latencies_s"]]
        return {
            "seq_s": sum(r["seq_s"] for r in results),
            "seqs": sum(r["seqs"] for r in results),
            "elapsed_s": max(r["elapsed_s"] for r in results),
            "call_latencies_s": latencies,
        }

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()


def summarize_call(result: dict, batch: int) -> dict:
    lat = result["call_latencies_s"]
    out = {"seq_s": result["seq_s"], "seqs": result["seqs"], "elapsed_s": result["elapsed_s"]}
    if batch == 1:
        out["p50_ms"] = percentile(lat, 50) * 1000
        out["p99_ms"] = percentile(lat, 99) * 1000
    return out


# ---- engines side by side: python -m benchmarks.raw [--model DIR] ----

# (label, provider, artifact file)
ENGINES = [
    ("onnxruntime CPU INT8", "cpu", "model.int8.onnx"),
    ("onnxruntime CPU fp32", "cpu", "model.onnx"),
    ("OpenVINO (native), fp32 graph", "openvino", "model.onnx"),
]


def compare(version_dir: Path, threads: Sequence[int], batch: int, seconds: float, rounds: int,
            singles: int = 64) -> dict:
    """Each engine on the version's golden texts (real reviews for the demo), tokenization included: raw
    sequences/s in length-sorted batches of `batch`, batch-1 p50 over `singles` texts, at each thread count; decisions
    equal to the golden fp32 ones. Rounds alternate between the engines so that a shared machine's noise falls
    on all of them alike; the best round of each is kept. `seq_per_cpu_s`: sequences per second of the process's
    CPU time, which a shared machine disturbs far less than wall time (comparable between 1-thread engines; spinning
    pool threads inflate it at more threads)."""
    import numpy as np

    from app.engine import cpu_name
    from app.repository import read_golden

    golden = read_golden(version_dir, len(RawModel(version_dir, 1).config.labels))
    if golden is None:
        raise SystemExit(f"{version_dir}: no golden.json: nothing to measure agreement on")
    texts = list(golden.texts)
    reference = np.asarray(golden.probabilities).argmax(1)
    models = {(label, t): RawModel(version_dir, t, provider, artifact)
              for label, provider, artifact in ENGINES for t in threads}
    lengths = next(iter(models.values())).lengths(texts)
    sorted_plan, single = batch_plan(lengths, batch, "sorted"), [[i] for i in range(len(texts))]
    out: dict = {"cpu": cpu_name(), "texts": len(texts), "batch": batch, "rounds": rounds, "engines": {}}
    for (label, t), model in models.items():
        model.warm(texts)
        logits = np.concatenate([model.run([texts[i] for i in b]) for b in sorted_plan])
        order = [i for b in sorted_plan for i in b]
        agreement = float((logits.argmax(1) == reference[order]).mean())
        out["engines"][f"{label}, {t} thread(s)"] = {"precision": model.engine.precision,
                                                    "agreement": round(agreement, 4), "seq_s": 0.0, "p50_ms": 1e9,
                                                    "seq_per_cpu_s": 0.0}
    for k in range(rounds):
        for (label, t), model in models.items():
            row = out["engines"][f"{label}, {t} thread(s)"]
            cpu = time.process_time()
            run = model.until(texts, sorted_plan, 0, seconds)
            rate, per_cpu = run["seq_s"], run["seqs"] / (time.process_time() - cpu)
            row["seq_per_cpu_s"] = round(max(row["seq_per_cpu_s"], per_cpu), 1)
            lat = model.until(texts, single, k * singles, seconds, calls=singles)["call_latencies_s"]
            row["seq_s"] = round(max(row["seq_s"], rate), 1)
            row["p50_ms"] = round(min(row["p50_ms"], percentile(lat, 50) * 1000), 2)
            print(f"round {k + 1}: {label}, {t} thread(s): {rate:.1f} seq/s ({per_cpu:.1f} per CPU-s), batch-1 p50 "
                  f"{percentile(lat, 50) * 1000:.1f} ms", file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw engines side by side on one model version")
    parser.add_argument("--model", default="models/drug-review-sentiment/1")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(json.dumps(compare(Path(args.model), threads, args.batch, args.seconds, args.rounds), indent=1))


if __name__ == "__main__":
    main()
