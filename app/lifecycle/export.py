"""Export a fine-tuned checkpoint to ONNX, check parity with PyTorch, quantize behind the accuracy gate, publish."""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ModelLoadError
from app.lifecycle import LifecycleError
from app.lifecycle.data import BUILTIN_SAMPLE, column, read_table
from app.lifecycle.gate import Gate, GateData, TeacherReference, compare, judge_student, verdict
from app.lifecycle.publish import check_name, publish, staging
from app.lifecycle.quantize import Recipe, matmul_sensitivity, quantize, to_fp16
from app.lifecycle.runner import open_artifact, probabilities
from app.lifecycle.figures import classification_figures
from app.scores import Head
from app.repository import TOKENIZER_FILE, Artifact, Golden, ModelConfig, read_config, write_config, write_golden
from app.tokenizer import TextTokenizer

PARITY_TOLERANCE = 1e-3  # largest fp32 ONNX vs PyTorch probability difference accepted at export
GOLDEN_TEXTS = 256  # evaluation texts kept with their PyTorch probabilities, for the gate every engine passes at load
# The golden gate's bound on any probability: INT8 drifts up to ~0.1 on the demo model, a broken engine far more.
GOLDEN_MAX_PROB_DIFF = 0.25
# Enough to rank the MatMuls (on the demo model, the same top 4 as 48 full-length texts, in a fifth of the time).
SENSITIVITY_TEXTS, SENSITIVITY_LENGTH = 32, 64
ARTIFACTS = {
    "int8": Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"]),
    "fp16": Artifact(file="model.fp16.onnx", precision="fp16", providers=["cuda"]),
    "fp32": Artifact(file="model.onnx", precision="fp32", providers=["cuda", "openvino", "cpu"]),
}


class GateFailed(LifecycleError):
    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ExportRequest:
    source: Path
    name: str
    repository: Path
    version: int | None = None
    quantize: str = "int8"  # int8 | fp16 | none
    optimize: str = "none"  # none | O1 | O2 | O3
    max_length: int | None = None
    gate_data: GateData | None = None
    gate: Gate = field(default_factory=Gate)
    # Publish fp32 alone (with a warning, and why int8 was refused in the report) instead of nothing: the CLI's
    # default; `--require-int8` (and distill) publish nothing then.
    fp32_when_gate_fails: bool = False
    extra_report: dict[str, Any] = field(default_factory=dict)
    # Distillation: the student's fp32 must pass this gate against its teacher, or nothing is published.
    teacher: TeacherReference | None = None
    # Figures measured on the finished version folder (artifacts and config in place) just before it is published,
    # merged into the report (distill: the teacher's and the student's speed, side by side).
    measure_staged: Callable[[Path, ModelConfig], dict[str, Any]] | None = None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- checks before anything is written ----


def read_checkpoint(source: Path):
    """The checkpoint's config and fast tokenizer, or a one-line reason it cannot be exported."""
    from transformers import AutoConfig, AutoTokenizer

    from app.lifecycle.architectures import check_architecture

    if not (source / "config.json").is_file():
        raise LifecycleError(f"{source}: no config.json; give a fine-tuned Hugging Face model folder (bertserve train)")
    config = AutoConfig.from_pretrained(source)
    check_architecture(config, str(source))
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        raise LifecycleError(
            f"{source}: a {config.architectures} checkpoint, not a sequence classifier; fine-tune it first "
            "with `bertserve train`"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError) as exc:
        raise LifecycleError(f"{source}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise LifecycleError(f"{source}: no fast tokenizer (tokenizer.json); save one with a fast tokenizer class")
    if tokenizer.pad_token is None:  # texts of a batch are padded to one length, for PyTorch and for serving
        raise LifecycleError(f"{source}: its tokenizer has no padding token; set one (pad_token) and save it")
    return config, tokenizer


def position_limit(config) -> int:
    # RoBERTa-style models offset positions by padding_idx + 1.
    offset = 2 if config.model_type in {"roberta", "xlm-roberta", "camembert"} else 0
    return getattr(config, "max_position_embeddings", 512) - offset


def trained_length(source: Path) -> int | None:
    """The length the checkpoint was fine-tuned with, where `bertserve train` or `distill --output` recorded it
    (report.json: options.max_length)."""
    try:
        length = json.loads((source / "report.json").read_text())["options"]["max_length"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return length if isinstance(length, int) and length > 0 else None


def choose_max_length(config, tokenizer, wanted: int | None, source: Path | None = None,
                      cap: int = 512) -> tuple[int, str]:
    """Tokens per text and where that figure comes from: as asked; else the length the checkpoint was trained with,
    where recorded (a longer one costs time on long texts and gains nothing); else the tokenizer's limit, within the
    model's positions and `cap`."""
    positions = position_limit(config)
    if wanted is not None:
        if wanted > positions:
            raise LifecycleError(f"--max-length {wanted} exceeds the model's {positions} positions")
        return wanted, "--max-length"
    trained = trained_length(source) if source is not None else None
    if trained is not None:
        return min(trained, positions, 512), f"the length it was trained with, recorded in {source / 'report.json'}"
    limit = min(positions, cap, tokenizer.model_max_length)
    return limit, (f"the tokenizer's limit (model_max_length {tokenizer.model_max_length}, {positions} positions, "
                   f"at most {cap}); no training length recorded (report.json of bertserve train)")


def read_gate_data(paths: list[Path], text_column: str, label_column: str, labels: list[str]) -> GateData:
    """Texts (and labels when the column exists and matches the model's labels) from CSV/TSV files."""
    texts, truth, all_labelled = [], [], True
    for path in paths:
        rows = read_table(path)
        file_texts = column(rows, text_column, str(path))
        texts += file_texts
        if label_column in rows[0]:
            file_labels = column(rows, label_column, str(path))
            unknown = sorted(set(file_labels) - set(labels))
            if unknown:
                raise LifecycleError(f"{path}: labels {unknown[:5]} are not the model's labels {labels}")
            truth += [labels.index(lab) for lab in file_labels]
        else:
            all_labelled = False
    keep = [i for i, t in enumerate(texts) if t]
    return GateData(
        texts=[texts[i] for i in keep],
        truth=[truth[i] for i in keep] if all_labelled else None,
        source=", ".join(str(p) for p in paths),
    )


# ---- steps ----


def quiet_libraries() -> None:
    """Their notices ("deduplication check requires accelerate", "torch_dtype is deprecated") are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("optimum").setLevel(logging.ERROR)


def export_fp32(source: Path, work: Path, optimize: str) -> Path:
    from optimum.exporters.onnx import main_export

    quiet_libraries()
    out = work / "fp32"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants: the parity check is the real test
            main_export(str(source), output=out, task="text-classification", do_validation=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
        raise LifecycleError(f"{source}: ONNX export failed: {str(exc).splitlines()[0]}") from None
    if optimize == "none":
        return out / "model.onnx"
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(out, file_names=["model.onnx"])
    optimizer.optimize(getattr(AutoOptimizationConfig, optimize)(), save_dir=work / "optimized")
    return work / "optimized" / "model_optimized.onnx"


def pytorch_probabilities(source: Path, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """The checkpoint's own fp32 scores, by its head as the text-classification pipeline applies it (app.scores.Head
    from its config): the reference every artifact and engine is held to."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    head = Head(tuple(model.config.id2label[i] for i in range(model.config.num_labels)), model.config.problem_type)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rows.append(head.scores(logits.float().numpy()))
    return np.concatenate(rows)


def golden_sample(texts: list[str]) -> list[str]:
    """Up to GOLDEN_TEXTS of the evaluation texts, a seeded sample in their original order."""
    if len(texts) <= GOLDEN_TEXTS:
        return list(texts)
    keep = sorted(random.Random(0).sample(range(len(texts)), GOLDEN_TEXTS))
    return [texts[i] for i in keep]


def measure(
    folder: Path, config: ModelConfig, artifact: Artifact, data: GateData, provider: str = "cpu"
) -> tuple[np.ndarray, dict]:
    probs, seconds = probabilities(open_artifact(folder, config, artifact, provider), data.texts,
                                   progress=f"evaluating {artifact.file}")
    return probs, {
        "size_mb": round((folder / artifact.file).stat().st_size / 1e6, 1),
        "sequences_per_s": round(len(data.texts) / seconds, 1),
    }


def quantize_behind_gate(
    request: ExportRequest, folder: Path, fp32_graph: Path, config: ModelConfig, data: GateData,
    reference: np.ndarray, gate_report: dict[str, Any],
) -> tuple[Artifact | None, np.ndarray | None]:
    """Try recipes from cheapest to safest and keep the first that passes the gate; each attempt's figures go
    into gate_report["attempts"]. Returns the int8 artifact (None when none passed) and its probabilities."""
    target = ARTIFACTS["int8"]
    attempts = gate_report.setdefault("attempts", [])

    def attempt(recipe: Recipe) -> np.ndarray | None:
        quantize(fp32_graph, folder / target.file, recipe, optimized=request.optimize != "none")
        probs, cost = measure(folder, config, target, data)
        figures = compare(reference, probs, data, config.head)
        why = verdict(figures, request.gate)
        attempts.append({"recipe": recipe.describe(), **figures, **cost, "passed": why is None, "why": why})
        say(f"  {recipe.describe()}: agreement {figures['agreement']:.4f}, max prob diff "
            f"{figures['max_prob_diff']:.4f}, {cost['size_mb']} MB, {cost['sequences_per_s']} seq/s"
            + (f" -> rejected: {why}" if why else " -> passes"))
        return probs if why is None else None

    say(f"quantizing to int8, gate: agreement >= {request.gate.min_agreement}, accuracy loss <= "
        f"{request.gate.max_accuracy_loss} on {len(data.texts)} texts ({data.source})")
    probs = attempt(Recipe(per_channel=True))
    if probs is None:
        say("  measuring each MatMul's effect on the output ...")
        tokenizer = TextTokenizer(folder / TOKENIZER_FILE, min(SENSITIVITY_LENGTH, config.max_length))
        ranking = [name for name, _ in matmul_sensitivity(fp32_graph, tokenizer, data.texts[:SENSITIVITY_TEXTS],
                                                             config.head)]
        gate_report["most_sensitive_matmuls"] = ranking[:8]
        # Leave the most harmful MatMuls in fp32, a few more each time; last, the embeddings too.
        recipes = [Recipe(fp32_matmuls=tuple(ranking[:count])) for count in (1, 2, 4, 8)]
        recipes.append(Recipe(fp32_matmuls=tuple(ranking[:8]), fp32_embeddings=True))
        for recipe in recipes:
            probs = attempt(recipe)
            if probs is not None:
                break
    if probs is None:
        (folder / target.file).unlink()
        return None, None
    chosen = next(a["recipe"] for a in attempts if a["passed"])
    return target.model_copy(update={"quantization": chosen}), probs


def export_model(request: ExportRequest) -> tuple[Path, dict[str, Any]]:
    """Everything happens in a staging folder that is renamed into place only when complete."""
    started = time.perf_counter()
    check_name(request.name)
    hf_config, tokenizer = read_checkpoint(request.source)
    labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    max_length, why = choose_max_length(hf_config, tokenizer, request.max_length, request.source)
    if request.max_length is None:  # chosen here: say which and why
        say(f"max_length {max_length} tokens per text: {why}; --max-length to change")
    if request.version is not None and (request.repository / request.name / str(request.version)).exists():
        raise LifecycleError(f"{request.repository / request.name / str(request.version)} already exists")
    data = request.gate_data or GateData(texts=BUILTIN_SAMPLE, truth=None, source="built-in sample")
    if not data.texts:
        raise LifecycleError("the evaluation data holds no texts")

    with staging(request.repository, request.name) as folder:
        work = folder / ".work"
        say(f"exporting {request.source} to ONNX ...")
        fp32_graph = export_fp32(request.source, work, request.optimize)
        shutil.copyfile(fp32_graph, folder / ARTIFACTS["fp32"].file)
        tokenizer.save_pretrained(folder)
        fp32 = ARTIFACTS["fp32"].model_copy(
            update={"quantization": None if request.optimize == "none" else f"fp32 optimised {request.optimize}"}
        )
        # The head as the pipeline reads it: labels in id2label order, problem_type, the score function they imply.
        head = Head(tuple(labels), hf_config.problem_type)
        config = ModelConfig(labels=labels, problem_type=head.problem_type, function=head.function,
                             max_length=max_length, artifacts=[fp32])
        write_config(folder, config)

        # Golden outputs: PyTorch's probabilities on sample texts. The fp32 graph must match them (parity); every
        # engine must reproduce them within the gate before it serves, on whatever machine (app.loader).
        golden_texts = golden_sample(data.texts)
        torch_golden = pytorch_probabilities(request.source, tokenizer, golden_texts, max_length)
        onnx_golden, _ = probabilities(open_artifact(folder, config, fp32), golden_texts)
        parity = float(np.abs(torch_golden - onnx_golden).max())
        say(f"parity: fp32 ONNX vs PyTorch max probability difference {parity:.2e} on {len(golden_texts)} texts")
        if parity > PARITY_TOLERANCE:
            raise LifecycleError(f"the ONNX graph differs from PyTorch by {parity:.2e} (> {PARITY_TOLERANCE})")
        reference, fp32_cost = measure(folder, config, fp32, data)
        # A regression head's agreement bound, from the fp32 values' spread (app.scores.Head.with_bound).
        config = config.model_copy(update={"regression_bound": config.head.with_bound(reference).bound})
        report: dict[str, Any] = {
            "source": str(request.source),
            "parity_max_prob_diff": float(f"{parity:.2e}"),
            "gate": {**asdict(request.gate), "data": data.source, "texts": len(data.texts)},
            "fp32": fp32_cost,
            **request.extra_report,
        }
        if request.teacher is not None:
            judged = report["teacher_gate"] = judge_student(request.teacher, reference, data, config.head)
            say(f"student vs teacher: agreement {judged['agreement']:.4f}" + (
                f", accuracy {judged['student_accuracy']:.4f} (teacher {judged['teacher_accuracy']:.4f})"
                if "student_accuracy" in judged else "") + (f" -> rejected: {judged['why']}" if judged["why"] else ""))
            if not judged["passed"]:
                raise GateFailed(f"the student misses its gate against the teacher, nothing published "
                                 f"({judged['why']})", report)
        artifacts = [fp32]
        if request.quantize == "int8":
            int8, int8_probs = quantize_behind_gate(request, folder, fp32_graph, config, data, reference, report["gate"])
            report["gate"]["chosen"] = int8.quantization if int8 else None
            if int8 is None:
                measured = "; ".join(f"{a['recipe']}: {a['why']}" for a in report["gate"]["attempts"])
                if not request.fp32_when_gate_fails:
                    raise GateFailed(f"no int8 recipe passed the accuracy gate, nothing published ({measured})", report)
                report["gate"]["int8_refused"] = f"no int8 recipe passed the accuracy gate ({measured})"
                say(f"WARNING: no int8 recipe passed the accuracy gate ({measured}); publishing fp32 only "
                    "(--require-int8 to publish nothing instead)")
            else:
                artifacts.insert(0, int8)
                if request.teacher is not None:  # what the CPU will serve, against the teacher: recorded
                    report["teacher_gate"]["int8"] = judge_student(request.teacher, int8_probs, data, config.head)
        elif request.quantize == "fp16":
            artifacts.insert(0, add_fp16(folder, fp32_graph, config, data, reference, report))
        if data.truth is not None and config.head.function == "softmax":  # class labels: a single-label head
            report["evaluation"] = {"fp32": classification_figures(data.truth, reference.argmax(1).tolist(), labels)}
            if request.quantize == "int8" and artifacts[0].precision == "int8":
                report["evaluation"]["int8"] = classification_figures(data.truth, int8_probs.argmax(1).tolist(), labels)
        config = config.model_copy(update={"artifacts": artifacts})
        golden, golden_figures = golden_outputs(folder, config, golden_texts, torch_golden, request.gate, data.source)
        write_golden(folder, golden)
        report["golden"] = {"texts": len(golden.texts), "min_agreement": golden.min_agreement,
                            "max_prob_diff": golden.max_prob_diff, "artifacts": golden_figures}
        if request.measure_staged is not None:
            report.update(request.measure_staged(folder, config))
        report["export_s"] = round(time.perf_counter() - started, 1)
        config = config.model_copy(update={"report": report})
        write_config(folder, config)
        shutil.rmtree(work)
        read_config(folder)  # what the server will read: refuse to publish anything it would reject
        return publish(folder, request.version), report


def golden_outputs(folder: Path, config: ModelConfig, texts: list[str], reference: np.ndarray, gate: Gate,
                   source: str) -> tuple[Golden, dict[str, dict]]:
    """The golden outputs and the gate every engine must pass on them at load, on any machine.

    The gate is the export gate's min_agreement, unless a published artifact itself scored lower on the golden
    pass: then that score less one text. The export gate judged the artifact on all the evaluation data, but
    dynamic INT8 scales activations per batch, so its decisions depend on which texts share a batch (on the demo
    model, 97.4 % agreement over all 379 reviews in batches of 8, 96.1 % over the 256 golden texts): the gate at
    load asks an engine to be as faithful on its machine as the published artifact was on the export machine."""
    figures = {}
    for artifact in config.artifacts:
        if artifact.precision != "fp32":  # fp16 is scored with onnxruntime's CPU kernels where there is no GPU
            probs, _ = probabilities(open_artifact(folder, config, artifact), texts)
            figures[artifact.file] = config.head.drift(reference, probs)
    floor = min([gate.min_agreement] + [f["agreement"] - 1 / len(texts) for f in figures.values()
                                        if f["agreement"] < gate.min_agreement])
    widest = max([GOLDEN_MAX_PROB_DIFF] + [f["max_prob_diff"] + 0.05 for f in figures.values()])
    golden = Golden(texts=texts, probabilities=reference.round(6).tolist(), min_agreement=round(min(1.0, floor), 4),
                    max_prob_diff=round(widest if config.head.function == "none" else min(1.0, widest), 4),
                    source=source)
    return golden, figures


def add_fp16(folder: Path, fp32_graph: Path, config: ModelConfig, data: GateData, reference, report) -> Artifact:
    import onnxruntime as ort

    artifact = ARTIFACTS["fp16"].model_copy(update={"quantization": "fp16 (io fp32)"})
    to_fp16(fp32_graph, folder / artifact.file)
    # Measured where it will run; without CUDA, onnxruntime's CPU kernels give the same numbers, only slower.
    provider = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    try:
        probs, cost = measure(folder, config, artifact, data, provider)
    except ModelLoadError as exc:
        report["fp16"] = {"measured": False, "why": str(exc)}
        return artifact
    report["fp16"] = {**compare(reference, probs, data, config.head), **cost, "provider": provider}
    return artifact


def main(args: argparse.Namespace) -> None:
    source = Path(args.source)
    if args.require_int8 and args.quantize != "int8":
        raise LifecycleError(f"--require-int8 cannot go with --quantize {args.quantize}")
    gate_data = None
    if args.eval_data:
        hf_config, _ = read_checkpoint(source)
        labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
        gate_data = read_gate_data([Path(p) for p in args.eval_data], args.text_column, args.label_column, labels)
    request = ExportRequest(
        source=source, name=args.name, repository=Path(args.model_repository), version=args.version,
        quantize=args.quantize, optimize=args.optimize, max_length=args.max_length, gate_data=gate_data,
        gate=Gate(min_agreement=args.min_agreement, max_accuracy_loss=args.max_accuracy_loss),
        fp32_when_gate_fails=not args.require_int8,
    )
    try:
        path, report = export_model(request)
    except GateFailed as exc:
        print(json.dumps(exc.report["gate"], indent=2), file=sys.stderr)  # everything measured, for the record
        raise
    files = ", ".join(a.file for a in read_config(path).artifacts)
    print(f"published {path} ({files}) in {report['export_s']:.0f} s")
    if "int8_refused" in report["gate"]:
        print(f"int8 refused, fp32 only: {report['gate']['int8_refused']}")
