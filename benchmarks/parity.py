"""Parity table (issue 22): every architecture x head (x pairs) of tiny random checkpoints, exported with the real
`bertserve export` (defaults: INT8 with the fp32 fallback), served by the real app in-process, and compared with
`transformers.pipeline("text-classification", top_k=None)` on the same texts and pairs.

    python benchmarks/parity.py [--out FILE] [--archs bert,roberta] [--pair-archs bert,roberta,deberta-v2|all]

Export: `bertserve export CKPT --name NAME --model-repository REPO` (no other flag), its argv given to the CLI's entry
point in this process (app.cli.main, as the tests do) or, with --subprocess, to the console script.

Checkpoints: tests/tiny.make_tiny_checkpoint per architecture, its configuration and tokenizer reused by a model per
head of tests/integration/test_heads_parity.py (weights drawn with initializer_range 0.2, as tiny.py's other
architectures), the last layer scaled so the largest logit on the corpus is 3: scores spread over the labels and
the inputs, unsaturated, so the comparison means something (the spread column says how much). Texts: those of
tests/integration/test_architectures.py (one longer than the model reads); pairs: those of
tests/integration/test_pairs.py (one longer), sent both as [a, b] lists and in the Hugging Face form, the pipeline
given {"text": a, "text_pair": b}.

Serving: `tests.support.apps.in_process` (the app, its registry and loader, over httpx's ASGITransport). No setting
pins an artifact's precision (BERTSERVE_PROVIDER picks providers, and on CPU the loader takes the INT8 artifact when
it passes), so the fp32 figures come from a copy of each version holding only model.onnx, served beside the
version as exported (`<name>-fp32`); the served column is the version as exported, on the engine the loader chose.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from app.settings import Settings  # noqa: E402
from tests.support.apps import in_process  # noqa: E402
from tests.support.tiny import (  # noqa: E402
    CORPUS,
    HEADS,  # noqa: E402
    make_tiny_checkpoint,
)
from tests.support.tiny import PARITY_PAIRS as PAIRS  # noqa: E402
from tests.support.tiny import PARITY_TEXTS as TEXTS  # noqa: E402

ARCHS = ["bert", "distilbert", "roberta", "xlm-roberta", "camembert", "albert", "mpnet", "electra", "deberta",
         "deberta-v2", "modernbert"]
PAIR_ARCHS = ["bert", "roberta", "deberta-v2"]
BOUND = 1e-3  # the parity bound on the fp32 artifact
BERTSERVE = Path(sys.executable).parent / "bertserve"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def head_checkpoint(base: Path, out: Path, head: str, seed: int) -> Path:
    """A model of the base checkpoint's configuration and tokenizer with this head, its weights drawn afresh."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    labels, problem_type, _ = HEADS[head]
    config = AutoConfig.from_pretrained(base, id2label=dict(enumerate(labels)), problem_type=problem_type,
                                        label2id={lab: i for i, lab in enumerate(labels)})
    # BERT's default 0.02 (make_tiny_checkpoint keeps it for bert, distilbert, roberta) leaves a tiny random model
    # all but blind to its input: scores move < 1e-3 between texts or with type ids zeroed. 0.2, as the others.
    config.initializer_range = max(config.initializer_range, 0.2)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.no_grad():
        logits = model(**tokenizer(CORPUS, padding=True, return_tensors="pt")).logits
        scale = 3.0 / max(float(logits.abs().max()), 1e-6)
        last = [p for n, p in model.named_parameters() if n.startswith("classifier") and p.shape[0] == len(labels)]
        assert last, f"no classifier layer of {len(labels)} outputs found"
        for p in last:  # weight and bias: logits scale exactly
            p.mul_(scale)
    out.mkdir(parents=True)
    model.save_pretrained(out)
    for f in base.iterdir():  # the tokenizer files, as make_tiny_checkpoint wrote them
        if f.is_file() and f.name != "config.json" and not f.name.startswith("model"):
            shutil.copy(f, out / f.name)
    return out


def export(checkpoint: Path, name: str, repo: Path, subprocess_: bool) -> tuple[int, str, float]:
    """`bertserve export` with its defaults, its argv to the CLI's entry point in this process (torch imported
    once: a third of a tiny export's CPU) or to the console script; (exit code, last error line, seconds)."""
    argv, started = ["export", str(checkpoint), "--name", name, "--model-repository", str(repo)], time.perf_counter()
    if subprocess_:
        run = subprocess.run([str(BERTSERVE), *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        code, err = run.returncode, run.stderr
    else:
        from app.cli import main as cli

        err_buffer, code = io.StringIO(), 0
        with contextlib.redirect_stderr(err_buffer), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
            except Exception as exc:  # noqa: BLE001 -- a crash is a row of the table, not the end of the run
                code = 1
                print(f"crash: {type(exc).__name__}: {exc}", file=sys.stderr)
        err = err_buffer.getvalue()
    last = (err.strip().splitlines() or [""])[-1]
    return code, last, time.perf_counter() - started


def pin_fp32(repo: Path, name: str) -> str:
    """The model name serving the version's fp32 artifact: itself, or a copy listing only model.onnx."""
    version = repo / name / "1"
    config = json.loads((version / "bertserve.json").read_text())
    if all(a["precision"] == "fp32" for a in config["artifacts"]):
        return name
    copy = repo / f"{name}-fp32" / "1"
    shutil.copytree(version, copy)
    for artifact in config["artifacts"]:
        if artifact["precision"] != "fp32":
            (copy / artifact["file"]).unlink()
    config["artifacts"] = [a for a in config["artifacts"] if a["precision"] == "fp32"]
    (copy / "bertserve.json").write_text(json.dumps(config, indent=2))
    return f"{name}-fp32"


def int8_figures(config: dict) -> str:
    """The export report's INT8 verdict: the chosen recipe's figures, or why it was refused (best attempt)."""
    report, bound = config.get("report") or {}, config.get("regression_bound")
    gate = report.get("gate") or {}
    attempts = gate.get("attempts") or []

    def figures(a: dict) -> str:
        within = f" (within ±{bound:.2g})" if bound is not None else ""  # regression: values within the bound
        parts = [f"agreement {a['agreement']:.4f}{within}"] if "agreement" in a else []
        parts += [f"max diff {a[k]:.2g}" for k in ("max_prob_diff", "max_diff") if k in a]
        return ", ".join(parts)

    if gate.get("chosen"):
        chosen = next((a for a in attempts if a.get("recipe") == gate["chosen"]), {})
        return f"int8: {figures(chosen)}"
    if gate.get("int8_refused"):
        best = max(attempts, key=lambda a: (a.get("agreement", 0), -a.get("max_prob_diff", 0)), default=None)
        return "refused → fp32" + (f" (best: {figures(best)})" if best else "")
    return "no int8 asked"


def compare(served: list[list[dict]], expected: list[list[dict]]) -> tuple[float, bool]:
    """Largest |score difference| per label over all rows, and whether every row ranks its labels alike."""
    worst, ranked = 0.0, True
    for ours, theirs in zip(served, expected, strict=True):
        ranked &= [s["label"] for s in ours] == [s["label"] for s in theirs]
        mine = {s["label"]: s["score"] for s in ours}
        worst = max([worst] + [abs(mine.get(t["label"], float("inf")) - t["score"]) for t in theirs])
    return worst, ranked


def spread(answers: list[list[dict]]) -> float:
    """The largest range of one label's score over the inputs."""
    by_label: dict[str, list[float]] = {}
    for row in answers:
        for s in row:
            by_label.setdefault(s["label"], []).append(s["score"])
    return max(max(v) - min(v) for v in by_label.values())


def pipeline_answers(checkpoint: Path, pairs: bool) -> list[list[dict]]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), top_k=None,
                        device="cpu")
    if pairs:
        return [classify({"text": a, "text_pair": b}, truncation=True) for a, b in PAIRS]
    return classify(TEXTS, truncation=True)


def predict(call, name: str, pairs: bool) -> list[list[dict]]:
    """The answers to the texts, or to the pairs in both forms (the worse of the two kept by the caller)."""
    bodies = [[list(p) for p in PAIRS], [{"text": a, "text_pair": b} for a, b in PAIRS]] if pairs else [TEXTS]
    answers = []
    for inputs in bodies:
        r = call("POST", "/predict", json={"inputs": inputs, "model": name})
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
        answers.append(r.json())
    return answers


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime
    import optimum.version
    import transformers

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    edits = " + uncommitted edits in app/" if git("status", "--porcelain", "app") else ""
    return (f"{cpu}, {os.cpu_count()} cores (shared); main {git('rev-parse', '--short', 'HEAD')}{edits}; "
            f"transformers {transformers.__version__}, optimum {optimum.version.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="Also write the markdown table here.")
    p.add_argument("--archs", default=",".join(ARCHS), help="Comma-separated architectures (default: all).")
    p.add_argument("--heads", default=",".join(HEADS), help="Comma-separated heads (default: all).")
    p.add_argument("--pair-archs", default=",".join(PAIR_ARCHS), help="Architectures also asked pairs ('all').")
    p.add_argument("--subprocess", action="store_true", help="Export with the bertserve console script.")
    p.add_argument("--keep", type=Path, help="Build in this folder and keep it (default: a temp folder, removed).")
    args = p.parse_args()
    archs, heads = args.archs.split(","), args.heads.split(",")
    pair_archs = archs if args.pair_archs == "all" else [a for a in args.pair_archs.split(",") if a in archs]
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bertserve-parity-"))
    if args.keep:  # a fresh build: a second export into the same repository would be version 2
        shutil.rmtree(work, ignore_errors=True)
    repo, started = work / "repo", time.perf_counter()
    cases: dict[str, dict] = {}  # model name -> facts
    for a, arch in enumerate(archs):
        base = make_tiny_checkpoint(work / "base" / arch, arch, seed=a)
        for h, head in enumerate(heads):
            name = f"{arch}-{head}"
            checkpoint = head_checkpoint(base, work / "checkpoints" / name, head, seed=100 * a + h)
            rc, last, seconds = export(checkpoint, name, repo, args.subprocess)
            case = {"arch": arch, "head": head, "checkpoint": checkpoint, "rc": rc}
            if rc == 0:
                config = json.loads((repo / name / "1" / "bertserve.json").read_text())
                case |= {"int8": int8_figures(config), "fp32_name": pin_fp32(repo, name)}
            else:
                case |= {"int8": f"export exit {rc}: {last[:120]}"}
            cases[name] = case
            log(f"[{time.perf_counter() - started:5.0f} s] exported {name}: rc {rc} in {seconds:.1f} s, {case['int8']}")

    rows, bugs = [], []
    settings = Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, engine_sessions=1,
                        log_level="error")
    calls = in_process(settings)
    call = next(calls)
    log(f"[{time.perf_counter() - started:5.0f} s] served {len(list(repo.iterdir()))} models in-process")
    for name, case in cases.items():
        for pairs in ([False, True] if case["arch"] in pair_archs else [False]):
            row = {"arch": case["arch"], "head": case["head"], "input": "pairs" if pairs else "texts",
                   "int8": case["int8"], "fp32": "—", "ranked": "—", "served": "no", "spread": "—"}
            if case["rc"] != 0:
                rows.append(row)
                bugs.append(f"{name} ({row['input']}): export failed: {case['int8']}")
                continue
            expected = pipeline_answers(case["checkpoint"], pairs)
            row["spread"] = f"{spread(expected):.2f}"
            try:
                answers = predict(call, case["fp32_name"], pairs)
                results = [compare(x, expected) for x in answers]
                diff, ranked = max(d for d, _ in results), all(r for _, r in results)
                row |= {"fp32": f"{diff:.1e}", "ranked": "yes" if ranked else "**no**"}
                if diff > BOUND or not ranked:
                    bugs.append(f"{name} ({row['input']}): fp32 max diff {diff:.2e}, ranked alike: {ranked}")
            except RuntimeError as exc:
                row["fp32"] = f"error {exc}"[:60]
                bugs.append(f"{name}-fp32 ({row['input']}): {exc}")
            described = call("GET", f"/models/{name}").json()
            entry = described[0] if isinstance(described, list) and described else {}
            try:
                answers = predict(call, name, pairs)
                diff = max(compare(x, expected)[0] for x in answers)
                row["served"] = f"yes ({entry.get('provider')}, {entry.get('precision')}: {diff:.1e})"
            except RuntimeError as exc:
                row["served"] = f"no: {entry.get('state')} {entry.get('reason', exc)}"[:80]
                bugs.append(f"{name} ({row['input']}): not served: {row['served']}")
            rows.append(row)
        log(f"[{time.perf_counter() - started:5.0f} s] compared {name}")
    try:
        next(calls)
    except StopIteration:
        pass

    lines = [
        "# Parity with `transformers.pipeline(\"text-classification\", top_k=None)` (issue 22)",
        "",
        (f"`python benchmarks/parity.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}; "
         f"{time.perf_counter() - started:.0f} s. Tiny random checkpoints (2 layers, hidden 32), exported with "
         "`bertserve export` defaults (INT8 with the fp32 fallback), served in-process (`tests.support.apps.in_process`,"
         f" autotune off, one session). {len(TEXTS)} texts (one longer than 64 tokens), {len(PAIRS)} pairs (one "
         "longer; sent as [a, b] and as {text, text_pair}, the worse of the two shown)."),
        "",
        ("- **spread**: how far the pipeline's scores move between the inputs (largest max − min of one label): "
         "what a wrong input handling would have to stay under to go unseen."),
        ("- **fp32 max diff**: largest |score − pipeline score| over all labels and inputs, on the version's fp32 "
         "artifact (a copy of the version listing only model.onnx where INT8 was published); **ranked**: every "
         f"answer's labels in the pipeline's order. Bound: {BOUND:g}."),
        ("- **INT8 (export report)**: the gate's figures for the published INT8 recipe on the export's 32 sample "
         "texts (agreement of decisions, max score diff against fp32 PyTorch; regression: share of values within "
         "the recorded bound), or why INT8 was refused (best attempt)."),
        ("- **served**: the version as exported answers /predict 200, with the engine the loader chose and that "
         "engine's max diff to the pipeline."),
        "",
        "| architecture | head | input | spread | fp32 max diff | ranked | INT8 (export report) | served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['arch']} | {r['head']} | {r['input']} | {r['spread']} | {r['fp32']} | {r['ranked']} | "
              f"{r['int8']} | {r['served']} |" for r in rows]
    lines += ["", "Parity problems (fp32 diff > bound, labels ranked otherwise, export or serving failed): "
              + ("none." if not bugs else "")]
    lines += [f"- {b}" for b in bugs]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
