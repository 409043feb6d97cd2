"""The distillation trade-off on the demo model: its 6-layer teacher and students with 4, 3 and 2 layers.

Each student is made by `bertserve distill` (default options, the 600 training reviews, gated on the 379 test
reviews) and published into a scratch repository (build/distill/models, never the served one), with the gate
thresholds opened so that every student is published and its figures kept; whether it would pass the default gate
is a column. Then one side-by-side timing run of all four models (alternating rounds, every CPU engine of this
machine, each as it would serve) gives the raw sequences/s. Writes docs/distill.md, docs/distill.json and
docs/distill.png.

    flock /tmp/bertserve-heavy.lock .venv/bin/python benchmarks/distill_tradeoff.py [--layers 4 3 2] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.cli import main as cli  # noqa: E402
from app.lifecycle.demo import NAME, VERSION, teacher_checkpoint  # noqa: E402
from app.repository import read_config  # noqa: E402

DEFAULT_GATE = {"min_agreement": 0.9, "max_accuracy_loss": 0.02}  # bertserve distill's defaults


def distil(teacher: Path, layers: int, data: Path, repo: Path, epochs: int, published: Path) -> dict:
    started = time.perf_counter()
    cli(["distill", str(teacher), "--layers", str(layers), "--name", NAME, "--version", str(layers),
         "--data", str(data / "train.csv"), "--eval-data", str(data / "test.csv"), "--epochs", str(epochs),
         "--min-agreement", "0", "--max-accuracy-loss", "1", "--teacher-version", str(published),
         "--speed-rounds", "1", "--model-repository", str(repo)])  # the figures come from one joint run at the end
    report = read_config(repo / NAME / str(layers)).report
    gate = report["teacher_gate"]
    served = gate.get("int8", gate)
    return {
        "layers": layers, "kept": report["distillation"]["layers_kept"],
        "accuracy_fp32": gate["student_accuracy"], "macro_f1_fp32": gate["student_macro_f1"],
        "accuracy_int8": served["student_accuracy"], "macro_f1_int8": served["student_macro_f1"],
        "agreement_fp32": gate["agreement"], "agreement_int8": served["agreement"],
        "int8_recipe": report["gate"].get("chosen"),
        "default_gate": "passes" if gate["agreement"] >= DEFAULT_GATE["min_agreement"] and gate["teacher_accuracy"]
        - gate["student_accuracy"] <= DEFAULT_GATE["max_accuracy_loss"] else "misses",
        "training_s": report["distillation"]["training_s"], "export_s": report["export_s"],
        "distill_s": round(time.perf_counter() - started), "best_epoch": report["distillation"]["best_epoch"],
        "speed_in_its_run": {k: report["speed"][k] for k in ("teacher", "student", "speedup")},
    }


def teacher_row(published: Path) -> dict:
    report = read_config(published).report
    chosen = next((a for a in report["gate"].get("attempts", []) if a.get("passed")), None)
    int8 = report["evaluation"].get("int8", report["evaluation"]["fp32"])
    return {
        "layers": 6, "kept": list(range(6)),
        "accuracy_fp32": report["evaluation"]["fp32"]["accuracy"], "macro_f1_fp32": report["evaluation"]["fp32"]["macro_f1"],
        "accuracy_int8": int8["accuracy"], "macro_f1_int8": int8["macro_f1"],
        "agreement_fp32": 1.0, "agreement_int8": chosen["agreement"] if chosen else 1.0,
        "int8_recipe": report["gate"].get("chosen"), "default_gate": "(teacher)",
    }


def sizes(folder: Path) -> dict:
    return {a.precision: round((folder / a.file).stat().st_size / 1e6, 1) for a in read_config(folder).artifacts}


def markdown(result: dict) -> str:
    speed = result["speed"]
    lines = [
        "# Distillation trade-off: the demo model and its students",
        "",
        f"Measured {result['date']} on **{speed['cpu']}**, {os.cpu_count()} cores, by "
        "`benchmarks/distill_tradeoff.py`. Teacher: the demo model (MiniLM-L6 fine-tuned on 600 drug reviews, "
        f"published as `{NAME}/{VERSION}`). Students: `bertserve distill --layers N` with its defaults "
        f"({result['epochs']} epochs, temperature 2, soft weight 0.5, seed 13) on the same 600 reviews; every "
        "figure is on the 379 test reviews. Agreement: share of decisions equal to the teacher's fp32 ones. Raw "
        f"sequences/s: one side-by-side run of all four models, {speed['rounds']} alternating rounds over the "
        f"{speed['texts']} test reviews (tokenization included, length-sorted batches), each model on every CPU "
        "engine with the layout it would serve with; the faster engine is named. Size: the onnxruntime CPU "
        "artifact (INT8) / the fp32 graph.",
        "",
        "| layers (kept) | accuracy fp32 / INT8 | macro-F1 fp32 / INT8 | agreement with teacher fp32 / INT8 | raw seq/s (engine) | × teacher | size INT8 / fp32 MB | default gate | distill time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        who = "teacher" if row["layers"] == 6 else f"{row['layers']} layers"
        rate = speed[who]
        engine = rate["best_engine"].split(",")[0].replace(" on ", ", ").replace("model.int8.onnx (int8)", "INT8") \
            .replace("model.onnx (fp32)", "fp32").replace("openvino", "OpenVINO EP").replace("cpu", "ORT CPU")
        ratio = rate["sequences_per_s"] / speed["teacher"]["sequences_per_s"]
        time_s = f"{row['distill_s']} s ({row['training_s']:.0f} s training)" if "distill_s" in row else "—"
        size = row["size_mb"]
        lines.append(
            f"| {'**6 (teacher)**' if row['layers'] == 6 else row['layers']} ({','.join(map(str, row['kept']))}) "
            f"| {row['accuracy_fp32']:.3f} / {row['accuracy_int8']:.3f} | {row['macro_f1_fp32']:.3f} / "
            f"{row['macro_f1_int8']:.3f} | {row['agreement_fp32']:.3f} / {row['agreement_int8']:.3f} "
            f"| {rate['sequences_per_s']:.0f} ({engine}) | {ratio:.2f} | {size.get('int8', '—')} / {size['fp32']} "
            f"| {row['default_gate']} | {time_s} |")
    lines += ["", "Every engine measured (median sequences/s of the rounds):", ""]
    for who in ["teacher"] + [f"{r['layers']} layers" for r in result["rows"] if r["layers"] != 6]:
        engines = "; ".join(f"{e}: {v}" for e, v in speed[who]["engines"].items())
        lines.append(f"- {who}: {engines}")
    if speed["skipped"]:
        lines.append(f"- engines not available here: {speed['skipped']}")
    lines += ["", "![accuracy and agreement against raw sequences/s](distill.png)", "",
              "Reproduce: `make demo`, then `flock /tmp/bertserve-heavy.lock .venv/bin/python "
              "benchmarks/distill_tradeoff.py` (needs the `bench` extra for the plot)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = result["speed"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label, marker in (("accuracy_int8", "test accuracy (INT8 artifact)", "o"),
                               ("macro_f1_int8", "macro-F1 (INT8 artifact)", "s"),
                               ("agreement_int8", "agreement with the teacher (INT8 vs fp32)", "^")):
        xs, ys = [], []
        for row in result["rows"]:
            who = "teacher" if row["layers"] == 6 else f"{row['layers']} layers"
            xs.append(speed[who]["sequences_per_s"])
            ys.append(row[key])
        ax.plot(xs, ys, marker=marker, label=label)
        if key == "accuracy_int8":
            for x, y, row in zip(xs, ys, result["rows"]):
                ax.annotate(f"{row['layers']} layers", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("raw sequences/s, best CPU engine (2 cores)")
    ax.set_ylabel("score on the 379 test reviews")
    ax.set_title(f"Demo model distilled: 6 -> 4, 3, 2 layers\n{speed['cpu']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 3, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5, help="Alternating rounds of the final timing run.")
    parser.add_argument("--model-repository", default=str(ROOT / "models"), help="Where the demo model is.")
    parser.add_argument("--work", default=str(ROOT / "build" / "distill"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--from-json", action="store_true", help="Only rewrite the docs from docs/distill.json.")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads((Path(args.docs) / "distill.json").read_text())
        write_docs(result, Path(args.docs))
        return

    from app.lifecycle.data import demo_split
    from app.lifecycle.speed import side_by_side
    from app.settings import Settings

    repository, work, docs = Path(args.model_repository), Path(args.work), Path(args.docs)
    published = repository / NAME / str(VERSION)
    teacher = teacher_checkpoint(repository)
    shutil.rmtree(work, ignore_errors=True)
    data, students = work / "data", work / "models"
    cli(["demo-data", str(data)])
    rows = [teacher_row(published) | {"size_mb": sizes(published)}]
    for layers in args.layers:
        print(f"\n=== distilling to {layers} layers ===", flush=True)
        row = distil(teacher, layers, data, students, args.epochs, published)
        rows.append(row | {"size_mb": sizes(students / NAME / str(layers))})
        print(json.dumps(row), flush=True)

    texts, _ = demo_split("test")
    models = {"teacher": (published, read_config(published))}
    for row in rows[1:]:
        folder = students / NAME / str(row["layers"])
        models[f"{row['layers']} layers"] = (folder, read_config(folder))
    print(f"\n=== timing all {len(models)} models side by side ({args.rounds} rounds) ===", flush=True)
    speed = side_by_side(models, texts, Settings(), args.rounds)  # the serving layout of BERTSERVE_* variables
    result = {"date": time.strftime("%Y-%m-%d"), "epochs": args.epochs, "rows": rows, "speed": speed}
    docs.mkdir(exist_ok=True)
    (docs / "distill.json").write_text(json.dumps(result, indent=2) + "\n")
    write_docs(result, docs)


def write_docs(result: dict, docs: Path) -> None:
    (docs / "distill.md").write_text(markdown(result))
    try:
        plot(result, docs / "distill.png")
    except ImportError:
        print("matplotlib is missing (pip install -e '.[bench]'): no plot", file=sys.stderr)
    print(markdown(result))


if __name__ == "__main__":
    main()
