"""bertserve benchmark: the raw engine limit and the served model, measured in one run, alternating.

    python benchmarks/bench.py [--model-repository models] [--model drug-review-sentiment] [--duration 8]
                               [--servers 2x1,1x2] [--concurrency 1,8,32,64] [--rounds 3] [--url URL] ...

1. Raw engines: every CPU engine this machine has on each artifact it may run (onnxruntime CPU on the INT8 artifact
   and on the fp32 one; OpenVINO's own runtime on the fp32 one), through app.engine + app.tokenizer on real review
   texts, tokenization included: batch sizes 1..64 in arrival order and length-sorted with intra-op threads = cores; for
   onnxruntime CPU also 1 process x 1 thread at batch 1 and N processes x 1 thread (batch 1, batch 4 sorted). The
   raw limit is the best sequences/s of any of them: the best engine's.
2. Service: `bertserve serve` subprocesses on 127.0.0.1 (one per --servers entry: WORKERSxTHREADS, THREADS 0 for
   the server's own layout as `make run` has it; `plain` for benchmarks/plain_server.py, FastAPI + onnxruntime INT8
   on 2 uvloop workers x 1 thread; all started before measuring, idle while another is measured), or --url, driven
   by wrk (installed from Debian when missing, else a Python raw-socket client) from a separate process, closed
   loop at each concurrency for --duration s.
3. Rounds alternate: raw, service(s), raw, service(s), ..., raw; each service round is compared with the raw
   rounds just before and after it (this machine's speed drifts minute to minute).
4. Writes docs/benchmarks.md and docs/benchmarks.png (and --json, the raw results), with each engine's limit and
   each service's best rate as a share of the CPU's peak arithmetic (benchmarks/utilisation.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import raw, report, utilisation
from benchmarks.common import batch_plan, load_reviews, padded_tokens, percentile, shuffled, write_bodies
from benchmarks.service import Client, Server, cpu_seconds, descendants, ensure_wrk, machine_cpu, model_info, other_load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=ROOT / "models", help="Model repository (default models).")
    p.add_argument("--model", default="drug-review-sentiment",
                   help="Model name; when absent and the repository holds one model, that one.")
    p.add_argument("--duration", type=float, default=8.0, help="Seconds per service point (default 8).")
    p.add_argument("--concurrency", default="1,8,32,64", help="Closed-loop connections per point (default 1,8,32,64).")
    p.add_argument("--rounds", type=int, default=3, help="Service rounds per server (default 3; raw rounds = this + 1).")
    p.add_argument("--servers", default="1x0,plain",
                   help="Server configurations, comma-separated (default 1x0,plain): WORKERSxTHREADS (THREADS goes to "
                        "BERTSERVE_INTRA_OP_THREADS; 0: the server's own layout), or `plain` (the plain FastAPI "
                        "server of benchmarks/plain_server.py), optionally +KEY=VALUE for that server's environment and "
                        "+src=DIR to run it from another checkout, e.g. 2x1+BERTSERVE_MAX_BATCH_SIZE=8+src=/tmp/copy.")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="Extra environment for every server, e.g. BERTSERVE_MAX_BATCH_SIZE=8 (repeatable).")
    p.add_argument("--url", help="Drive this running server instead of starting one (its settings are read from "
                                 "GET /models; --servers is then only its label, e.g. 2x1).")
    p.add_argument("--api-key", default=os.environ.get("BENCH_API_KEY"),
                   help="Bearer key for a server that requires one (--url; default $BENCH_API_KEY). Servers this "
                        "script starts run without keys.")
    p.add_argument("--plain-model", type=Path,
                   help="Version folder the plain server serves (default: the benchmarked version), e.g. an INT8 one.")
    p.add_argument("--provider", default="auto",
                   help="Raw engines and BERTSERVE_PROVIDER of the servers: auto (every CPU engine this machine has; "
                        "servers choose by measurement), cpu or openvino (default auto).")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                   help="auto: wrk, installed with apt-get when missing and possible, else the Python client.")
    p.add_argument("--raw-seconds", type=float, default=0.7,
                   help="Seconds per raw configuration per full raw round (default 0.7); each round goes on through the texts where "
                        "the last one stopped.")
    p.add_argument("--probe-configs", type=int, default=2,
                   help="Before and after every service point, re-measure this many of the best raw configurations "
                        "(of the last full raw round) for --probe-seconds each; each point is then compared with the "
                        "raw limit measured right around it. 0: compare with the full raw rounds only (default 2).")
    p.add_argument("--probe-seconds", type=float, default=0.7, help="Seconds per probe configuration (default 0.7).")
    p.add_argument("--raw-batches", default="1,2,4,8,16,32,64", help="Raw batch sizes (default 1,2,4,8,16,32,64).")
    p.add_argument("--warmup", type=float, default=2.0, help="Seconds of unrecorded load per server first (default 2).")
    p.add_argument("--output-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--output-png", type=Path, default=ROOT / "docs" / "benchmarks.png")
    p.add_argument("--json", type=Path, help="Also write every measurement as JSON here.")
    p.add_argument("--note", action="append", default=[], help="A line for the Notes section (repeatable).")
    p.add_argument("--render-only", type=Path, metavar="JSON",
                   help="Measure nothing: write the page and plot again from a --json file of an earlier run "
                        "(with this run's --note lines, if any).")
    return p.parse_args(argv)


def parse_servers(text: str) -> list[dict]:
    """`WxT[+KEY=VALUE...][+src=DIR]`, comma-separated: workers x intra-op threads, extra environment for that
    server only, and optionally another checkout to run it from (to compare a change within one run)."""
    out = []
    for part in text.split(","):
        if part.strip() == "plain":
            out.append({"workers": 2, "threads": 1, "env": {}, "src": None, "plain": True})
            continue
        head, *extras = part.strip().split("+")
        workers, sep, threads = head.strip().lower().partition("x")
        if not sep or not workers.isdigit() or not threads.isdigit() or int(workers) < 1:
            raise SystemExit(f"bench: bad server spec {part!r}: want WORKERSxTHREADS[+KEY=VALUE...][+src=DIR]")
        env, src = {}, None
        for extra in extras:
            key, eq, value = extra.partition("=")
            if not eq:
                raise SystemExit(f"bench: bad server option {extra!r} in {part!r}: want KEY=VALUE")
            if key == "src":
                src = value
            else:
                env[key] = value
        out.append({"workers": int(workers), "threads": int(threads), "env": env, "src": src, "plain": False})
    return out


def server_label(spec: dict) -> str:
    """E.g. "1 worker x 2 sessions x 1 thread": the engine layout the server derives (app.settings)."""
    from app.settings import Settings

    if spec.get("plain"):
        return "plain FastAPI + onnxruntime INT8, 2 uvloop workers x 1 thread"
    w, t = spec["workers"], spec["threads"]
    if t == 0:
        return f"{w} worker{'s' if w > 1 else ''}, the server's own engine layout (make run)" + "".join(
            f" ({k.removeprefix('BERTSERVE_')}={v})" for k, v in spec["env"].items())
    n = int(spec["env"].get("BERTSERVE_ENGINE_SESSIONS", 0))
    sessions, _ = Settings(workers=w, intra_op_threads=t, engine_sessions=n).engine_layout()
    label = f"{w} worker{'s' if w > 1 else ''} x {sessions} session{'s' if sessions > 1 else ''} x {t} thread{'s' if t > 1 else ''}"
    extras = [f"{k.removeprefix('BERTSERVE_')}={v}" for k, v in spec["env"].items()]
    if spec.get("src"):
        extras.append(f"src={Path(spec['src']).name}")
    return label + (f" ({', '.join(extras)})" if extras else "")


def find_version(repository: Path, model: str) -> tuple[str, int, Path]:
    """The model's highest version: the one a request naming no version is answered by."""
    from app.repository import version_dirs

    found = {name: versions[-1] for name, versions in version_dirs(repository).items()}
    if model in found:
        return (model, *found[model])
    if len(found) == 1:
        (only, latest), = found.items()
        print(f"bench: no model {model!r} in {repository}; using the only one there, {only!r}", flush=True)
        return (only, *latest)
    raise SystemExit(f"bench: model {model!r} not found in {repository} (found: {sorted(found)})")


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return {"cpu_model": model, "cores": len(os.sched_getaffinity(0)), "avx512_vnni": "avx512_vnni" in flags,
            "amx": "amx_bf16" in flags,
            "memory_gib": mem / 2**20}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raw_round(models: dict[str, raw.RawModel], pool: raw.SingleThreadPool | None, texts: list[str], lengths: list[int],
              configs: list[raw.Config], seconds: float, offsets: dict[str, int]) -> dict[str, dict]:
    out = {}
    for label, provider, procs, threads, batch, order in configs:
        gc.collect()
        gc.disable()
        try:
            if procs == 1 and threads == models[provider].threads:
                model = models[provider]
                result = model.until(texts, shuffled(batch_plan(lengths, batch, order)), offsets.get(label, 0), seconds)
                offsets[label] = result.pop("next_offset")
            else:
                result = pool.measure(procs, batch, order, seconds, lengths)
        finally:
            gc.enable()
        out[label] = raw.summarize_call(result, batch)
        time.sleep(0.05)  # let a spinning onnxruntime pool go idle before the next configuration
    return out


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    args = parse_args(argv)
    if args.render_only:
        results = json.loads(args.render_only.read_text())["results"]
        if args.note:
            results["meta"]["notes"] = args.note
        write_outputs(args, results)
        return
    concurrency = [int(c) for c in args.concurrency.split(",")]
    server_specs = parse_servers(args.servers)
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    if args.provider != "auto":
        extra_env.setdefault("BERTSERVE_PROVIDER", args.provider)
    name, version, version_dir = find_version(args.model_repository, args.model)
    cores = len(os.sched_getaffinity(0))

    texts = load_reviews()
    work = Path(tempfile.mkdtemp(prefix="bertserve-bench-"))
    bodies = write_bodies(work / "bodies.jsonl", texts)

    wrk = ensure_wrk(install=args.client == "auto") if args.client in ("auto", "wrk") else None
    if args.client == "wrk" and not wrk:
        raise SystemExit("bench: --client wrk but wrk is not installed")
    client = Client(wrk, bodies, args.api_key)

    n_points = len(server_specs) * args.rounds * len(concurrency)
    log(f"model {name} v{version} ({version_dir}); {len(texts)} reviews; client: {client.name}; "
        f"{n_points} service points x {args.duration:.0f} s + {args.rounds + 1} raw rounds + raw probes around every "
        f"point; work dir {work}")

    # ---- raw engines: one session with threads = cores here per engine, and single-thread onnxruntime CPU sessions
    # in their own processes
    from app.engine import available

    providers = [p for p in ("cpu", "openvino") if args.provider in ("auto", p)]
    for p in list(providers):
        if (why := available(p)) is not None:
            log(f"raw engine {p} skipped: {why}")
            providers.remove(p)
    found = raw.engines(version_dir, providers)  # key ("cpu", "cpu-fp32", "openvino") -> (provider, artifact)
    models = {key: raw.RawModel(version_dir, threads=cores, provider=p, artifact=f) for key, (p, f) in found.items()}
    model = models[next(iter(models))]
    lengths = model.lengths(texts)
    for m in models.values():
        m.warm(texts)
    procs = max(1, cores)
    pool = raw.SingleThreadPool(procs, version_dir, "cpu", texts) if "cpu" in providers else None
    configs = raw.configs(cores, [int(b) for b in args.raw_batches.split(",")], procs, list(models))

    # ---- servers, started one after another so their warm-up and autotuning do not overlap
    servers: list[Server] = []
    server_results = []
    try:
        if args.url:
            targets = [(args.url.rstrip("/"), server_specs[0], None)]
        else:
            for spec in server_specs:
                log(f"starting bertserve serve: {server_label(spec)} ...")
                if spec.get("plain"):
                    server = Server.plain(args.plain_model or version_dir, work)
                else:
                    server = Server(args.model_repository, spec["workers"], spec["threads"],
                                    {**extra_env, **spec["env"]}, work, src=Path(spec["src"]) if spec["src"] else None)
                servers.append(server)
            targets = [(s.url, spec, s) for s, spec in zip(servers, server_specs)]
        for url, spec, server in targets:
            info, choices = model_info(url, name, version, args.api_key)
            label = server_label(spec)
            # the engine that serves, as the server reports it: the c=1 point is compared with its raw batch-1 passes
            # on the session a lone request runs on (the wide one on every core, when the model has it)
            served = (raw.engine_key(found, info.get("provider", "cpu"), info.get("artifact")),
                      info.get("wide_session_threads") or info.get("intra_op_threads") or spec["threads"] or 1)
            server_results.append({"label": label, "url": url, "workers": spec["workers"], "threads": served[1],
                                   "provider": served[0], "plain": spec.get("plain", False),
                                   "env": {**extra_env, **spec["env"]}, "src": spec["src"], "batching": choices,
                                   "model": info, "concurrency": concurrency, "rounds": []})
            if served[0] not in models:
                log(f"WARNING: server serves {served[0]}, which has no raw engine here")
            log(f"{label}: batching {choices}; warm-up {args.warmup:.0f} s")
            if args.warmup > 0:
                client.run(url, 8, args.warmup)

        raw_rounds = []
        raw_offsets: dict[str, int] = {}

        raw_load = []

        def do_raw(k: int) -> None:
            t0 = time.perf_counter()
            own_before, machine_before = cpu_seconds(descendants(os.getpid())), machine_cpu()
            r = raw_round(models, pool, texts, lengths, configs, args.raw_seconds, raw_offsets)
            own = cpu_seconds(descendants(os.getpid())) - own_before
            raw_load.append(other_load(machine_before, machine_cpu(), own, time.perf_counter() - t0))
            raw_rounds.append(r)
            best = max(r, key=lambda key: r[key]["seq_s"])
            log(f"raw round {k}: limit {r[best]['seq_s']:.1f} seq/s ({best}); b1 p50 "
                + ", ".join(f"{key.split(' b1')[0]} {v['p50_ms']:.2f} ms" for key, v in r.items() if "p50_ms" in v)
                + f"; other load {raw_load[-1]['other_cpu_pct']:.0f} %, steal {raw_load[-1]['steal_pct']:.0f} %"
                + f" [{time.perf_counter() - t0:.0f} s]")

        probes: list[dict] = []

        def do_probe() -> float:
            """The best raw configurations of the last full round again, briefly: the raw limit right now."""
            last = raw_rounds[-1]
            top = sorted(last, key=lambda key: last[key]["seq_s"], reverse=True)[: args.probe_configs]
            chosen = [c for c in configs if c[0] in top]
            r = raw_round(models, pool, texts, lengths, chosen, args.probe_seconds, raw_offsets)
            probes.append({"t": time.perf_counter() - started, **{k: v["seq_s"] for k, v in r.items()}})
            return max(v["seq_s"] for v in r.values())

        def do_b1_pass(provider: str, threads: int) -> list[float]:
            """Raw batch-1 latency (tokenization included) over every text once, on the server's engine with its
            intra-op threads: the c=1 point's own comparison, taken right before and after it over the same texts."""
            plan = shuffled(batch_plan(lengths, 1, "arrival"))
            gc.collect()
            gc.disable()
            try:
                if provider in models and threads == models[provider].threads:
                    result = models[provider].until(texts, plan, 0, 0.0, calls=len(plan))
                elif provider == "cpu" and pool and threads == 1:
                    result = pool.measure(1, 1, "arrival", 0.0, lengths, calls=len(plan))
                else:
                    return []
            finally:
                gc.enable()
            return result["call_latencies_s"]

        for rnd in range(args.rounds):
            do_raw(rnd)
            for (url, _, server), result in zip(targets, server_results):
                pids = server.pids() if server else []
                workers = server.worker_pids() if server else []
                points = {}
                before = do_probe() if args.probe_configs else None
                for c in concurrency:
                    b1_before = do_b1_pass(result["provider"], result["threads"]) if c == 1 else []
                    point = client.run(url, c, args.duration, offset=(rnd * 97 + c) % len(texts), server_pids=pids,
                                       worker_pids=workers if len(workers) > 1 else [])
                    if b1_before:
                        b1 = b1_before + do_b1_pass(result["provider"], result["threads"])
                        point["raw_b1_p50_ms"] = percentile(b1, 50) * 1000
                    if args.probe_configs:
                        after = do_probe()
                        point["raw_before"], point["raw_after"] = before, after
                        point["raw_local"] = (before + after) / 2
                        before = after
                    points[str(c)] = point
                    log(f"  {result['label']} round {rnd} c={c}: {point['rps']:.1f} req/s"
                        + (f" (raw limit around it {point['raw_local']:.1f}: x{point['rps'] / point['raw_local']:.2f})"
                           if "raw_local" in point else "")
                        + (f", connections per worker {'/'.join(map(str, point['connections_per_worker']))}"
                           if point.get("connections_per_worker") else "")
                        + f", p50 {point['p50_ms']:.2f} ms"
                        + (f" (raw b1 p50 around it {point['raw_b1_p50_ms']:.2f} ms)" if "raw_b1_p50_ms" in point else "")
                        + f", p99 {point['p99_ms']:.2f} ms, errors {point['errors']}, "
                        f"client CPU {point['client_cpu_pct']:.0f} %"
                        + (f", server CPU {point['server_cpu_pct']:.0f} %, other load {point['other_cpu_pct']:.0f} %, "
                           f"steal {point['steal_pct']:.0f} %" if point.get("server_cpu_pct") else ""))
                result["rounds"].append(points)
        do_raw(args.rounds)
    finally:
        for server in servers:
            server.stop()
        if pool:
            pool.close()

    import onnxruntime
    import tokenizers

    results = {
        "meta": {
            **machine(),
            "command": "python benchmarks/bench.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
            "model": name, "version": version, "max_length": model.config.max_length,
            "engines": {p: {"artifact": m.engine.artifact.file, "precision": m.engine.precision,
                            "quantization": m.engine.artifact.numerics,
                            "guard": m.guard.margin if m.guard else None}
                        for p, m in models.items()},
            "texts": len(texts), "tokens_mean": statistics.fmean(lengths),
            "tokens_median": statistics.median(lengths), "tokens_max": max(lengths),
            "padding_overhead": {str(b): padded_tokens(batch_plan(lengths, b, "arrival"), lengths) / sum(lengths)
                                 for b in (4, 16, 64)},
            "client": client.name, "duration_s": args.duration, "rounds": args.rounds,
            "notes": args.note,
            "loadavg_start": " ".join(load_start), "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        },
        "raw": {"configs": [c[0] for c in configs], "rounds": raw_rounds, "load": raw_load, "probes": probes},
        "servers": server_results,
        # operations per sequence from each engine's graph at the texts' token lengths, and the CPU's peak
        "utilisation": measure_utilisation(version_dir, found, models, lengths),
    }
    results["meta"]["wall_s"] = time.perf_counter() - started
    summary = write_outputs(args, results)
    log(f"raw limit {summary['raw_limit']:.1f} seq/s (best: {summary['best']['config']}); raw b1 p50 "
        + ", ".join(f"{k}: {v:.2f} ms" for k, v in summary["raw_b1_p50_ms"].items()))
    for s in summary["servers"]:
        for p in s["points"]:
            log(f"{s['label']} c={p['concurrency']}: {p['rps']:.1f} req/s = {p['ratio']:.2f} x raw, p50 "
                f"{p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, errors {p['errors']}, client CPU "
                f"{p['client_cpu_pct']:.0f} %")
        log(f"{s['label']} targets: " + ", ".join(f"{k} {v['value']:.2f} {'OK' if v['ok'] else 'MISSED'}"
                                                  for k, v in s["checks"].items()))
    log(f"wrote {args.output_md} and {args.output_png} in {time.perf_counter() - started:.0f} s")


def measure_utilisation(version_dir: Path, found: dict, models: dict, lengths: list[int]) -> dict | None:
    """benchmarks/utilisation.py's figures, or None (logged) without its `bench` extra (onnx, sympy)."""
    try:
        return utilisation.describe(version_dir, found, {k: m.engine.precision for k, m in models.items()}, lengths)
    except ImportError as exc:
        log(f"utilisation not reported: {exc} (pip install -e '.[bench]')")
        return None


def write_outputs(args: argparse.Namespace, results: dict) -> dict:
    summary = report.summarize(results)
    if args.json and not args.render_only:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results, "summary": summary}, indent=1, default=str))
    args.output_md.parent.mkdir(parents=True, exist_ok=True)
    png_name = None
    if args.output_png:
        meta = results["meta"]
        try:
            engines = ", ".join(f"{p} {e['quantization']}" for p, e in report.engines_of(meta).items())
            report.plot(summary, args.output_png, f"bertserve, {meta['model']} v{meta['version']} (raw: {engines}), "
                                                  f"{meta['cpu_model']}, {meta['cores']} cores, AMX "
                                                  f"{'yes' if meta.get('amx') else 'no'}")
            png_name = os.path.relpath(args.output_png, args.output_md.parent)
        except ImportError:
            log("matplotlib is missing (pip install -e '.[bench]'): no plot")
    markdown = report.markdown(results, summary, png_name)
    if results.get("utilisation"):  # each engine's limit and each service's best rate as a share of the CPU's peak
        services = [(s["label"], s.get("provider", "cpu"), max(p["rps"] for p in s["points"]))
                    for s in summary["servers"] if s["points"]]
        markdown += ("\n## Utilisation against the CPU's peak (benchmarks/utilisation.py, docs/utilisation.md)\n\n"
                     + utilisation.markdown(results["utilisation"], summary["engine_limits"], services))
    args.output_md.write_text(markdown)
    return summary


if __name__ == "__main__":
    main()
