"""Memory of a worker, broken down (docs/memory.md): where the RSS of one `bertserve serve` worker goes.

    python -m benchmarks.memory                     # every table below (about 3-5 minutes on 2 cores)
    python -m benchmarks.memory --only parts        # one of: parts, load, serve

Three tables, each figure read from /proc/<pid>/smaps_rollup (MB): RSS (resident), PSS (resident, pages shared with
other processes split between them: what workers add up to), USS (private to the process: what stopping it frees).
- parts: one fresh process building the demo's pieces one by one, as the loader does: interpreter, imports, the app,
  the tokenizer, each onnxruntime CPU session (the per-core ones and the wide one), OpenVINO's runtime, an OpenVINO
  session, that session dropped, and malloc_trim.
- load: one fresh process per row running the loader (app.loader.load_model, autotune on, as served) for
  BERTSERVE_PROVIDER cpu and auto, on an empty engine cache (cold: every candidate measured) and on the entry that
  start wrote (warm: only the recorded engine opens), plus the figure after the loader's release step.
- serve: `bertserve serve` as `make run` starts it (1 and 2 workers, cold and warm cache), read after /health/ready
  and 64 /predict requests of real reviews: each worker, and the whole server (workers and supervisor). With
  --compare-src DIR, also the same server from another checkout and from this one with the engine pinned.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "drug-review-sentiment" / "1"


def smaps(pid: int | str = "self") -> dict[str, float]:
    """RSS, PSS and USS of a process in MB, from /proc/<pid>/smaps_rollup."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":"):
            fields[parts[0][:-1]] = int(parts[1]) / 1024
    return {"rss": round(fields["Rss"], 1), "pss": round(fields["Pss"], 1),
            "uss": round(fields["Private_Clean"] + fields["Private_Dirty"], 1)}


def _row(stage: str, **extra: object) -> None:
    print("MEMORY " + json.dumps({"stage": stage, **smaps(), **extra}), flush=True)


# ---- in a child process: stages ----


def child_parts() -> None:
    """The demo's pieces one by one (see the module docstring)."""
    _row("interpreter")
    import onnxruntime  # noqa: F401

    _row("import onnxruntime")
    import app.main

    _row("import app.main (FastAPI, tokenizers, prometheus, ...)")
    app.main.create_app()
    _row("create_app (settings, metrics, routes)")
    from app.engine import open_engine, openvino_core
    from app.loader import warm
    from app.repository import TOKENIZER_FILE, read_config
    from app.tokenizer import TextTokenizer

    config = read_config(DEMO)
    tokenizer = TextTokenizer(DEMO / TOKENIZER_FILE, config.max_length)
    _row("tokenizer")
    sessions = []
    int8 = config.artifacts_for("cpu")[0]
    for i, threads in enumerate([1, 1, 2]):
        sessions.append(open_engine(DEMO, config, "cpu", int8, threads))
        what = "wide 2-thread" if threads > 1 else f"per-core #{i + 1}"
        _row(f"+ onnxruntime CPU session, {what}, {int8.file}: opened")
        warm(sessions[-1], tokenizer)
        _row("  warmed")
    openvino_core()
    _row("+ OpenVINO runtime (import openvino, Core())")
    ov = open_engine(DEMO, config, "openvino", config.artifacts_for("openvino")[0], 2)
    _row(f"+ OpenVINO session, 2 threads, {ov.artifact.file} ({ov.precision}): compiled")
    warm(ov, tokenizer)
    _row("  warmed")
    del ov
    gc.collect()
    _row("- OpenVINO session dropped")
    from app.loader import release_freed_memory

    release_freed_memory()
    _row("malloc_trim(0)")


def child_load(provider: str) -> None:
    """The loader as the server runs it, with the engine cache of BERTSERVE_ENGINE_CACHE."""
    import app.main  # noqa: F401
    from app import loader
    from app.settings import Settings

    _row("import app.main")
    settings = Settings(provider=provider)
    trim = loader.release_freed_memory
    loader.release_freed_memory = lambda: None  # the figure before the release step first
    model = loader.load_model(DEMO.parent.name, int(DEMO.name), DEMO, settings)
    cache = model.engine_choice.get("cache", {}).get("source")
    _row("load_model, without the release step", engine=str(model.engine),
         sessions=len(model.engines) + (model.wide is not None), cache=cache,
         openvino_imported="openvino" in sys.modules)
    trim()
    _row("load_model", openvino_imported="openvino" in sys.modules)


# ---- the parent: tables ----


def run_child(args: list[str], env: dict[str, str]) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", *args], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, check=False)
    rows = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("MEMORY ")]
    if out.returncode != 0:
        raise SystemExit(f"memory: {args} failed:\n{out.stderr[-3000:]}")
    return rows


def table_parts() -> list[dict]:
    rows = run_child(["--child", "parts"], {})
    for before, row in zip([None, *rows], rows):
        row["delta_rss"] = round(row["rss"] - before["rss"], 1) if before else row["rss"]
    return rows


def table_load() -> list[dict]:
    rows = []
    for provider in ("cpu", "auto"):
        cache = Path(tempfile.mkdtemp(prefix="bertserve-memory-cache-"))
        try:
            for start in ("cold", "warm"):
                env = {"BERTSERVE_ENGINE_CACHE": str(cache)}
                for row in run_child(["--child", "load", "--provider", provider], env):
                    rows.append({"provider": provider, "start": start, **row})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return rows


def _predict(url: str, texts: list[str]) -> None:
    for text in texts:
        body = json.dumps({"inputs": text}).encode()
        request = urllib.request.Request(url + "/predict", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


# (label, workers, extra BERTSERVE_* env): `make run` as it is, 1 and 2 workers
SERVE = [("make run (auto)", 1, {}), ("make run (auto)", 2, {})]
# --compare-src: the same code paths in another checkout and here, with the engine pinned so that both serve the same
# one: OpenVINO alone and onnxruntime CPU alone. (Tables before 2026-12-08 pinned OpenVINO with auto and
# BERTSERVE_FIDELITY_MARGIN=1, which measured the INT8 candidate too; since equal decisions rank equal, that no longer
# pins it.)
COMPARE = [("BERTSERVE_PROVIDER=openvino", 1, {"BERTSERVE_PROVIDER": "openvino"}),
           ("BERTSERVE_PROVIDER=cpu", 1, {"BERTSERVE_PROVIDER": "cpu"})]


def table_serve(texts: list[str], compare_src: Path | None = None) -> list[dict]:
    from benchmarks.service import Server

    runs = [(label, workers, env, None) for label, workers, env in SERVE]
    if compare_src:
        runs += [(label, workers, env, src) for label, workers, env in COMPARE for src in (compare_src, None)]
    rows = []
    log_dir = Path(tempfile.mkdtemp(prefix="bertserve-memory-"))
    for label, workers, env, src in runs:
        cache = Path(tempfile.mkdtemp(prefix="bertserve-memory-cache-"))
        try:
            for start in ("cold", "warm"):
                server = Server(DEMO.parent.parent, workers, 0, {**env, "BERTSERVE_ENGINE_CACHE": str(cache)}, log_dir,
                                src=src)
                try:
                    _predict(server.url, texts)
                    time.sleep(1)  # let the workers finish their bookkeeping after the last answer
                    each = [smaps(pid) for pid in server.worker_pids()]
                    whole = [smaps(pid) for pid in server.pids()]
                    _, models = _get(server.url + "/models")
                    entry = next((m for m in models if m.get("name") == DEMO.parent.name), {})
                    engine = f"{entry.get('provider')} {entry.get('precision')}"
                finally:
                    server.stop()
                rows.append({"label": label, "code": str(src) if src else "this checkout", "workers": workers,
                             "start": start, "engine": engine, "per_worker": each,
                             "server": {k: round(sum(w[k] for w in whole), 1) for k in ("rss", "pss", "uss")}})
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return rows


def _get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, json.loads(response.read())


def render(results: dict) -> str:
    lines = [(f"CPU: {results['cpu']}; {results['cores']} cores; Python {results['python']}; "
             f"load average {results['load_average']}"), ""]
    if "parts" in results:
        lines += ["| stage (one process, in order) | RSS MB | PSS MB | USS MB | RSS added |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['rss']} | {r['pss']} | {r['uss']} | {r['delta_rss']:+} |"
                  for r in results["parts"]]
        lines.append("")
    if "load" in results:
        lines += ["| BERTSERVE_PROVIDER | engine cache | stage | engine | RSS MB | PSS MB | USS MB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['provider']} | {r['start']} | {r['stage']} | {r.get('engine', '')} | {r['rss']} | {r['pss']} "
                  f"| {r['uss']} |" for r in results["load"]]
        lines.append("")
    if "serve" in results:
        lines += [("| `bertserve serve` | code | workers | engine cache | engine | each worker RSS / PSS / USS MB "
                  "| whole server RSS / PSS MB |"), "|---|---|---|---|---|---|---|"]
        for r in results["serve"]:
            each = "; ".join(f"{w['rss']} / {w['pss']} / {w['uss']}" for w in r["per_worker"])
            lines.append(f"| {r['label']} | {r['code']} | {r['workers']} | {r['start']} | {r['engine']} | {each} "
                         f"| {r['server']['rss']} / {r['server']['pss']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["parts", "load", "serve"], action="append")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--compare-src", type=Path, metavar="DIR",
                        help="serve also from another checkout (e.g. `git archive HEAD app | tar -x -C DIR`), with "
                             "the engine pinned, beside this one: a before / after")
    parser.add_argument("--child", choices=["parts", "load"], help=argparse.SUPPRESS)
    parser.add_argument("--provider", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child == "parts":
        return child_parts()
    if args.child == "load":
        return child_load(args.provider)
    from app.engine import cpu_name

    wanted = args.only or ["parts", "load", "serve"]
    results: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                     "load_average": [round(x, 2) for x in os.getloadavg()]}
    if "parts" in wanted:
        results["parts"] = table_parts()
    if "load" in wanted:
        results["load"] = table_load()
    if "serve" in wanted:
        from benchmarks.common import load_reviews

        results["serve"] = table_serve(load_reviews()[:64], args.compare_src)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
