"""`bertserve distill`: a smaller student from a fine-tuned teacher, gated against the teacher, published like any version.

1. The student keeps N of the teacher's transformer layers, spread evenly (first and last included), with the
   teacher's weights for them and for the embeddings and the classification head.
2. It learns the teacher's soft targets (KL divergence at temperature T, scaled by T^2), mixed with the true labels
   where the data has them; extra unlabeled texts are labelled by the teacher only. Seeded, with progress bars and
   early stopping on agreement with the teacher on a held-out part of the data (train.fit, the loop of `train`).
3. Then the path of `export`: ONNX export with the parity check, the artifacts for each provider, the golden outputs,
   the gate -- here against the teacher's fp32 probabilities (decision agreement, and accuracy loss when the
   evaluation data has labels) -- and atomic publishing. A student that misses the gate is not published; one
   whose INT8 artifact misses the INT8 gate is published fp32 only (as export; --require-int8: nothing).
   Texts or text pairs (--text-pair-column), encoded with the tokenizer's pair template as served.
4. Just before publishing, the teacher's and the student's served CPU artifacts are timed side by side in one run
   (alternating rounds, every CPU engine this machine has, as each would serve), and the figures are stored.

`bertserve prune` (app.lifecycle.prune) makes its smaller model another way and then goes the same road: `recover`
is the one distillation loop (with --augment's teacher-labelled variants, app.lifecycle.augment) and `compress` the
one command flow (data, gate, timing, publishing) of both.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from app.lifecycle import LifecycleError
from app.lifecycle.checkpoint import choose_max_length, data_record, log_record, read_checkpoint
from app.lifecycle.data import BUILTIN_PAIRS, BUILTIN_SAMPLE, read_examples, read_gate_data, read_texts
from app.lifecycle.export import ExportRequest, GateFailed, export_model, say
from app.lifecycle.figures import classification_figures
from app.lifecycle.gate import Gate, GateData, TeacherReference
from app.lifecycle.golden import pytorch_probabilities
from app.lifecycle.speed import named_version, side_by_side, teacher_artifacts
from app.lifecycle.train import TrainOptions, balanced_weights, collate, encode, fit, predict, seed_everything
from app.repository import ModelConfig, read_config
from app.scores import Head
from app.settings import Settings
from app.tokenizer import TextInput

# The transformer layer stack of each architecture family, under model.base_model. ALBERT is absent on purpose:
# its layers share one set of weights, so fewer of them save no size.
LAYER_STACKS = {"distilbert": "transformer.layer"}  # every other supported family: "encoder.layer"


@dataclass
class DistillOptions(TrainOptions):
    layers: int = 3
    temperature: float = 2.0
    # Weight of the teacher's soft targets where a true label is known (the rest goes to the label); texts without
    # a label learn from the teacher alone.
    soft_weight: float = 0.5
    learning_rate: float = 1e-4
    validation_fraction: float = 0.1
    # Teacher-labelled variants per training text (app.lifecycle.augment), and the operations making them.
    augment: int = 0
    augment_ops: tuple[str, ...] = ("replace", "dropout", "ngram", "mix")
    # Layer-wise distillation (as CoFi, TinyBERT): weight of the loss that pulls each student layer's hidden states
    # towards those of the teacher layer it came from; 0: the logits alone.
    hidden_weight: float = 0.0


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


def hidden_loss(student_states, teacher_states, pairs: list[tuple[int, int]], mask: torch.Tensor) -> torch.Tensor:
    """Mean over the (student, teacher) hidden-state index pairs of the squared difference on the real tokens,
    relative to the teacher states' own mean square (layers differ in scale; 0 when they are equal)."""
    weight = mask.unsqueeze(-1).to(student_states[0].dtype)
    count = weight.sum() * student_states[0].shape[-1]
    total = student_states[0].new_zeros(())
    for s, t in pairs:
        reference = teacher_states[t]
        moved = (((student_states[s] - reference) ** 2) * weight).sum() / count
        total = total + moved / ((reference**2 * weight).sum() / count).clamp(min=1e-6)
    return total / len(pairs)


def layer_pairs(kept: list[int]) -> list[tuple[int, int]]:
    """Which teacher hidden state each student one learns from: the embeddings (0) from the embeddings, student
    layer j's output from that of the teacher layer it was made from (`kept`)."""
    return [(0, 0)] + [(j + 1, layer + 1) for j, layer in enumerate(kept)]


def train_student(
    teacher: Path, texts: list[TextInput], targets: list[int], output: Path, options: DistillOptions, tokenizer,
    data: list[dict] | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """Build, distil and save the student with `options.layers` of the teacher's layers to `output`. Returns the
    training report and the indices of the held-out texts (as recover)."""
    student, kept = make_student(teacher, options.layers)
    return recover(student, teacher, texts, targets, output, options, tokenizer, data,
                   {"layers": options.layers, "layers_kept": kept},
                   f"student keeps {kept}")


def recover(
    student, teacher: Path, texts: list[TextInput], targets: list[int], output: Path, options: DistillOptions,
    tokenizer, data: list[dict] | None, described: dict[str, Any], what: str,
) -> tuple[dict[str, Any], list[int]]:
    """Distil `teacher` into `student` (a smaller model: fewer layers, or pruned) and save it to `output`: the one
    training loop of distill and prune. `targets`: class index or -1 (teacher only). `options.epochs` 0: no
    training, the student saved as it is (prune without recovery). Returns the training report (`described` first)
    and the indices of the held-out texts. `data`: the files the texts came from (checkpoint.data_record), recorded
    for the model card."""
    started = time.perf_counter()
    torch.set_num_threads(options.threads)
    seed_everything(options.seed)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    labels = [teacher_model.config.id2label[i] for i in range(teacher_model.config.num_labels)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded, types = encode(tokenizer, texts, options.max_length)
    say(f"teacher: {teacher_model.config.num_hidden_layers} layers; {what}; labelling {len(texts)} texts with the "
        "teacher ...")
    teacher_logits = torch.from_numpy(predict(teacher_model, encoded, pad_id, types=types))
    teacher_layers = teacher_model.config.num_hidden_layers

    # A seeded held-out part picks the best epoch by agreement with the teacher (labels are not needed for it).
    order = list(range(len(texts)))
    random.Random(options.seed).shuffle(order)
    n_val = max(1, round(options.validation_fraction * len(texts)))
    if len(texts) - n_val < 2:
        raise LifecycleError(f"only {len(texts)} texts: too few to distil with a held-out part; add data")
    val, train = order[:n_val], order[n_val:]
    train_ids = [encoded[i] for i in train]
    train_types, val_types = ([types[i] for i in part] if types else None for part in (train, val))
    train_teacher = teacher_logits[train]
    train_targets = torch.tensor([targets[i] for i in train])
    labelled = [y for y in train_targets.tolist() if y >= 0]
    weights = balanced_weights(labelled, len(labels)) if labelled else None
    augmented = 0
    val_ids, val_teacher = [encoded[i] for i in val], teacher_logits[val]
    if options.augment and options.epochs:
        from app.lifecycle.augment import variants

        # The training part's variants teach; the held-out part's own (drawn apart from them) only choose the
        # epoch: 60 texts decide it by a coin's noise (one text = 1.7 points), K+1 times as many less so.
        extra = variants([texts[i] for i in train], options.augment, options.seed, options.augment_ops)
        held = variants([texts[i] for i in val], options.augment, options.seed + 1, options.augment_ops)
        extra_ids, _ = encode(tokenizer, extra + held, options.max_length)
        say(f"labelling {len(extra)} + {len(held)} augmented texts ({options.augment} per training and held-out "
            f"text: {', '.join(options.augment_ops)}) with the teacher ...")
        extra_teacher = torch.from_numpy(predict(teacher_model, extra_ids, pad_id))
        train_ids += extra_ids[:len(extra)]
        train_teacher = torch.cat([train_teacher, extra_teacher[:len(extra)]])
        train_targets = torch.cat([train_targets, torch.full((len(extra),), -1)])  # the teacher alone labels them
        val_ids += extra_ids[len(extra):]
        val_teacher = torch.cat([val_teacher, extra_teacher[len(extra):]])
        augmented = len(extra)
    layerwise = options.hidden_weight > 0 and options.epochs > 0
    if layerwise:  # the teacher runs beside the student: its hidden states for each batch (augmented ones too)
        teacher_model.requires_grad_(False)
        pairs = layer_pairs(described["layers_kept"])
    else:
        del teacher_model
    val_truth = [targets[i] for i in val]
    val_decided = val_teacher.argmax(-1).numpy()
    val_reference = F.log_softmax(val_teacher, -1)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        inputs = collate(train_ids, batch, pad_id, train_types)
        out = student(**inputs, output_hidden_states=layerwise)
        loss = distillation_loss(out.logits, train_teacher[batch], train_targets[batch], weights, options)
        if layerwise:
            with torch.no_grad():
                reference = teacher_model(**inputs, output_hidden_states=True).hidden_states
            loss = loss + options.hidden_weight * hidden_loss(out.hidden_states, reference, pairs,
                                                              inputs["attention_mask"])
        return loss

    def validate() -> dict[str, Any]:
        """agreement (and accuracy, macro-F1 where labelled) on the held-out texts; with --augment, agreement_all
        on them and their variants; divergence: the mean KL(teacher || student) over all of them, which breaks
        ties between epochs (fit)."""
        logits = torch.from_numpy(predict(student, val_ids, pad_id, types=val_types))
        equal = logits.argmax(-1).numpy() == val_decided
        decided = logits[:n_val].argmax(-1).numpy()
        figures: dict[str, Any] = {"agreement": round(float(equal[:n_val].mean()), 4)}
        if len(val_ids) > n_val:
            figures["agreement_all"] = round(float(equal.mean()), 4)
        divergence = F.kl_div(F.log_softmax(logits, -1), val_reference, log_target=True, reduction="batchmean")
        figures["divergence"] = round(float(divergence), 5)
        known = [i for i, y in enumerate(val_truth) if y >= 0]
        if known:
            scored = classification_figures([val_truth[i] for i in known], decided[known].tolist(), labels)
            figures |= {"accuracy": scored["accuracy"], "macro_f1": scored["macro_f1"]}
        return figures

    if options.epochs:
        history, best_epoch, best = fit(student, [len(x) for x in train_ids], batch_loss, validate, options,
                                        best_by="agreement_all" if len(val_ids) > n_val else "agreement")
    else:
        history, best_epoch, best = [], 0, validate()
    output.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(output)
    tokenizer.save_pretrained(output)
    report = {
        "teacher": str(teacher),
        "teacher_layers": teacher_layers,
        **described,
        "pairs": types is not None or any(isinstance(t, tuple) for t in texts),  # as train's report: for export
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()},
        "train_size": len(train),
        "augmented": augmented,
        "labelled": len(labelled),
        "validation_size": n_val,
        "best_epoch": best_epoch,
        "validation": best,
        "history": history,
        "training_s": round(time.perf_counter() - started, 1),
        "data": data if data is not None else "unknown",
    }
    # As `bertserve train` does: a later `bertserve export` of this checkpoint reads its max_length here.
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report, val


# ---- the command ----


def softmax_teacher(teacher: Path, command: str):
    """The teacher's config, tokenizer and labels; a clear error unless its head is single-label (softmax): the
    soft targets and the agreement are a softmax head's."""
    hf_config, tokenizer = read_checkpoint(teacher)
    labels = [hf_config.id2label[i] for i in range(hf_config.num_labels)]
    head = Head(tuple(labels), hf_config.problem_type)
    if not head.single_label:
        raise LifecycleError(f"{teacher}: {command} takes a single-label (softmax) classifier; this one's head is "
                             f"{head.function} ({len(labels)} label(s), problem_type {hf_config.problem_type})")
    return hf_config, tokenizer, labels


def main(args: argparse.Namespace) -> None:
    """args.settings: the serving layout the speeds are measured with (the CLI's, app.lifecycle.commands)."""
    hf_config, _, _ = softmax_teacher(Path(args.teacher), "distill")
    spread(hf_config.num_hidden_layers, args.layers)  # a bad --layers fails before any work

    def summary(training: dict[str, Any]) -> str:
        return f"{training['layers']} of {training['teacher_layers']} layers {training['layers_kept']}"

    compress(args, "distill", "distillation", train_student, summary)


def compress(args: argparse.Namespace, command: str, section: str, build, summary) -> None:
    """The command flow of distill and prune: read the data, `build(teacher, texts, targets, output, options,
    tokenizer, data)` -> (training report, held-out indices) makes and trains the smaller model into `output`, then
    the gate against the teacher, the side-by-side timing and publishing; the training report goes under `section`
    of the published report, and `summary(training report)` into the line saying what was published."""
    started = time.perf_counter()
    settings: Settings = args.settings
    teacher = Path(args.teacher)
    if args.require_int8 and args.quantize != "int8":
        raise LifecycleError(f"--require-int8 cannot go with --quantize {args.quantize}")
    if args.augment < 0:
        raise LifecycleError(f"--augment {args.augment}: the variants per training text, 0 or more")
    if args.hidden_weight < 0:
        raise LifecycleError(f"--hidden-weight {args.hidden_weight}: the weight of the layer-wise loss, 0 or more")
    hf_config, tokenizer, labels = softmax_teacher(teacher, command)
    max_length, why = choose_max_length(hf_config, tokenizer, args.max_length, teacher, cap=128)
    say(f"max_length {max_length} tokens per text: {why}")
    options = DistillOptions(
        layers=getattr(args, "layers", None) or hf_config.num_hidden_layers, epochs=args.epochs,
        learning_rate=args.learning_rate, batch_size=args.batch_size, max_length=max_length,
        temperature=args.temperature, soft_weight=args.soft_weight, seed=args.seed, augment=args.augment,
        augment_ops=tuple(args.augment_ops), hidden_weight=args.hidden_weight,
    )
    pair_column = args.text_pair_column
    if args.augment and pair_column:
        raise LifecycleError("--augment makes variants of single texts; it does not take text pairs")
    texts, targets = read_examples(Path(args.data), args.text_column, args.label_column, labels, pair_column)
    data = [data_record(Path(args.data), len(texts))]  # for the model card, as train records its data
    for path in args.unlabeled or []:
        extra = read_texts(Path(path), args.text_column, pair_column)
        texts, targets = texts + extra, targets + [-1] * len(extra)
        data.append(log_record(Path(path), extra) if Path(path).is_dir() else data_record(Path(path), len(extra)))
    eval_data = None
    if args.eval_data:
        eval_data = read_gate_data([Path(p) for p in args.eval_data], args.text_column, args.label_column, labels,
                                   pair_column)
    repository = Path(args.model_repository)
    if args.version is not None and (repository / args.name / str(args.version)).exists():
        raise LifecycleError(f"{repository / args.name / str(args.version)} already exists")
    published = named_version(repository, args.teacher_version) if args.teacher_version else None

    with tempfile.TemporaryDirectory(prefix=f"bertserve-{command}-") as scratch:
        output = Path(args.output) if args.output else Path(scratch) / "student"
        training, held_out = build(teacher, texts, targets, output, options, tokenizer, data)
        if eval_data is None:  # texts the student never trained on, labelled where the data was
            truth = [targets[i] for i in held_out]
            eval_data = GateData([texts[i] for i in held_out], truth if min(truth) >= 0 else None,
                                 f"{len(held_out)} held-out texts of {args.data}")
        gate = Gate(min_agreement=args.min_agreement, max_accuracy_loss=args.max_accuracy_loss)
        say(f"gate against the teacher: agreement >= {gate.min_agreement}, accuracy loss <= "
            f"{gate.max_accuracy_loss} on {len(eval_data.texts)} texts ({eval_data.source})")
        reference = TeacherReference(str(teacher), pytorch_probabilities(teacher, tokenizer, eval_data.texts,
                                                                         max_length), gate)
        speed_texts = eval_data.texts if len(eval_data.texts) >= 32 else eval_data.texts + (
            BUILTIN_PAIRS if pair_column else BUILTIN_SAMPLE)

        def measure_speed(folder: Path, config: ModelConfig) -> dict[str, Any]:
            say(f"timing teacher and student side by side ({args.speed_rounds} rounds, {len(speed_texts)} texts) ...")
            with tempfile.TemporaryDirectory(prefix="bertserve-teacher-") as work:
                teacher_folder, how = teacher_artifacts(
                    teacher, published, repository, tokenizer, labels, max_length,
                    any(a.precision == "int8" for a in config.artifacts), Path(work))
                speed = side_by_side({"teacher": (teacher_folder, read_config(teacher_folder)),
                                      "student": (folder, config)}, speed_texts, settings, args.speed_rounds)
            return {"speed": {**speed, "teacher_artifacts": how}}

        request = ExportRequest(
            source=output, name=args.name, repository=repository, version=args.version, quantize=args.quantize,
            optimize=args.optimize, max_length=max_length, gate_data=eval_data,
            gate=Gate(min_agreement=args.int8_min_agreement, max_accuracy_loss=args.int8_max_accuracy_loss),
            teacher=reference, measure_staged=measure_speed, extra_report={section: training},
            fp32_when_gate_fails=not args.require_int8,  # as export: the student fp32 only, and why int8 was refused
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
    print(f"published {path} ({files}): {summary(training)}, {line}")
    print(f"raw sequences/s on {speed['cpu']}: teacher {speed['teacher']['sequences_per_s']} "
          f"({speed['teacher']['best_engine']}), student {speed['student']['sequences_per_s']} "
          f"({speed['student']['best_engine']}): {speed['speedup']}x")
    print(f"{command} took {time.perf_counter() - started:.0f} s (training {training['training_s']:.0f} s, "
          f"export {report['export_s']:.0f} s)")
    if "int8_refused" in report["gate"]:
        print(f"int8 refused, fp32 only: {report['gate']['int8_refused']}")
