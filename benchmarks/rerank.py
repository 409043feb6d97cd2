"""Reranking: 1 query x 100 documents of review length, on a one-logit cross-encoder (the demo reranker,
`make demo-reranker`), in one run:

- raw: the engine bertserve picks for the version (its artifact, a session on every core), scoring the 100 pairs
  in length-sorted batches (the best of 8, 16, 32 per call), tokenization included: the limit;
- bertserve: `bertserve serve` as `make run` starts it (the queue bound raised to 800: 8 x 100), POST /v2/rerank
  with the 100 documents, at c=1 (median latency) and c=8 (documents/s over all clients);
- Infinity (`infinity_emb v2 --engine optimum`, its onnxruntime engine) when `--infinity` names the Python of its
  own venv (`pip install 'infinity-emb[server,optimum]==0.0.78' torch==2.13.0 optimum==2.1.0 optimum-onnx==0.1.0
  transformers==4.57.6 'numpy<2'`, the set measured; started through benchmarks/infinity_launch.py): on the
  same graph bertserve serves (an INT8 one named `model_quantized.onnx`, the file Infinity prefers on CPU; an fp32
  one as `model.onnx`), the checkpoint's config.json, and
  the same truncation (config's max_position_embeddings set to the version's max_length: Infinity truncates there);
  its scores are compared with bertserve's on the same pairs.

    python -m benchmarks.rerank [--repository rerankers] [--model drug-review-reranker] [-n 20] [--infinity PYTHON]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name
from benchmarks.common import median
from benchmarks.raw import RawModel
from benchmarks.service import Server, free_port, model_info

DOCUMENTS = 100
CLIENTS = 8


def workload() -> tuple[str, list[str]]:
    """A condition as the query and 100 test reviews (review length), a tenth of them about it."""
    from app.lifecycle.demo_reranker import conditions_and_reviews

    rows = conditions_and_reviews("test")
    query = "Depression"
    relevant = [review for condition, review in rows if condition == query][:DOCUMENTS // 10]
    others = [review for condition, review in rows if condition != query][:DOCUMENTS - len(relevant)]
    return query, others[:45] + relevant + others[45:]


def raw_ms(version_dir: Path, provider: str, artifact: str | None, query: str, documents: list[str], rounds: int
           ) -> tuple[float, int]:
    """The best median time (ms) to score the pairs on the engine the server chose (its provider and artifact, a
    session on every core), and the batch size it used: tokenize (pairs, with type ids), pad, run."""
    from app.tokenizer import pad, pad_types

    model = RawModel(version_dir, threads=os.cpu_count() or 1, provider=provider, artifact=artifact)
    pairs = [(query, d) for d in documents]
    lengths = [len(e.ids) for e in model.tokenizer.encode(pairs)]
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    best = (float("inf"), 0)
    for batch in (8, 16, 32):
        def once(batch: int = batch) -> None:
            for k in range(0, len(order), batch):
                encoded = model.tokenizer.encode([pairs[i] for i in order[k:k + batch]])
                ids, mask = pad([e.ids for e in encoded], model.tokenizer.pad_id)
                model.engine.run(ids, mask, pad_types([e.type_ids for e in encoded], ids.shape[1]))

        once()  # warm-up
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            once()
            times.append(time.perf_counter() - started)
        best = min(best, (1000 * median(times), batch))
    return best


def measure(url: str, path: str, body: dict, rounds: int) -> dict:
    """c=1: median latency; c=8: documents/s with 8 clients each sending `rounds` requests."""
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(2):
            client.post(path, json=body).raise_for_status()
        latencies = []
        for _ in range(rounds):
            started = time.perf_counter()
            client.post(path, json=body).raise_for_status()
            latencies.append(time.perf_counter() - started)
    errors: list[int] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(rounds):
                r = client.post(path, json=body)
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    answered = CLIENTS * rounds - len(errors)
    return {"c1_ms": round(1000 * median(latencies), 1),
            "c8_docs_s": round(answered * len(body["documents"]) / wall, 1), "c8_errors": sorted(errors)}


def infinity_folder(version_dir: Path, artifact: str) -> Path:
    """The version as Infinity reads it: a Hugging Face folder with one ONNX file (see the module docstring)."""
    config = json.loads((version_dir / "bertserve.json").read_text())
    checkpoint = version_dir.parent.parent / ".checkpoints" / version_dir.parent.name / version_dir.name
    if not (checkpoint / "config.json").is_file():
        checkpoint = Path(config["report"]["source"])
    hf_config = json.loads((checkpoint / "config.json").read_text())
    hf_config["max_position_embeddings"] = config["max_length"]  # Infinity truncates pairs there
    folder = Path(tempfile.mkdtemp(prefix="infinity-model-"))
    for item in version_dir.iterdir():
        if item.is_file() and item.suffix != ".onnx":
            shutil.copy(item, folder / item.name)
    int8 = any(a["file"] == artifact and a["precision"] == "int8" for a in config["artifacts"])
    shutil.copy(version_dir / artifact, folder / ("model_quantized.onnx" if int8 else "model.onnx"))
    (folder / "config.json").write_text(json.dumps(hf_config))
    return folder


def infinity(python: str, folder: Path, body: dict, rounds: int) -> tuple[dict, list[float]]:
    """Infinity's optimum (onnxruntime) engine on `folder`: the same measurement, and its scores for `body`."""
    port = free_port()
    log = open(folder / "infinity.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([python, str(ROOT / "benchmarks" / "infinity_launch.py"), "v2", "--model-id",
                                str(folder), "--engine", "optimum", "--port", str(port), "--device", "cpu"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError((folder / "infinity.log").read_text()[-2000:])
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        request = {**body, "model": str(folder)}
        scores = scores_by_index(httpx.post(url + "/rerank", json=request, timeout=120).json())
        return measure(url, "/rerank", request, rounds), scores
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def scores_by_index(answer: dict) -> list[float]:
    """Relevance scores of a Cohere-shaped answer, in the request's document order."""
    results = sorted(answer["results"], key=lambda r: r["index"])
    return [r["relevance_score"] for r in results]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", type=Path, default=ROOT / "rerankers")
    p.add_argument("--model", default="drug-review-reranker")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("-n", type=int, default=20, help="requests per client, and raw rounds")
    p.add_argument("--infinity", help="the Python of Infinity's own venv (see the module docstring)")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="extra BERTSERVE_* settings")
    args = p.parse_args()
    version_dir = args.repository / args.model / str(args.version)
    query, documents = workload()
    body = {"model": args.model, "query": query, "documents": documents}
    # 8 clients x 100 documents = 800 sequences at once: over the default queue bound (512), which would answer
    # 429s; the bound is raised so every request is admitted, as Infinity (which has none) admits them.
    env = {"BERTSERVE_GRPC_PORT": "0", "BERTSERVE_MAX_QUEUE_SIZE": str(CLIENTS * DOCUMENTS)}
    env.update(item.split("=", 1) for item in args.env)
    server = Server(args.repository, workers=1, threads=0, env=env, log_dir=Path(tempfile.mkdtemp()))
    try:
        info, _ = model_info(server.url, args.model, args.version, tries=1)
        batching = info.get("batching", {})
        # a deadline past the c=8 round's length: measured is throughput, not the default deadline
        ours = measure(server.url, "/v2/rerank", {**body, "timeout_ms": 120_000}, args.n)
        our_scores = scores_by_index(httpx.post(server.url + "/v2/rerank", json=body, timeout=120).json())
    finally:
        server.stop()
    engine = {"provider": info.get("provider", "cpu"), "quantization": info.get("quantization")}
    config = json.loads((version_dir / "bertserve.json").read_text())
    precision = "int8" if engine["quantization"] not in (None, "none", "fp32") else "fp32"
    artifact = next((a["file"] for a in config["artifacts"] if a["precision"] == precision), None)
    limit, batch = raw_ms(version_dir, engine["provider"], artifact, query, documents, args.n)
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "model": args.model, "env": args.env, "engine": engine,
              "artifact": artifact, "documents": len(documents),
              "server_caps": {k: batching.get(k) for k in ("max_batch_size", "max_batch_tokens", "autotuned")},
              "raw_ms": round(limit, 1), "raw_batch": batch, "raw_docs_s": round(1000 * len(documents) / limit, 1),
              "bertserve": ours,
              "c1_ratio_to_raw": round(ours["c1_ms"] / limit, 3),
              "c8_ratio_to_raw": round(ours["c8_docs_s"] / (1000 * len(documents) / limit), 3)}
    if args.infinity:
        try:
            theirs, their_scores = infinity(args.infinity, infinity_folder(version_dir, artifact), body, args.n)
            result["infinity"] = theirs
            result["c1_ratio_to_infinity"] = round(ours["c1_ms"] / theirs["c1_ms"], 3)
            result["c8_ratio_to_infinity"] = round(ours["c8_docs_s"] / theirs["c8_docs_s"], 3)
            # Infinity leaves token_type_ids out of its pairs (return_token_type_ids=False): on an fp32 graph this
            # is the whole difference (measured 2026-12-03); on INT8, per-batch activation scales add some.
            result["infinity_max_score_diff"] = round(max(abs(a - b) for a, b in zip(our_scores, their_scores)), 4)
        except (RuntimeError, OSError, KeyError, httpx.HTTPError) as exc:  # reported, not fatal: the rest stands
            result["infinity"] = {"error": str(exc)[-500:]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
