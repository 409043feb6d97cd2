"""`make gpu-check`'s measurements: the demo model with an fp16 artifact beside its fp32 one, loaded the way the
server loads it (every CUDA candidate proven against the golden outputs and timed), then raw batches per artifact.

    python benchmarks/gpu_check.py --demo models/drug-review-sentiment/1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from app.engine import Engine, cpu_name  # noqa: E402
from app.lifecycle.quantize import to_fp16  # noqa: E402
from app.loader import load_model  # noqa: E402
from app.repository import Artifact, read_config, write_config  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.tokenizer import TextTokenizer, pad  # noqa: E402
from benchmarks.common import load_reviews  # noqa: E402


def with_fp16(demo: Path, work: Path) -> Path:
    """A copy of the demo version with an fp16 artifact first for CUDA (what `bertserve export --quantize fp16`
    publishes), built from its fp32 graph."""
    path = work / "drug-review-sentiment" / "1"
    shutil.copytree(demo, path)
    to_fp16(path / "model.onnx", path / "model.fp16.onnx")
    config = read_config(path)
    fp16 = Artifact(file="model.fp16.onnx", precision="fp16", providers=["cuda"], quantization="fp16 (io fp32)")
    write_config(path, config.model_copy(update={"artifacts": [fp16, *config.artifacts]}))
    return path


def raw_rates(path: Path, texts: list[str], seconds: float = 3.0) -> dict[str, dict[str, float]]:
    """Sequences/s of each CUDA artifact at length-sorted batch sizes, tokenization included."""
    config = read_config(path)
    tokenizer = TextTokenizer(path / "tokenizer.json", config.max_length)
    encoded = tokenizer.encode(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    out = {}
    for artifact in config.artifacts_for("cuda"):
        engine = Engine(path, config, "cuda", artifact)
        rates = {}
        for batch in (1, 8, 32, 64, 128):
            batches = [pad([encoded[i].ids for i in order[k : k + batch]], tokenizer.pad_id)
                       for k in range(0, len(order), batch)]
            engine.run(*batches[len(batches) // 2])
            done, k, start = 0, 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                ids, mask = batches[(k * 7) % len(batches)]
                engine.run(ids, mask)
                done, k = done + len(ids), k + 1
            rates[f"b{batch}"] = round(done / (time.perf_counter() - start), 1)
        out[artifact.file] = rates
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=ROOT / "models" / "drug-review-sentiment" / "1")
    args = p.parse_args()
    import onnxruntime as ort

    print(f"host CPU: {cpu_name()}; onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
    with tempfile.TemporaryDirectory(prefix="bertserve-gpu-check-") as work:
        path = with_fp16(args.demo, Path(work))
        started = time.perf_counter()
        model = load_model("drug-review-sentiment", 1, path, Settings(provider="cuda"))
        print(f"loaded in {time.perf_counter() - started:.1f} s: {model.engine.describe()}, batching "
              f"{ {k: v for k, v in model.batch_choice.items() if k != 'sequences_per_s'} }")
        print(json.dumps(model.engine_choice, indent=1))
        texts = load_reviews()
        print("raw sequences/s on CUDA (length-sorted batches of the 379 reviews):")
        print(json.dumps(raw_rates(path, texts), indent=1))
        logits = np.stack([model.infer([e.ids])[0] for e in model.encode(texts[:8])])
        print(f"sanity: 8 reviews scored, logits shape {logits.shape}")


if __name__ == "__main__":
    main()
