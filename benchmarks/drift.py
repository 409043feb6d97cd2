"""Drift figures (issue 33): the PSI of the demo model (models/drug-review-sentiment/1, `make demo`) on its own gate
texts and on shifted sets, as a served replica reports it (GET /models/{name}, `drift`).

    python benchmarks/drift.py [--out FILE] [--repository models]

Reference: what the export records in drift.json (app.drift.measure_reference: the published first artifact, INT8
on CPU, run through the serving code on the export's gate texts: the demo's 379 test reviews, drugsComTest.tsv),
computed here from the published version so a demo built before drift.json existed needs no re-export. Nothing is
written into the model repository: the version is copied, with that drift.json, into a scratch repository once per
text set (one model name per set, so each set's counters are its own).

Serving: the real app in-process (tests.support.apps.in_process, BERTSERVE_PROVIDER cpu), each set sent in
requests of 8 texts; its PSI per feature (label, confidence, tokens) is the app's own figure from its counters.
Sets: the gate texts again (must read < 0.01), the 600 training reviews (the same population, other texts:
sampling noise), the test reviews of the conditions outside the training set's five most common ones, the
training reviews of one condition (Birth Control), and short reviews of other things (app.lifecycle.data's
built-in sample, 100 texts: another domain).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.drift import DRIFT_FILE, measure_reference
from app.lifecycle.data import BUILTIN_SAMPLE, clean_review, demo_zip, parse_table
from app.settings import Settings
from tests.support.apps import in_process

NAME, VERSION = "drug-review-sentiment", "1"
SHIPPED = ("bertserve.json", "golden.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "vocab.txt", "model.onnx", "model.int8.onnx")


def rows(member: str) -> list[dict]:
    with zipfile.ZipFile(demo_zip()) as archive:
        return parse_table(archive.read(member).decode("utf-8"), "\t", member)


def text_sets() -> dict[str, list[str]]:
    test, train = rows("drugsComTest.tsv"), rows("drugsComTrain.tsv")
    common = {c for c, _ in collections.Counter(r["condition"] for r in train).most_common(5)}
    return {
        "gate texts again (test reviews)": [clean_review(r["review"]) for r in test],
        "training reviews (same population)": [clean_review(r["review"]) for r in train],
        "test reviews, other conditions than the 5 most common": [clean_review(r["review"]) for r in test
                                                                  if r["condition"] not in common],
        "training reviews of Birth Control only": [clean_review(r["review"]) for r in train
                                                   if r["condition"] == "Birth Control"],
        "short reviews of other things (built-in sample)": (BUILTIN_SAMPLE * 4)[:100],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", default=str(ROOT / "models"))
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    folder = Path(args.repository) / NAME / VERSION
    if not (folder / "bertserve.json").is_file():
        sys.exit(f"{folder} is missing: `make demo` builds it")
    sets = text_sets()
    gate = next(iter(sets.values()))
    started = time.perf_counter()
    reference = measure_reference(folder, gate, "drugsComTest.tsv")
    reference_s = time.perf_counter() - started
    recorded = (folder / DRIFT_FILE).is_file()
    figures = []
    with tempfile.TemporaryDirectory() as scratch:
        repo = Path(scratch)
        names = {}
        for k, title in enumerate(sets):
            names[title] = f"set-{k}"
            target = repo / names[title] / VERSION
            target.mkdir(parents=True)
            for file in SHIPPED:
                if (folder / file).is_file():
                    shutil.copyfile(folder / file, target / file)
            (target / DRIFT_FILE).write_text(json.dumps(reference))
        call = in_process(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, provider="cpu",
                                   log_level="warning"))
        send = next(call)
        for title, texts in sets.items():
            began = time.perf_counter()
            for start in range(0, len(texts), 8):
                answer = send("POST", "/predict", json={"inputs": texts[start:start + 8], "model": names[title]})
                assert answer.status_code == 200, answer.text
            [entry] = send("GET", f"/models/{names[title]}").json()
            figures.append({"set": title, "texts": len(texts), **entry["drift"], "seconds": round(
                time.perf_counter() - began, 1), "artifact": entry["artifact"], "provider": entry["provider"]})
        call.close()

    print(f"reference: {reference['texts']} gate texts on {reference['artifact']} ({reference_s:.1f} s); "
          f"the published version {'has' if recorded else 'has no'} drift.json of its own")
    print("| text set | texts | PSI label | PSI confidence | PSI tokens |")
    print("|---|---:|---:|---:|---:|")
    for f in figures:
        psi = f["psi"]
        print(f"| {f['set']} | {f['texts']} | {psi['label']:.4f} | {psi['confidence']:.4f} | {psi['tokens']:.4f} |")
    result = {"reference": {k: reference[k] for k in ("texts", "source", "artifact", "epsilon")},
              "features": reference["features"], "sets": figures, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
