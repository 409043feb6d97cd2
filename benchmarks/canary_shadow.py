"""Canary split and shadow agreement on the demo model, measured through a real `bertserve serve` (one worker).

1. Canary: the demo model published twice (versions 1 and 2), serving.json `{"traffic": {"1": 90, "2": 10}}`;
   N requests (default 2,000) of the test reviews at concurrency 32 with no version named: the share each version
   answered (X-Model-Version), the request counter by version, and stickiness (200 routing keys, each sent 3 times).
2. Shadow: version 1 the demo's INT8 artifact only, version 2 its fp32 artifact only, both on onnxruntime's CPU
   provider; serving.json `{"version_policy": {"specific": [1]}, "shadow": 2}`: the 379 labelled test reviews, one
   request each at concurrency 1, answered by INT8 and compared on fp32 after each answer; beside the export gate's
   INT8-vs-fp32 agreement on the same reviews (the demo's bertserve.json).

    python benchmarks/canary_shadow.py [--requests 2000] [--out docs/canary_shadow.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.lifecycle.data import demo_split  # noqa: E402
from benchmarks.service import Server  # noqa: E402

DEMO = ROOT / "models" / "drug-review-sentiment" / "1"


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = fields.get("flags\t\t", fields.get("flags", ""))
    name = next((v.strip() for k, v in fields.items() if k.strip() == "model name"), platform.processor())
    family = next((v.strip() for k, v in fields.items() if k.strip() == "cpu family"), "?")
    model = next((v.strip() for k, v in fields.items() if k.strip() == "model"), "?")
    return f"{name} (family {family} model {model}), AMX {'yes' if 'amx_tile' in flags else 'no'}"


def copy_version(target: Path, keep: str | None = None) -> None:
    """The demo version copied; with `keep`, only that artifact file stays (and is the only one listed)."""
    shutil.copytree(DEMO, target)
    if keep:
        config = json.loads((target / "bertserve.json").read_text())
        for artifact in config["artifacts"]:
            if artifact["file"] != keep:
                (target / artifact["file"]).unlink()
        config["artifacts"] = [a for a in config["artifacts"] if a["file"] == keep]
        (target / "bertserve.json").write_text(json.dumps(config, indent=2))


async def canary(url: str, texts: list[str], requests: int, concurrency: int = 32) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        left = list(range(requests))
        versions: Counter = Counter()
        statuses: Counter = Counter()

        async def worker() -> None:
            while left:
                r = await c.post("/predict", json={"inputs": texts[left.pop() % len(texts)]})
                statuses[r.status_code] += 1
                versions[r.headers.get("x-model-version")] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        sticky = 0
        for k in range(200):
            seen = {(await c.post("/predict", json={"inputs": texts[k % len(texts)]},
                                  headers={"x-routing-key": f"user-{k}"})).headers["x-model-version"] for _ in range(3)}
            sticky += len(seen) == 1
        listed = (await c.get("/models/drug-review-sentiment")).json()
        body = (await c.get("/metrics")).text
    counted = {line.split(" ")[0]: float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith("bertserve_requests_total{") and 'status="200"' in line}
    return {"requests": requests, "concurrency": concurrency, "statuses": dict(statuses),
            "answered_by_version": {v: n for v, n in sorted(versions.items())},
            "share_percent": {v: round(100 * n / requests, 2) for v, n in sorted(versions.items())},
            "weights": {str(m["version"]): m["traffic"] for m in listed}, "seconds": round(wall, 1),
            "routing_keys_sticky": f"{sticky}/200", "requests_total_200": counted}


async def shadow(url: str, texts: list[str]) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        for text in texts:
            r = await c.post("/predict", json={"inputs": text})
            assert r.status_code == 200 and r.headers["x-model-version"] == "1", r.text
        deadline = time.monotonic() + 120
        while True:  # the last comparisons finish after their answers
            entry = (await c.get("/models/drug-review-sentiment")).json()[1]
            record = entry["shadow_agreement"]
            if record["compared"] + sum(record["dropped"].values()) == len(texts) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        listed = (await c.get("/models/drug-review-sentiment")).json()
    return {"texts": len(texts), "concurrency": 1, "record": record,
            "serving": {k: listed[0][k] for k in ("version", "provider", "artifact", "precision")},
            "shadow": {k: listed[1][k] for k in ("version", "provider", "artifact", "precision")}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    texts, _ = demo_split("test")
    work = Path(tempfile.mkdtemp(prefix="bertserve-canary-"))
    result: dict = {"cpu": cpu_name()}

    repo = work / "canary"
    for version in ("1", "2"):
        copy_version(repo / "drug-review-sentiment" / version)
    (repo / "drug-review-sentiment" / "serving.json").write_text('{"traffic": {"1": 90, "2": 10}}')
    server = Server(repo, 1, 0, {}, work)
    try:
        result["canary"] = asyncio.run(canary(server.url, texts, args.requests))
    finally:
        server.stop()
    print(json.dumps(result["canary"], indent=1), flush=True)

    repo = work / "shadow"
    copy_version(repo / "drug-review-sentiment" / "1", keep="model.int8.onnx")
    copy_version(repo / "drug-review-sentiment" / "2", keep="model.onnx")
    (repo / "drug-review-sentiment" / "serving.json").write_text('{"version_policy": {"specific": [1]}, "shadow": 2}')
    server = Server(repo, 1, 0, {"BERTSERVE_PROVIDER": "cpu"}, work)
    try:
        result["shadow"] = asyncio.run(shadow(server.url, texts))
    finally:
        server.stop()
    gate = json.loads((DEMO / "bertserve.json").read_text())["report"]["gate"]
    chosen = next(a for a in gate["attempts"] if a["recipe"] == gate["chosen"])
    result["export_gate"] = {"recipe": gate["chosen"], "texts": gate["texts"], "agreement": chosen["agreement"],
                             "note": "INT8 vs fp32 on the same reviews, at export, batches of 8"}
    print(json.dumps({k: result[k] for k in ("cpu", "shadow", "export_gate")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
