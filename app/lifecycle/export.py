"""Export a fine-tuned checkpoint to ONNX, check parity with PyTorch, quantize behind the accuracy gate, publish."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.drift import write_reference
from app.errors import ModelLoadError
from app.lifecycle import LifecycleError
from app.lifecycle.checkpoint import checkpoint_task, choose_max_length, read_checkpoint, trained_on_pairs
from app.lifecycle.data import BUILTIN_PAIRS, BUILTIN_SAMPLE, read_gate_data
from app.lifecycle.figures import classification_figures
from app.lifecycle.gate import (
    TOKEN_MIN_ENTITY_F1,
    Gate,
    GateData,
    TeacherReference,
    compare,
    compare_entities,
    entity_verdict,
    judge_student,
    verdict,
)
from app.lifecycle.golden import golden_sample, reference_with_parity, store_golden
from app.lifecycle.publish import check_name, publish, staging
from app.lifecycle.quantize import (
    SMOOTH_ALPHA,
    Recipe,
    activation_maxima,
    matmul_sensitivity,
    quantize,
    smooth_quant,
    to_fp16,
)
from app.lifecycle.runner import open_artifact, probabilities
from app.repository import TOKENIZER_FILE, Artifact, GuardSpec, ModelConfig, read_config, write_config
from app.scores import Head
from app.tokenizer import TextInput, TextTokenizer

TOKEN_TASK = "token-classification"
GUARD_MARGIN = 0.02  # app.guard: the demo keeps >= 99 % of fp32's decisions at every batch size (docs/int8.md)
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
    # Texts to calibrate INT8 on (training texts, never the gate's): given, a sequence model's int8 ladder starts
    # from the SmoothQuant-rescaled graph with its most sensitive MatMul in fp32 (smooth_graph, docs/int8.md).
    calibration_texts: list[TextInput] | None = None
    # A single-label INT8 artifact's guard (app.guard): rows whose top-two probability margin is under this are
    # decided by the fp32 graph; 0: no guard.
    guard_margin: float = GUARD_MARGIN
    # Distillation: the student's fp32 must pass this gate against its teacher, or nothing is published.
    teacher: TeacherReference | None = None
    # Figures measured on the finished version folder (artifacts and config in place) just before it is published,
    # merged into the report (distill: the teacher's and the student's speed, side by side).
    measure_staged: Callable[[Path, ModelConfig], dict[str, Any]] | None = None


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- checks before anything is written ----


# ---- steps ----


def builtin_data(source: Path) -> GateData:
    """Without evaluation data: the built-in texts, or for a checkpoint trained on pairs, pairs of them."""
    if trained_on_pairs(source):
        return GateData(texts=list(BUILTIN_PAIRS), truth=None, source="built-in sample pairs")
    return GateData(texts=BUILTIN_SAMPLE, truth=None, source="built-in sample")


def quiet_libraries() -> None:
    """Their notices ("deduplication check requires accelerate", "torch_dtype is deprecated") are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("optimum").setLevel(logging.ERROR)


def export_fp32(source: Path, work: Path, optimize: str, task: str = "text-classification") -> Path:
    from optimum.exporters.onnx import main_export

    quiet_libraries()
    out = work / "fp32"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants: the parity check is the real test
            main_export(str(source), output=out, task=task, do_validation=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many unrelated types
        raise LifecycleError(f"{source}: ONNX export failed: {str(exc).splitlines()[0]}") from None
    if optimize == "none":
        return out / "model.onnx"
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    optimizer = ORTOptimizer.from_pretrained(out, file_names=["model.onnx"])
    optimizer.optimize(getattr(AutoOptimizationConfig, optimize)(), save_dir=work / "optimized")
    return work / "optimized" / "model_optimized.onnx"


def measure(
    folder: Path, config: ModelConfig, artifact: Artifact, data: GateData, provider: str = "cpu"
) -> tuple[np.ndarray, dict]:
    model = open_artifact(folder, config, artifact, provider)
    probs, seconds = probabilities(model, data.texts, progress=f"evaluating {artifact.file}")
    cost: dict[str, Any] = {
        "size_mb": round((folder / artifact.file).stat().st_size / 1e6, 1),
        "sequences_per_s": round(len(data.texts) / seconds, 1),
    }
    if model.guard is not None:  # what the guard did on the gate texts (app.guard)
        done = model.guard.describe()
        cost["guard"] = {"margin": done["margin"], "rechecked": done["rechecked"], "changed": done["changed"],
                         "rows": done["rows"], "rechecked_share": round(done["rechecked"] / max(done["rows"], 1), 4)}
    return probs, cost


def quantize_behind_gate(
    request: ExportRequest, folder: Path, fp32_graph: Path, config: ModelConfig, data: GateData,
    reference: np.ndarray, gate_report: dict[str, Any],
) -> tuple[Artifact | None, np.ndarray | None]:
    """Try recipes from cheapest to safest and keep the first that passes the gate; each attempt's figures go
    into gate_report["attempts"]. Returns the int8 artifact (None when none passed) and its probabilities."""
    target = ARTIFACTS["int8"]
    if request.guard_margin > 0 and config.task != TOKEN_TASK and config.head.single_label:
        target = target.model_copy(update={"guard": GuardSpec(margin=request.guard_margin,
                                                              reference=ARTIFACTS["fp32"].file)})
    attempts = gate_report.setdefault("attempts", [])
    tokens = config.task == TOKEN_TASK
    # A token model: its gate texts' tokens, to read each text's BIO tags off the per-token rows (gate.token_tags).
    encoded = (TextTokenizer(folder / TOKENIZER_FILE, config.max_length).encode_tokens(data.texts)  # type: ignore
               if tokens else None)

    smoothed, ranking = fp32_graph, None
    if request.calibration_texts and not tokens:
        say(f"  SmoothQuant (alpha {SMOOTH_ALPHA}) on {len(request.calibration_texts)} calibration texts ...")
        smoothed, ranking = smooth_graph(fp32_graph, folder, config, request.calibration_texts)
        gate_report["smoothquant"] = {"alpha": SMOOTH_ALPHA, "calibration_texts": len(request.calibration_texts)}

    def attempt(recipe: Recipe) -> np.ndarray | None:
        source = fp32_graph if recipe.smooth_alpha is None else smoothed
        quantize(source, folder / target.file, recipe, optimized=request.optimize != "none")
        probs, cost = measure(folder, config, target, data)
        if tokens:
            figures = compare_entities(reference, probs, encoded, config.head)
            why = entity_verdict(figures, request.gate)
        else:
            figures = compare(reference, probs, data, config.head)
            why = verdict(figures, request.gate)
        attempts.append({"recipe": recipe.describe(), **figures, **cost, "passed": why is None, "why": why})
        measured = (f"entity F1 {figures['entity_f1']:.4f}, token agreement {figures['token_agreement']:.4f}"
                    if tokens else f"agreement {figures['agreement']:.4f}")
        guarded = cost.get("guard")
        say(f"  {recipe.describe()}: {measured}, max prob diff {figures['max_prob_diff']:.4f}, {cost['size_mb']} MB, "
            f"{cost['sequences_per_s']} seq/s" + (f", guard: {guarded['rechecked']} of {guarded['rows']} rows "
                                                 f"rechecked in fp32, {guarded['changed']} decisions changed"
                                                 if guarded else "") + (f" -> rejected: {why}" if why else " -> passes"))
        return probs if why is None else None

    if tokens:
        say(f"quantizing to int8, gate: entity F1 against fp32's entities >= {request.gate.min_agreement} on "
            f"{len(data.texts)} texts ({data.source})")
    else:
        say(f"quantizing to int8, gate: agreement >= {request.gate.min_agreement}, accuracy loss <= "
            f"{request.gate.max_accuracy_loss} on {len(data.texts)} texts ({data.source})")
    probs = attempt(Recipe(per_channel=True) if ranking is None else
                    Recipe(fp32_matmuls=tuple(ranking[:1]), smooth_alpha=SMOOTH_ALPHA))
    if tokens:  # gated by entities
        gate_report["int8_gate"] = (
            "entity-level micro-F1 (seqeval, default mode) of INT8's entities against fp32's, from the BIO tags of "
            f"the gate texts' tokens (special tokens left out), >= {request.gate.min_agreement}; token-label "
            "agreement recorded")
        gate_report["threshold"] = request.gate.min_agreement
    if probs is None:  # a token model's MatMuls ranked by their effect on every token's scores (padding included)
        alpha, counts = (None, (1, 2, 4, 8)) if ranking is None else (SMOOTH_ALPHA, (2, 4, 8))
        if ranking is None:
            say("  measuring each MatMul's effect on the output ...")
            tokenizer = TextTokenizer(folder / TOKENIZER_FILE, min(SENSITIVITY_LENGTH, config.max_length))
            ranking = [name for name, _ in matmul_sensitivity(fp32_graph, tokenizer, data.texts[:SENSITIVITY_TEXTS],
                                                                 config.head)]
        gate_report["most_sensitive_matmuls"] = ranking[:8]
        # Leave the most harmful MatMuls in fp32, a few more each time; last, the embeddings too.
        recipes = [Recipe(fp32_matmuls=tuple(ranking[:count]), smooth_alpha=alpha) for count in counts]
        recipes.append(Recipe(fp32_matmuls=tuple(ranking[:8]), fp32_embeddings=True, smooth_alpha=alpha))
        for recipe in recipes:
            probs = attempt(recipe)
            if probs is not None:
                break
    if tokens:  # the published attempt's figures, else the closest miss's
        kept = next((a for a in attempts if a["passed"]), max(attempts, key=lambda a: a["entity_f1"]))
        gate_report["entity_f1"], gate_report["token_agreement"] = kept["entity_f1"], kept["token_agreement"]
    if probs is None:
        (folder / target.file).unlink()
        return None, None
    chosen = next(a["recipe"] for a in attempts if a["passed"])
    return target.model_copy(update={"quantization": chosen}), probs


def smooth_graph(fp32_graph: Path, folder: Path, config: ModelConfig, texts: list[TextInput]) -> tuple[Path, list[str]]:
    """SmoothQuant's rescaled copy of the fp32 graph (beside it in the work folder), from the calibration texts'
    activations, and its weight MatMuls ranked by their int8 effect on the first of those texts."""
    smoothed = fp32_graph.with_name(f"{fp32_graph.stem}_smoothed.onnx")
    maxima = activation_maxima(fp32_graph, TextTokenizer(folder / TOKENIZER_FILE, config.max_length), texts)
    smooth_quant(fp32_graph, smoothed, maxima, SMOOTH_ALPHA)
    tokenizer = TextTokenizer(folder / TOKENIZER_FILE, min(SENSITIVITY_LENGTH, config.max_length))
    ranking = [name for name, _ in matmul_sensitivity(smoothed, tokenizer, texts[:SENSITIVITY_TEXTS], config.head)]
    return smoothed, ranking


def export_model(request: ExportRequest) -> tuple[Path, dict[str, Any]]:
    """Everything happens in a staging folder that is renamed into place only when complete."""
    started = time.perf_counter()
    check_name(request.name)
    hf_config, tokenizer = read_checkpoint(request.source)
    task = checkpoint_task(hf_config)
    labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    max_length, why = choose_max_length(hf_config, tokenizer, request.max_length, request.source)
    if request.max_length is None:  # chosen here: say which and why
        say(f"max_length {max_length} tokens per text: {why}; --max-length to change")
    if request.version is not None and (request.repository / request.name / str(request.version)).exists():
        raise LifecycleError(f"{request.repository / request.name / str(request.version)} already exists")
    data = request.gate_data or builtin_data(request.source)
    if not data.texts:
        raise LifecycleError("the evaluation data holds no texts")

    with staging(request.repository, request.name) as folder:
        work = folder / ".work"
        say(f"exporting {request.source} to ONNX ...")
        fp32_graph = export_fp32(request.source, work, request.optimize, task)
        shutil.copyfile(fp32_graph, folder / ARTIFACTS["fp32"].file)
        tokenizer.save_pretrained(folder)
        fp32 = ARTIFACTS["fp32"].model_copy(
            update={"quantization": None if request.optimize == "none" else f"fp32 optimised {request.optimize}"}
        )
        # The head as the pipeline reads it: labels in id2label order, problem_type, the score function they imply.
        head = Head(tuple(labels), hf_config.problem_type)
        config = ModelConfig(task=task, labels=labels, problem_type=head.problem_type, function=head.function,
                             max_length=max_length, artifacts=[fp32])
        write_config(folder, config)

        # Golden outputs: PyTorch's probabilities on sample texts. The fp32 graph must match them (parity); every
        # engine must reproduce them within the gate before it serves, on whatever machine (app.loader).
        golden_texts = golden_sample(data.texts)
        torch_golden, parity = reference_with_parity(request.source, tokenizer, folder, config, fp32, golden_texts)
        say(f"parity: fp32 ONNX vs PyTorch max probability difference {parity:.2e} on {len(golden_texts)} texts")
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
                # Regression: the bound covers the published INT8's measured drift with a margin (Head.with_bound).
                honest = config.head.with_bound(reference, int8_probs).bound
                config = config.model_copy(update={"regression_bound": honest})
                if request.teacher is not None:  # what the CPU will serve, against the teacher: recorded
                    report["teacher_gate"]["int8"] = judge_student(request.teacher, int8_probs, data, config.head)
            report["gate"]["published"] = [a.precision for a in artifacts]  # int8 beside fp32, or fp32 alone
        elif request.quantize == "fp16":
            artifacts.insert(0, add_fp16(folder, fp32_graph, config, data, reference, report))
        if data.truth is not None and config.head.single_label:  # class labels
            report["evaluation"] = {"fp32": classification_figures(data.truth, reference.argmax(1).tolist(), labels)}
            if request.quantize == "int8" and artifacts[0].precision == "int8":
                report["evaluation"]["int8"] = classification_figures(data.truth, int8_probs.argmax(1).tolist(), labels)
        config = config.model_copy(update={"artifacts": artifacts})
        if config.task != TOKEN_TASK:  # drift.json: what the artifact a CPU serves made of the gate texts (app.drift)
            served = int8_probs if artifacts[0].precision == "int8" else reference
            report["drift"] = write_reference(folder, served, data.texts, config.head,
                                              TextTokenizer(folder / TOKENIZER_FILE, config.max_length), data.source,
                                              artifacts[0].file)
        report["golden"] = store_golden(folder, config, golden_texts, torch_golden, request.gate, data.source)
        if request.measure_staged is not None:
            report.update(request.measure_staged(folder, config))
        report["export_s"] = round(time.perf_counter() - started, 1)
        config = config.model_copy(update={"report": report})
        write_config(folder, config)
        shutil.rmtree(work)
        read_config(folder)  # what the server will read: refuse to publish anything it would reject
        return publish(folder, request.version), report


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


TOKEN_DATA_SUFFIXES = (".conll", ".txt", ".jsonl", ".json")


def token_gate_data(paths: list[Path]) -> GateData:
    """A token model's gate texts from CoNLL (each sentence's words joined by spaces) or JSONL (the text) files."""
    from app.lifecycle.data import TaggedWords, read_token_data

    texts = [" ".join(e.words) if isinstance(e, TaggedWords) else e.text
             for path in paths for e in read_token_data(path)]
    return GateData(texts=[t for t in texts if t.strip()], truth=None, source=", ".join(str(p) for p in paths))


def main(args: argparse.Namespace) -> None:
    source = Path(args.source)
    if args.require_int8 and args.quantize != "int8":
        raise LifecycleError(f"--require-int8 cannot go with --quantize {args.quantize}")
    gate_data = None
    hf_config, _ = read_checkpoint(source)
    tokens = checkpoint_task(hf_config) == TOKEN_TASK
    if args.eval_data:
        labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
        head = Head(tuple(labels), hf_config.problem_type)  # class labels are read for a single-label head only
        paths = [Path(p) for p in args.eval_data]
        if tokens and all(p.suffix.lower() in TOKEN_DATA_SUFFIXES for p in paths):
            gate_data = token_gate_data(paths)
        else:  # CSV/TSV: the text column (a token model: texts only)
            gate_data = read_gate_data(paths, args.text_column, args.label_column,
                                       labels if head.single_label and not tokens else None, args.text_pair_column)
    calibration = None  # training texts for SmoothQuant: never the gate's (--eval-data)
    if args.calibration_data:
        calibration = read_gate_data([Path(p) for p in args.calibration_data], args.text_column, args.label_column,
                                     None, args.text_pair_column).texts
    # --min-agreement: a sequence model's decision agreement (default 0.97); a token model's entity F1 (0.95).
    min_agreement = args.min_agreement
    if min_agreement is None:
        min_agreement = TOKEN_MIN_ENTITY_F1 if tokens else Gate().min_agreement
    request = ExportRequest(
        source=source, name=args.name, repository=Path(args.model_repository), version=args.version,
        quantize=args.quantize, optimize=args.optimize, max_length=args.max_length, gate_data=gate_data,
        gate=Gate(min_agreement=min_agreement, max_accuracy_loss=args.max_accuracy_loss,
                  max_drift_share=args.max_drift_share),
        fp32_when_gate_fails=not args.require_int8, calibration_texts=calibration, guard_margin=args.guard_margin,
    )
    try:
        path, report = export_model(request)
    except GateFailed as exc:
        print(json.dumps(exc.report["gate"], indent=2), file=sys.stderr)  # everything measured, for the record
        raise
    files = ", ".join(a.file for a in read_config(path).artifacts)
    print(f"published {path} ({files}) in {report['export_s']:.0f} s")
    if "entity_f1" in report["gate"]:
        gate = report["gate"]
        print(f"int8 gate (token model): entity F1 {gate['entity_f1']:.4f} against fp32's entities (>= "
              f"{gate['threshold']}), token agreement {gate['token_agreement']:.4f} on {gate['texts']} texts")
    if "int8_refused" in report["gate"]:
        print(f"int8 refused, fp32 only: {report['gate']['int8_refused']}")
