"""OpenVINO's own INT8 (NNCF post-training quantization of the fp32 graph) against onnxruntime INT8 and OpenVINO fp32
(issue 25: kept as an export artifact only if it wins on some CPU measured; on AMD EPYC Zen 3, AVX2 only, it lost).

    pip install -e '.[bench]'   # nncf, for this trial only (never the serving install)
    python benchmarks/ov_int8_trial.py [--version-dir models/drug-review-sentiment/1] [--rounds 3]

Quantizes model.onnx with nncf (ModelType.TRANSFORMER, calibrated on up to 300 golden texts) into --work as OpenVINO
IR, then measures, interleaved batch by batch (each batch runs on every engine in turn, the order rotating, so all
engines see the same load on a shared machine): sequences/s on the golden texts in length-sorted batches of 8 and 32,
tokenization included, and batch-1 p50; ratios per round against onnxruntime INT8 with the same thread count;
decision agreement and largest probability difference of each engine against OpenVINO fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine import cpu_name, open_engine
from app.repository import TOKENIZER_FILE, Artifact, read_config, read_golden
from app.tokenizer import TextTokenizer, pad


def quantize(version: Path, out: Path, tokenizer: TextTokenizer, texts: list[str]) -> None:
    import nncf
    import openvino as ov

    def item(text: str) -> dict[str, np.ndarray]:
        ids, mask = pad([tokenizer.encode([text])[0].ids], tokenizer.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    model = ov.Core().read_model(str(version / "model.onnx"))
    names = {port.any_name for port in model.inputs}
    data = nncf.Dataset([{k: v for k, v in item(t).items() if k in names} for t in texts[:300]])
    quantized = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=min(300, len(texts)))
    ov.save_model(quantized, str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=ROOT / "models/drug-review-sentiment/1")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ov-int8-trial"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    version, config = args.version_dir, read_config(args.version_dir)  # texts: the golden ones (pairs left out)
    tokenizer = TextTokenizer(version / TOKENIZER_FILE, config.max_length)
    if (golden := read_golden(version, len(config.labels))) is None:
        sys.exit(f"{version}: no golden.json (export it with bertserve export)")
    texts = [t for t in golden.texts if isinstance(t, str)]
    if not (ir := args.work / "model.ov-int8.xml").exists():
        args.work.mkdir(parents=True, exist_ok=True)
        quantize(version, ir, tokenizer, texts)

    layouts = {  # label: (folder, file, provider, precision, threads)
        "ort int8 1x2t": (version, "model.int8.onnx", "cpu", "int8", 2),
        "ort int8 1x1t": (version, "model.int8.onnx", "cpu", "int8", 1),
        "ov fp32 1x2t": (version, "model.onnx", "openvino", "fp32", 2),
        "ov fp32 1x1t": (version, "model.onnx", "openvino", "fp32", 1),
        "ov nncf-int8 1x2t": (args.work, ir.name, "openvino", "int8", 2),
        "ov nncf-int8 1x1t": (args.work, ir.name, "openvino", "int8", 1),
    }
    engines = {label: open_engine(folder, config, provider, Artifact(file=file, precision=prec, providers=[provider]),
                                  threads) for label, (folder, file, provider, prec, threads) in layouts.items()}
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.encode([texts[i]])[0].ids))

    def run(label: str, batch: list[int]) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        encoded = tokenizer.encode([texts[i] for i in batch])
        logits = engines[label].run(*pad([e.ids for e in encoded], tokenizer.pad_id))
        return logits, time.perf_counter() - start

    labels = list(engines)
    for label in labels:  # warm-up: allocations, kernel choice
        for k in range(0, len(order), 32):
            run(label, order[k : k + 32])
    res = {label: {"b8": [], "b32": [], "p50": []} for label in labels}
    logits = {label: np.zeros((len(texts), len(config.labels)), np.float32) for label in labels}
    for r in range(args.rounds):
        spent, single, turn = {label: {8: 0.0, 32: 0.0} for label in labels}, {label: [] for label in labels}, 0
        for size in (8, 32):
            for k in range(0, len(order), size):
                turn += 1
                for label in labels[turn % len(labels) :] + labels[: turn % len(labels)]:
                    logits[label][order[k : k + size]], seconds = run(label, order[k : k + size])
                    spent[label][size] += seconds
        for i in range(64):
            for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
                single[label].append(run(label, [i])[1])
        for label in labels:
            res[label]["b8"].append(len(texts) / spent[label][8])
            res[label]["b32"].append(len(texts) / spent[label][32])
            res[label]["p50"].append(statistics.median(single[label]) * 1000)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    print(f"\nCPU: {cpu_name()}; {len(texts)} golden texts, {args.rounds} interleaved rounds")
    print(f"{'engine':20} {'b8 seq/s':>9} {'b32 seq/s':>10} {'b1 p50 ms':>10} {'b8/ref':>7} {'b32/ref':>8} "
          f"{'p50/ref':>8} {'agree':>7} {'max diff':>9}")
    reference = config.head.scores(logits["ov fp32 1x2t"])
    for label, m in res.items():
        ref = res["ort int8 1x2t" if "2t" in label else "ort int8 1x1t"]
        ratios = [statistics.median(a / b for a, b in zip(m[k], ref[k])) for k in ("b8", "b32", "p50")]
        scores = config.head.scores(logits[label])
        agree = np.mean(scores.argmax(1) == reference.argmax(1))
        print(f"{label:20} {statistics.median(m['b8']):9.1f} {statistics.median(m['b32']):10.1f} "
              f"{statistics.median(m['p50']):10.2f} {ratios[0]:7.2f} {ratios[1]:8.2f} {ratios[2]:8.2f} "
              f"{agree:7.4f} {np.abs(scores - reference).max():9.4f}")


if __name__ == "__main__":
    main()
