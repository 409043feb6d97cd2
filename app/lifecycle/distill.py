"""`bertserve distill`: a smaller student from a fine-tuned teacher, gated against the teacher, published like any version.

1. The student keeps N of the teacher's transformer layers, spread evenly (first and last included), with the
   teacher's weights for them and for the embeddings and the classification head.
2. It learns the teacher's soft targets (KL divergence at temperature T, scaled by T^2), mixed with the true labels
   where the data has them; extra unlabeled texts are labelled by the teacher only. Seeded, with progress bars and
   early stopping on agreement with the teacher on a held-out part of the data (train.fit, the loop of `train`).
3. Then the path of `export`: ONNX export with the parity check, the artifacts for each provider, the golden outputs,
   the gate -- here against the teacher's fp32 probabilities (decision agreement, and accuracy loss when the
   evaluation data has labels) -- and atomic publishing. A student that misses the gate is not published.
4. Just before publishing, the teacher's and the student's served CPU artifacts are timed side by side in one run
   (alternating rounds, every CPU engine this machine has, as each would serve), and the figures are stored.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from app.lifecycle import LifecycleError
from app.lifecycle.data import BUILTIN_SAMPLE, column, read_table
from app.lifecycle.export import (
    ARTIFACTS, PARITY_TOLERANCE, ExportRequest, GateFailed, choose_max_length, export_fp32, export_model,
    pytorch_probabilities, read_checkpoint, read_gate_data, say,
)
from app.lifecycle.gate import Gate, GateData, TeacherReference
from app.lifecycle.figures import classification_figures
from app.lifecycle.train import TrainOptions, balanced_weights, collate, fit, predict, seed_everything
from app.repository import TOKENIZER_FILE, ModelConfig, read_config, read_golden, write_config

# The transformer layer stack of each architecture family, under model.base_model. ALBERT is absent on purpose:
# its layers share one set of weights, so fewer of them save no size.
LAYER_STACKS = {"distilbert": "transformer.layer"}  # every other supported family: "encoder.layer"
SPEED_ROUNDS = 3


@dataclass
class DistillOptions(TrainOptions):
    layers: int = 3
    temperature: float = 2.0
    # Weight of the teacher's soft targets where a true label is known (the rest goes to the label); texts without
    # a label learn from the teacher alone.
    soft_weight: float = 0.5
    learning_rate: float = 1e-4
    validation_fraction: float = 0.1


def spread(total: int, keep: int) -> list[int]:
    """`keep` of `total` layer indices, evenly spread, the first and the last included (one layer: the last)."""
    if not 1 <= keep < total:
        raise LifecycleError(f"--layers {keep}: the teacher has {total} layers; keep between 1 and {total - 1}")
    if keep == 1:
        return [total - 1]
    return [int(i * (total - 1) / (keep - 1) + 0.5) for i in range(keep)]


def layer_stack(model) -> tuple[Any, str]:
    """The module holding the layer list, and the list's attribute name."""
    path = LAYER_STACKS.get(model.config.model_type, "encoder.layer").split(".")
    if model.config.model_type == "albert":
        raise LifecycleError("ALBERT shares one set of weights across its layers: fewer layers save no size")
    parent = model.base_model
    for name in path[:-1]:
        parent = getattr(parent, name)
    return parent, path[-1]


def make_student(teacher: Path, layers: int):
    """The teacher with only `layers` of its layers, as a fresh model of that depth. Returns (student, kept)."""
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    kept = spread(model.config.num_hidden_layers, layers)
    parent, name = layer_stack(model)
    stack = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList([stack[i] for i in kept]))
    config = model.config
    config.num_hidden_layers = layers
    # A model built from the student's own config, so that what is trained is exactly what is saved and exported.
    student = AutoModelForSequenceClassification.from_config(config)
    student.load_state_dict(model.state_dict(), strict=True)
    return student, kept


def read_texts(path: Path, text_column: str) -> list[str]:
    """Unlabeled texts: a .txt file (one per line) or the text column of a CSV/TSV file."""
    if path.suffix.lower() == ".txt":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LifecycleError(f"{path}: cannot read ({exc.strerror})") from None
        return [line.strip() for line in lines if line.strip()]
    return [t for t in column(read_table(path), text_column, str(path)) if t]


def read_examples(path: Path, text_column: str, label_column: str, labels: list[str]) -> tuple[list[str], list[int]]:
    """Texts and class indices (-1 where a row has no label, or the file no label column)."""
    rows = read_table(path)
    texts = column(rows, text_column, str(path))
    given = column(rows, label_column, str(path)) if label_column in rows[0] else [""] * len(texts)
    unknown = sorted({lab for lab in given if lab} - set(labels))
    if unknown:
        raise LifecycleError(f"{path}: labels {unknown[:5]} are not the teacher's labels {labels}")
    pairs = [(t, labels.index(lab) if lab else -1) for t, lab in zip(texts, given) if t]
    if not pairs:
        raise LifecycleError(f"{path}: every row has an empty {text_column!r}")
    return [t for t, _ in pairs], [y for _, y in pairs]


def distillation_loss(student_logits, teacher_logits, targets, weights, options: DistillOptions) -> torch.Tensor:
    """Per text: T^2 KL(teacher_T || student_T), mixed with the (class-weighted) cross-entropy on the true label
    where there is one."""
    t = options.temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.softmax(teacher_logits / t, -1),
                    reduction="none").sum(-1) * t * t
    hard = F.cross_entropy(student_logits, targets.clamp(min=0), weight=weights, reduction="none")
    labelled = targets >= 0
    mixed = options.soft_weight * soft + (1 - options.soft_weight) * hard
    return torch.where(labelled, mixed, soft).mean()


def train_student(
    teacher: Path, texts: list[str], targets: list[int], output: Path, options: DistillOptions, tokenizer,
) -> tuple[dict[str, Any], list[int]]:
    """Build, distil and save the student to `output`. `targets`: class index or -1 (teacher only). Returns the
    training report and the indices of the held-out texts."""
    started = time.perf_counter()
    torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    student, kept = make_student(teacher, options.layers)
    labels = [teacher_model.config.id2label[i] for i in range(teacher_model.config.num_labels)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = tokenizer(texts, truncation=True, max_length=options.max_length)["input_ids"]
    say(f"teacher: {teacher_model.config.num_hidden_layers} layers; student keeps {kept}; labelling "
        f"{len(texts)} texts with the teacher ...")
    teacher_logits = torch.from_numpy(predict(teacher_model, encoded, pad_id))
    teacher_layers = teacher_model.config.num_hidden_layers
    del teacher_model

    # A seeded held-out part picks the best epoch by agreement with the teacher (labels are not needed for it).
    order = list(range(len(texts)))
    random.Random(options.seed).shuffle(order)
    n_val = max(1, round(options.validation_fraction * len(texts)))
    if len(texts) - n_val < 2:
        raise LifecycleError(f"only {len(texts)} texts: too few to distil with a held-out part; add data")
    val, train = order[:n_val], order[n_val:]
    train_ids = [encoded[i] for i in train]
    train_teacher = teacher_logits[train]
    train_targets = torch.tensor([targets[i] for i in train])
    labelled = [y for y in train_targets.tolist() if y >= 0]
    weights = balanced_weights(labelled, len(labels)) if labelled else None
    val_ids, val_teacher = [encoded[i] for i in val], teacher_logits[val].argmax(-1).numpy()
    val_truth = [targets[i] for i in val]

    def batch_loss(batch: list[int]) -> torch.Tensor:
        logits = student(**collate(train_ids, batch, pad_id)).logits
        return distillation_loss(logits, train_teacher[batch], train_targets[batch], weights, options)

    def validate() -> dict[str, Any]:
        decided = predict(student, val_ids, pad_id).argmax(axis=1)
        figures: dict[str, Any] = {"agreement": round(float((decided == val_teacher).mean()), 4)}
        known = [i for i, y in enumerate(val_truth) if y >= 0]
        if known:
            scored = classification_figures([val_truth[i] for i in known], decided[known].tolist(), labels)
            figures |= {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]}
        return figures

    history, best_epoch, best = fit(student, [len(x) for x in train_ids], batch_loss, validate, options,
                                    best_by="agreement")
    output.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(output)
    tokenizer.save_pretrained(output)
    report = {
        "teacher": str(teacher),
        "teacher_layers": teacher_layers,
        "layers": options.layers,
        "layers_kept": kept,
        "options": asdict(options),
        "train_size": len(train),
        "labelled": len(labelled),
        "validation_size": n_val,
        "best_epoch": best_epoch,
        "validation": best,
        "history": history,
        "training_s": round(time.perf_counter() - started, 1),
    }
    # As `bertserve train` does: a later `bertserve export` of this checkpoint reads its max_length here.
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report, val


# ---- speed: teacher and student side by side ----


def published_teacher(model_dir: Path, teacher: Path, tokenizer) -> Path | None:
    """The version of this model whose golden outputs the teacher checkpoint reproduces: its published export."""
    versions = sorted((p for p in model_dir.glob("*") if p.name.isdigit()), key=lambda p: -int(p.name))
    for path in versions:
        try:
            config = read_config(path)
            golden = read_golden(path, len(config.labels))
        except Exception:  # noqa: BLE001 - an unreadable version is simply not the teacher
            continue
        if golden is None:
            continue
        texts = golden.texts[:16]
        probs = pytorch_probabilities(teacher, tokenizer, texts, config.max_length)
        if probs.shape[1] == len(config.labels) and np.abs(probs - golden.probabilities[:16]).max() <= PARITY_TOLERANCE:
            return path
    return None


def teacher_artifacts(teacher: Path, published: Path | None, model_dir: Path, tokenizer, labels: list[str],
                      max_length: int, int8: bool, work: Path) -> tuple[Path, str]:
    """A folder holding the teacher's artifacts to time, and what it is: the given published version, else the
    version of this model the teacher was published as, else a scratch export (int8 per-channel, not gated)."""
    from app.lifecycle.quantize import Recipe, quantize

    if published is not None:
        read_config(published)
        return published, f"published {published}"
    found = published_teacher(model_dir, teacher, tokenizer)
    if found is not None:
        return found, f"published {found} (its golden outputs match the teacher)"
    say("the teacher has no published version here: exporting it to a scratch folder to time it ...")
    folder = work / "teacher"
    fp32_graph = export_fp32(teacher, work / "teacher-export", "none")
    folder.mkdir()
    shutil.copyfile(fp32_graph, folder / ARTIFACTS["fp32"].file)
    tokenizer.save_pretrained(folder)
    artifacts = [ARTIFACTS["fp32"]]
    if int8:
        quantize(fp32_graph, folder / ARTIFACTS["int8"].file, Recipe(), optimized=False)
        artifacts.insert(0, ARTIFACTS["int8"].model_copy(update={"quantization": Recipe().describe()}))
    write_config(folder, ModelConfig(labels=labels, max_length=max_length, artifacts=artifacts))
    return folder, f"scratch export ({'int8 per-channel, not gated' if int8 else 'fp32'})"


def side_by_side(models: dict[str, tuple[Path, ModelConfig]], texts: list[str], rounds: int = SPEED_ROUNDS
                 ) -> dict[str, Any]:
    """Raw sequences/s of each model's served CPU artifacts on every CPU engine this machine has (onnxruntime CPU
    on the INT8 artifact when there is one, else fp32; the OpenVINO provider on fp32 when its plugin lists a CPU
    device), each with the layout it would serve with, in length-sorted batches, rounds alternating between the
    models. Per model: the median rate of each engine and the fastest engine."""
    from app.engine import available, cpu_name
    from app.lifecycle.runner import probabilities
    from app.loader import TRIAL_BATCH, open_candidate
    from app.settings import Settings
    from app.tokenizer import TextTokenizer

    settings = Settings()
    skipped = {p: why for p in ("cpu", "openvino") if (why := available(p)) is not None}
    runs = []
    for who, (folder, config) in models.items():
        tokenizer = TextTokenizer(folder / TOKENIZER_FILE, config.max_length)
        for provider in ("cpu", "openvino"):
            artifact = config.artifact_for(provider)
            if provider not in skipped and artifact is not None:
                model = open_candidate(who, 0, folder, config, tokenizer, provider, artifact, settings)
                runs.append((who, f"{model.engine}, {len(model.engines)}x{model.engine.threads} threads", model))
    files = {(who, engine): model.engine.artifact.file for who, engine, model in runs}
    rates: dict[tuple[str, str], list[float]] = {(who, engine): [] for who, engine, _ in runs}
    for _ in range(rounds):
        for who, engine, model in runs:
            _, seconds = probabilities(model, texts, TRIAL_BATCH[model.engine.provider])
            rates[who, engine].append(len(texts) / seconds)
    result: dict[str, Any] = {"cpu": cpu_name(), "texts": len(texts), "rounds": rounds, "skipped": skipped}
    for who, (folder, config) in models.items():
        engines = {engine: round(statistics.median(r), 1) for (w, engine), r in rates.items() if w == who}
        best = max(engines, key=engines.__getitem__)
        result[who] = {"engines": engines, "best_engine": best, "sequences_per_s": engines[best],
                       "size_mb": round((folder / files[who, best]).stat().st_size / 1e6, 1)}  # of best's artifact
    if "teacher" in models and "student" in models:
        result["speedup"] = round(result["student"]["sequences_per_s"] / result["teacher"]["sequences_per_s"], 2)
    return result


# ---- the command ----


def main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    teacher = Path(args.teacher)
    hf_config, tokenizer = read_checkpoint(teacher)
    labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    spread(hf_config.num_hidden_layers, args.layers)  # a bad --layers fails before any work
    max_length, why = choose_max_length(hf_config, tokenizer, args.max_length, teacher, cap=128)
    say(f"max_length {max_length} tokens per text: {why}")
    options = DistillOptions(
        layers=args.layers, epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
        max_length=max_length, temperature=args.temperature, soft_weight=args.soft_weight, seed=args.seed,
    )
    texts, targets = read_examples(Path(args.data), args.text_column, args.label_column, labels)
    for path in args.unlabeled or []:
        extra = read_texts(Path(path), args.text_column)
        texts, targets = texts + extra, targets + [-1] * len(extra)
    eval_data = None
    if args.eval_data:
        eval_data = read_gate_data([Path(p) for p in args.eval_data], args.text_column, args.label_column, labels)
    repository = Path(args.model_repository)
    if args.version is not None and (repository / args.name / str(args.version)).exists():
        raise LifecycleError(f"{repository / args.name / str(args.version)} already exists")

    with tempfile.TemporaryDirectory(prefix="bertserve-distill-") as scratch:
        output = Path(args.output) if args.output else Path(scratch) / "student"
        training, held_out = train_student(teacher, texts, targets, output, options, tokenizer)
        if eval_data is None:  # texts the student never trained on, labelled where the data was
            truth = [targets[i] for i in held_out]
            eval_data = GateData([texts[i] for i in held_out], truth if min(truth) >= 0 else None,
                                 f"{len(held_out)} held-out texts of {args.data}")
        gate = Gate(min_agreement=args.min_agreement, max_accuracy_loss=args.max_accuracy_loss)
        say(f"gate against the teacher: agreement >= {gate.min_agreement}, accuracy loss <= "
            f"{gate.max_accuracy_loss} on {len(eval_data.texts)} texts ({eval_data.source})")
        reference = TeacherReference(str(teacher), pytorch_probabilities(teacher, tokenizer, eval_data.texts,
                                                                         max_length), gate)
        speed_texts = eval_data.texts if len(eval_data.texts) >= 32 else eval_data.texts + BUILTIN_SAMPLE

        def measure_speed(folder: Path, config: ModelConfig) -> dict[str, Any]:
            say(f"timing teacher and student side by side ({args.speed_rounds} rounds, {len(speed_texts)} texts) ...")
            with tempfile.TemporaryDirectory(prefix="bertserve-teacher-") as work:
                teacher_folder, how = teacher_artifacts(
                    teacher, Path(args.teacher_version) if args.teacher_version else None, repository / args.name,
                    tokenizer, labels, max_length, any(a.precision == "int8" for a in config.artifacts), Path(work))
                speed = side_by_side({"teacher": (teacher_folder, read_config(teacher_folder)),
                                      "student": (folder, config)}, speed_texts, args.speed_rounds)
            return {"speed": {**speed, "teacher_artifacts": how}}

        request = ExportRequest(
            source=output, name=args.name, repository=repository, version=args.version, quantize=args.quantize,
            optimize=args.optimize, max_length=max_length, gate_data=eval_data,
            gate=Gate(min_agreement=args.int8_min_agreement, max_accuracy_loss=args.int8_max_accuracy_loss),
            teacher=reference, measure_staged=measure_speed, extra_report={"distillation": training},
        )
        try:
            path, report = export_model(request)
        except GateFailed as exc:
            failed = exc.report.get("teacher_gate", {})
            print(json.dumps(failed if not failed.get("passed", True) else exc.report["gate"], indent=2),
                  file=sys.stderr)
            raise
    judged, speed = report["teacher_gate"], report["speed"]
    served = judged.get("int8", judged)
    line = f"agreement with the teacher {judged['agreement']:.4f}" + (
        f" (int8 {served['agreement']:.4f})" if served is not judged else "")
    if "student_accuracy" in judged:
        line += (f", accuracy {judged['student_accuracy']:.4f} (teacher {judged['teacher_accuracy']:.4f}), macro-F1 "
                 f"{judged['student_macro_f1']:.4f} (teacher {judged['teacher_macro_f1']:.4f})")
    files = ", ".join(a.file for a in read_config(path).artifacts)
    print(f"published {path} ({files}): {options.layers} of {training['teacher_layers']} layers "
          f"{training['layers_kept']}, {line}")
    print(f"raw sequences/s on {speed['cpu']}: teacher {speed['teacher']['sequences_per_s']} "
          f"({speed['teacher']['best_engine']}), student {speed['student']['sequences_per_s']} "
          f"({speed['student']['best_engine']}): {speed['speedup']}x")
    print(f"distilled in {time.perf_counter() - started:.0f} s (training {training['training_s']:.0f} s, "
          f"export {report['export_s']:.0f} s)")
