"""Token classification (NER): the served token model at c=1, 32 and 64 against the raw engine on the same texts.

- raw: the engine bertserve chose for the version (GET /models: provider and artifact; a session on every core),
  running the test reviews in length-sorted batches (the best of 8, 16, 32 texts per call; a text longer than
  max_length adds its windows to its batch), each text tokenized as the server tokenizes it for a token model
  (app.tokenizer.TextTokenizer.windows with offsets, one text per call as one request makes it, the default
  stride), padded, run, its rows sliced, and its entities found as the server finds them (app.tokens.entities,
  strategy simple): engine + tokenization + aggregation, the service's own per-request work minus HTTP and
  queueing. The same without aggregation (engine + tokenization only) is reported too, and (apart, not the
  limit) smaller batches (--extra-batches, default 1 and 4: the server's autotuner may pick them). Batch-1
  latency (--b1-texts texts in arrival order, aggregation included) right before and after the c=1 point.
- service: `bertserve serve` as `make run` starts it (1 worker, the server's own engine layout, gRPC off), POST
  /predict with one review per request and `parameters.aggregation_strategy: "simple"`, driven by wrk (from a
  separate process; the Python raw-socket client when wrk is missing) closed-loop at c=1 (median latency), c=32 and
  c=64 (texts/s), the client's and the server's CPU measured, and the rest of the machine's load beside them.
- rounds alternate raw, service, raw, ..., raw; each service round is compared with the raw rounds around it.
- stages: per text, tokenization with offsets, the engine (batches of 16, sorted), aggregation, and JSON encoding
  of the entities (orjson, as the server answers), to tell where a gap comes from.

    python -m benchmarks.tokens [--repository ner-models] [--model drug-review-ner] [--duration S] [--rounds R]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name
from benchmarks.common import bracketing_ratios, load_reviews, percentile, shuffled
from benchmarks.raw import RawModel
from benchmarks.service import (
    Client,
    Server,
    cpu_seconds,
    descendants,
    ensure_wrk,
    get_json,
    machine_cpu,
    model_info,
    other_load,
)

BATCHES = (8, 16, 32)
STRATEGY = "simple"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class RawTokens:
    """The server's per-request work for a token model, minus HTTP and the batcher (see the module docstring)."""

    def __init__(self, version_dir: Path, provider: str, artifact: str | None, threads: int) -> None:
        from app.repository import TOKENIZER_FILE
        from app.settings import Settings
        from app.tokens import Vocabulary

        self.model = RawModel(version_dir, threads=threads, provider=provider, artifact=artifact)
        self.tokenizer = self.model.tokenizer
        self.vocab = Vocabulary.load(version_dir / TOKENIZER_FILE)
        self.labels = list(self.model.config.labels)
        self.stride = self.tokenizer.default_stride()
        self.cap = Settings().request_sequences_cap

    def encode(self, text: str):
        """One request's tokenization: its windows with offsets (truncate false, the token models' default)."""
        return self.tokenizer.windows([text], self.stride, self.cap, True)[0]

    def infer(self, windows: list) -> list:
        from app.tokenizer import pad

        ids, mask = pad([w.ids for w in windows], self.tokenizer.pad_id)
        logits = self.model.engine.run(ids, mask)
        return [logits[row, :len(w.ids)] for row, w in enumerate(windows)]

    def aggregate(self, text: str, encoded: list, rows: list) -> list[dict]:
        from app.tokens import entities, windows_of

        return entities(text, windows_of(encoded, rows), STRATEGY, self.labels, self.vocab, self.stride)

    def run(self, texts: list[str], aggregate: bool = True) -> list:
        encoded = [self.encode(t) for t in texts]
        rows = self.infer([w for one in encoded for w in one])
        if not aggregate:
            return rows
        out, k = [], 0
        for text, windows in zip(texts, encoded, strict=True):
            out.append(self.aggregate(text, windows, rows[k:k + len(windows)]))
            k += len(windows)
        return out

    def until(self, texts: list[str], plan: list[list[int]], offset: int, seconds: float, aggregate: bool,
              calls: int | None = None) -> dict:
        """Batches of the plan, cyclically from `offset`, for `seconds` (or exactly `calls`): texts/s, latencies."""
        latencies, done, k = [], 0, offset
        gc.collect()
        gc.disable()
        try:
            cpu = time.process_time()  # every thread of this process: the engine's pool included
            start = end = time.perf_counter()
            while (end - start < seconds) if calls is None else (k - offset < calls):
                batch = plan[k % len(plan)]
                k += 1
                t0 = time.perf_counter()
                self.run([texts[i] for i in batch], aggregate)
                end = time.perf_counter()
                latencies.append(end - t0)
                done += len(batch)
            cpu = time.process_time() - cpu
        finally:
            gc.enable()
        return {"texts_s": done / (end - start), "texts": done, "latencies_s": latencies, "next_offset": k,
                "texts_per_cpu_s": done / max(cpu, 1e-9)}


def sorted_plan(lengths: list[int], batch: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[k:k + batch] for k in range(0, len(order), batch)]


def raw_round(raw: RawTokens, texts: list[str], plans: dict[int, list[list[int]]], seconds: float,
              offsets: dict[str, int]) -> dict:
    t0 = time.perf_counter()
    own_before, machine_before = cpu_seconds(descendants(os.getpid())), machine_cpu()
    rates: dict[str, float] = {}
    per_cpu: dict[str, float] = {}
    for aggregate in (True, False):
        for batch, plan in plans.items():
            key = f"b{batch} sorted" + ("" if aggregate else " no-agg")
            result = raw.until(texts, plan, offsets.get(key, 0), seconds, aggregate)
            offsets[key] = result["next_offset"]
            rates[key] = result["texts_s"]
            per_cpu[key] = result["texts_per_cpu_s"]
            time.sleep(0.05)
    own = cpu_seconds(descendants(os.getpid())) - own_before
    # the limit: the best of the batch sizes 8/16/32 (BATCHES); smaller ones (--extra-batches) reported beside it
    main = [f"b{b} sorted" for b in BATCHES]
    best = max((k for k in rates if k in main), key=rates.get)
    best_plain = max((k for k in rates if k.removesuffix(" no-agg") in main and k.endswith("no-agg")), key=rates.get)
    best_any = max((k for k in rates if "no-agg" not in k), key=rates.get)
    return {"texts_s": rates[best], "best": best, "no_agg_texts_s": rates[best_plain], "no_agg_best": best_plain,
            "any_batch_texts_s": rates[best_any], "any_batch_best": best_any,
            "configs": {k: round(v, 1) for k, v in rates.items()},
            # texts per CPU-second of this process (a shared machine disturbs it far less than texts/s)
            "texts_per_cpu_s": max(per_cpu[k] for k in main),
            "configs_per_cpu_s": {k: round(v, 1) for k, v in per_cpu.items()},
            **other_load(machine_before, machine_cpu(), own, time.perf_counter() - t0)}


def b1_latencies(raw: RawTokens, texts: list[str], n: int, offset: int) -> list[float]:
    """Batch-1 latency, aggregation included, over n texts in arrival order: the c=1 point's comparison."""
    plan = [[(offset + k) % len(texts)] for k in range(n)]
    return raw.until(texts, plan, 0, 0.0, True, calls=n)["latencies_s"]


def stages(raw: RawTokens, texts: list[str], batch: int = 16) -> dict:
    """Microseconds per text of each stage of the raw path (every text once; engine in sorted batches)."""
    import orjson

    gc.collect()
    t0 = time.perf_counter()
    encoded = [raw.encode(t) for t in texts]
    t_tok = time.perf_counter() - t0
    plan = sorted_plan([sum(len(w.ids) for w in e) for e in encoded], batch)
    rows: list = [None] * len(texts)
    t0 = time.perf_counter()
    for b in plan:
        flat = raw.infer([w for i in b for w in encoded[i]])
        k = 0
        for i in b:
            rows[i] = flat[k:k + len(encoded[i])]
            k += len(encoded[i])
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = [raw.aggregate(t, e, r) for t, e, r in zip(texts, encoded, rows, strict=True)]
    t_agg = time.perf_counter() - t0
    t0 = time.perf_counter()
    for one in found:
        orjson.dumps(one)
    t_json = time.perf_counter() - t0
    n = len(texts)
    return {"texts": n, "windows": sum(len(e) for e in encoded), "engine_batch": batch,
            "tokenize_us": round(1e6 * t_tok / n, 1), "engine_us": round(1e6 * t_engine / n, 1),
            "aggregate_us": round(1e6 * t_agg / n, 1), "json_us": round(1e6 * t_json / n, 1),
            "entities_per_text": round(sum(map(len, found)) / n, 2)}


def write_bodies(path: Path, texts: list[str], model: str) -> Path:
    lines = [json.dumps({"model": model, "inputs": t, "parameters": {"aggregation_strategy": STRATEGY}},
                        ensure_ascii=False) for t in texts]
    path.write_bytes("\n".join(lines).encode("utf-8") + b"\n")
    return path


def check_answer(url: str, model: str, text: str, raw: RawTokens) -> dict:
    """One served answer against the raw path's entities for the same text (same words, spans, groups)."""
    import urllib.request

    body = json.dumps({"model": model, "inputs": text, "parameters": {"aggregation_strategy": STRATEGY}}).encode()
    request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        served = json.loads(response.read())
    mine = raw.run([text])[0]
    same = [(e["entity_group"], e["start"], e["end"], e["word"]) for e in served] == [
        (e["entity_group"], e["start"], e["end"], e["word"]) for e in mine]
    diff = max((abs(a["score"] - b["score"]) for a, b in zip(served, mine)), default=0.0)
    return {"entities": len(served), "same_entities": same, "max_score_diff": diff}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "ner-models")
    p.add_argument("--model", default="drug-review-ner")
    p.add_argument("--version", type=int, help="default: the highest")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per service point (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="service rounds (default 2; raw rounds = this + 1)")
    p.add_argument("--concurrency", default="1,32,64")
    p.add_argument("--raw-seconds", type=float, default=2.0,
                   help="seconds per raw configuration per round (default 2)")
    p.add_argument("--extra-batches", default="1,4",
                   help="raw batch sizes measured beside 8/16/32 and reported apart (default 1,4; '' for none)")
    p.add_argument("--b1-texts", type=int, default=150, help="texts of each raw batch-1 latency pass")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="extra BERTSERVE_* settings")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    load_start = loadavg()
    cores = len(os.sched_getaffinity(0))
    concurrency = [int(c) for c in args.concurrency.split(",")]

    from app.repository import version_dirs

    versions = dict(version_dirs(args.repository)).get(args.model)
    if not versions:
        raise SystemExit(f"tokens: no model {args.model!r} in {args.repository}")
    version, version_dir = next((v for v in versions if v[0] == args.version), versions[-1])

    texts = load_reviews()
    work = Path(tempfile.mkdtemp(prefix="bertserve-tokens-"))
    bodies = write_bodies(work / "bodies.jsonl", texts, args.model)
    wrk = ensure_wrk(install=args.client == "auto") if args.client in ("auto", "wrk") else None
    client = Client(wrk, bodies)
    log(f"{args.model} v{version}: {len(texts)} reviews; client {client.name}; load average {load_start}")

    # the engine cache in the scratch folder: the repository is only read (and the engine is chosen afresh)
    env = {"BERTSERVE_GRPC_PORT": "0", "BERTSERVE_ENGINE_CACHE": str(work / "engine-cache"),
           **dict(kv.split("=", 1) for kv in args.env)}
    server = Server(args.repository, workers=1, threads=0, env=env, log_dir=work)
    try:
        info, _ = model_info(server.url, args.model, version, tries=1)
        provider, artifact = info.get("provider", "cpu"), info.get("artifact")
        log(f"server: {provider} {artifact}, batching {info.get('batching')}; sessions "
            f"{info.get('sessions')} x {info.get('intra_op_threads')} thread(s), wide "
            f"{info.get('wide_session_threads')}")
        raw = RawTokens(version_dir, provider, artifact, cores)
        encoded = [raw.encode(t) for t in texts]
        lengths = [sum(len(w.ids) for w in e) for e in encoded]
        windows = [len(e) for e in encoded]
        extra = [int(b) for b in args.extra_batches.split(",") if b.strip()]
        plans = {b: shuffled(sorted_plan(lengths, b)) for b in sorted({*extra, *BATCHES})}
        raw.run(texts[:32])
        raw.run([max(texts, key=len)] * 2)
        check = check_answer(server.url, args.model, texts[0], raw)
        log(f"answer check: {check}")
        log("warm-up: 3 s at c=8")
        client.run(server.url, 8, 3)

        pids = server.pids()
        offsets: dict[str, int] = {}
        raw_rounds, service_rounds = [], []

        def do_raw(k: int) -> None:
            r = raw_round(raw, texts, plans, args.raw_seconds, offsets)
            raw_rounds.append(r)
            log(f"raw round {k}: {r['texts_s']:.1f} texts/s ({r['best']}), without aggregation "
                f"{r['no_agg_texts_s']:.1f} ({r['no_agg_best']}), any batch {r['any_batch_texts_s']:.1f} "
                f"({r['any_batch_best']}); other load {r['other_cpu_pct']:.0f} %, "
                f"steal {r['steal_pct']:.0f} %; load average {loadavg()}")

        for rnd in range(args.rounds):
            do_raw(rnd)
            points = {}
            for c in concurrency:
                b1 = b1_latencies(raw, texts, args.b1_texts, rnd * 997) if c == 1 else []
                point = client.run(server.url, c, args.duration, offset=(rnd * 97 + c) % len(texts),
                                   server_pids=pids)
                if c == 1:
                    b1 += b1_latencies(raw, texts, args.b1_texts, rnd * 997 + args.b1_texts)
                    point["raw_b1_p50_ms"] = percentile(b1, 50) * 1000
                point["loadavg"] = loadavg()
                points[str(c)] = point
                log(f"  round {rnd} c={c}: {point['rps']:.1f} texts/s, p50 {point['p50_ms']:.2f} ms"
                    + (f" (raw b1 p50 {point['raw_b1_p50_ms']:.2f} ms)" if c == 1 else "")
                    + f", p99 {point['p99_ms']:.2f} ms, errors {point['errors']}, client CPU "
                    f"{point['client_cpu_pct']:.0f} %, server CPU {point['server_cpu_pct']:.0f} %, other load "
                    f"{point['other_cpu_pct']:.0f} %, steal {point['steal_pct']:.0f} %")
            service_rounds.append(points)
        do_raw(args.rounds)
        try:
            _, listed = get_json(server.url + "/models")
            batches = next((m.get("batches") for m in listed if m.get("name") == args.model), None)
        except Exception:  # noqa: BLE001 - informational only
            batches = None
        log("stages ...")
        stage = stages(raw, texts)
    finally:
        server.stop()

    raw_rates = [r["texts_s"] for r in raw_rounds]
    raw_plain = [r["no_agg_texts_s"] for r in raw_rounds]
    raw_any = [r["any_batch_texts_s"] for r in raw_rounds]
    raw_per_cpu = [r["texts_per_cpu_s"] for r in raw_rounds]
    out: dict = {
        "cpu": cpu_name(), "cores": cores, "model": args.model, "version": version,
        "engine": {"provider": provider, "artifact": artifact, "quantization": info.get("quantization"),
                   "server_sessions": info.get("sessions"), "server_threads": info.get("intra_op_threads"),
                   "server_wide_threads": info.get("wide_session_threads"), "raw_threads": cores},
        "max_length": raw.model.config.max_length, "stride": raw.stride, "strategy": STRATEGY,
        "texts": len(texts), "windows": sum(windows), "texts_windowed": sum(1 for w in windows if w > 1),
        "tokens_mean": round(statistics.fmean(lengths), 1), "client": client.name, "duration_s": args.duration,
        "answer_check": check,
        "raw": {"texts_s": [round(x, 1) for x in raw_rates], "no_agg_texts_s": [round(x, 1) for x in raw_plain],
                "any_batch_texts_s": [round(x, 1) for x in raw_any],
                "texts_per_cpu_s": [round(x, 1) for x in raw_per_cpu], "rounds": raw_rounds},
        "service": {}, "ratios": {}, "ratios_no_agg": {}, "ratios_any_batch": {}, "ratios_per_cpu": {},
        "stages_per_text": stage, "batches_seen": batches,
        "loadavg_start": load_start, "loadavg_end": loadavg(),
    }
    for c in concurrency:
        rates = [r[str(c)]["rps"] for r in service_rounds]
        pts = [r[str(c)] for r in service_rounds]
        out["service"][f"c{c}"] = {
            "texts_s": [round(x, 1) for x in rates], "p50_ms": [round(p["p50_ms"], 2) for p in pts],
            "p99_ms": [round(p["p99_ms"], 2) for p in pts], "errors": sum(p["errors"] for p in pts),
            "client_cpu_pct": [round(p["client_cpu_pct"]) for p in pts],
            "server_cpu_pct": [round(p["server_cpu_pct"]) for p in pts],
            "other_cpu_pct": [round(p["other_cpu_pct"]) for p in pts],
            "steal_pct": [round(p["steal_pct"]) for p in pts], "loadavg": [p["loadavg"] for p in pts],
            "texts_per_cpu_s": [round(p["rps"] / max(p["server_cpu_pct"] / 100, 1e-9), 1) for p in pts]}
        if c == 1:
            out["service"]["c1"]["raw_b1_p50_ms"] = [round(p["raw_b1_p50_ms"], 2) for p in pts]
            out["c1_latency_ratio"] = [round(p["p50_ms"] / p["raw_b1_p50_ms"], 3) for p in pts]
        else:
            out["ratios"][f"c{c}"] = [round(x, 3) for x in bracketing_ratios(rates, raw_rates)]
            out["ratios_no_agg"][f"c{c}"] = [round(x, 3) for x in bracketing_ratios(rates, raw_plain)]
            out["ratios_any_batch"][f"c{c}"] = [round(x, 3) for x in bracketing_ratios(rates, raw_any)]
            out["ratios_per_cpu"][f"c{c}"] = [round(x, 3) for x in bracketing_ratios(
                out["service"][f"c{c}"]["texts_per_cpu_s"], raw_per_cpu)]
    out["target_0.9_met"] = {k: min(v) >= 0.9 for k, v in out["ratios"].items()}
    out["wall_s"] = round(time.perf_counter() - started)
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
