"""Arguments of the lifecycle commands. Importing this module loads no torch: each command imports its own code."""

from __future__ import annotations

import argparse
import importlib
import sys

# The packages of pyproject.toml's extras that the lifecycle commands import (import name: extra).
EXTRA_OF = {name: "export" for name in ("torch", "transformers", "optimum", "onnx", "sklearn", "tqdm", "seqeval")}
EXTRA_OF["onnxruntime"] = "cpu"


def _lazy(module: str, settings=None):
    """Run `app.lifecycle.<module>.main(args)`, imported only now. A problem the user can fix (bad input, a model
    the server would refuse) ends in one line and exit status 1 (2 for a usage error: an architecture that cannot be
    exported); a missing extra (a serving-only install) in one line naming it, and exit status 2.

    settings: for a command that runs the serving code (evaluate, distill's timings), a function of args giving the
    settings it overrides; args.settings is then built here, from BERTSERVE_* variables and those (a bad variable:
    one line, exit 2), so no lifecycle module reads the environment itself."""

    def run(args: argparse.Namespace) -> None:
        from app.errors import ModelLoadError
        from app.lifecycle import LifecycleError

        if settings is not None:
            from app.settings import settings_or_exit

            args.settings = settings_or_exit(**settings(args))
        try:
            importlib.import_module(f"app.lifecycle.{module}").main(args)
        except (LifecycleError, ModelLoadError) as exc:
            print(f"bertserve {args.command}: {exc}", file=sys.stderr)
            raise SystemExit(getattr(exc, "exit_status", 1)) from None
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing not in EXTRA_OF:  # not an extra's package: a real bug, with its traceback
                raise
            extra = EXTRA_OF[missing]
            print(f"bertserve {args.command} needs the {extra} extra: pip install 'bertserve[{extra}]' (from a "
                  f"source checkout: pip install '.[{extra}]') (missing: {missing})", file=sys.stderr)
            raise SystemExit(2) from None

    return run


def _repository(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-repository", default="models", help="Model repository folder (default: models).")


def _margin(value: str) -> float:
    """A guard margin: 0 (none) or a probability difference in (0, 1)."""
    try:
        margin = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= margin < 1:
        raise argparse.ArgumentTypeError(f"a margin is in [0, 1) (0: no guard), got {value}")
    return margin


def _pair_column(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-pair-column", metavar="COLUMN", help="Column holding each row's second text: the rows "
                   "are text pairs (NLI, cross-encoders), encoded with the tokenizer's pair template (default: none).")

def _student_options(p: argparse.ArgumentParser, recovery: str = "") -> None:
    """The options distill and prune share: data, gate, export, training (app.lifecycle.distill.compress)."""
    p.add_argument("--name", required=True, help="Model name in the repository.")
    p.add_argument("--data", required=True, help="CSV/TSV training texts; labels, where given, mix with the teacher's.")
    p.add_argument("--unlabeled", nargs="+", metavar="FILE",
                   help="Extra texts labelled by the teacher only (.txt: one per line, CSV/TSV text column, or a "
                        "prediction log folder: every text it logged in full).")
    p.add_argument("--eval-data", nargs="+", metavar="FILE",
                   help="CSV/TSV texts (labels optional) for the gate (default: a held-out part of --data).")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    _pair_column(p)
    p.add_argument("--version", type=int, help="Version number (default: next free).")
    p.add_argument("--quantize", choices=["int8", "fp16", "none"], default="int8",
                   help="Extra artifact beside fp32, as for export (int8 behind the export's int8 gate).")
    p.add_argument("--require-int8", action="store_true",
                   help="Publish nothing and exit 1 when no int8 recipe passes the int8 gate (default: publish the "
                        "student's fp32 alone and record why int8 was refused).")
    p.add_argument("--optimize", choices=["none", "O1", "O2", "O3"], default="none")
    p.add_argument("--max-length", type=int, help="Tokens per text (default: the length the teacher was trained "
                   "with, from its report.json; else 128, or the model's limit if lower).")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="Least share of decisions equal to the teacher's fp32 ones (default 0.9).")
    p.add_argument("--max-accuracy-loss", type=float, default=0.02,
                   help="Most accuracy the student may lose against the teacher when labels are known (default 0.02).")
    p.add_argument("--int8-min-agreement", type=float, default=0.97,
                   help="The int8 gate, int8 vs the student's fp32 (as export's --min-agreement).")
    p.add_argument("--int8-max-accuracy-loss", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=4, help="Most passes of the distillation" + recovery + ".")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=2.0, help="Softmax temperature of the soft targets.")
    p.add_argument("--soft-weight", type=float, default=0.5,
                   help="Weight of the teacher's soft targets against the true label, where one is given.")
    p.add_argument("--augment", type=int, default=0, metavar="K",
                   help="K variants of each training text, labelled by the teacher alone: words replaced from the "
                        "data's vocabulary, words dropped, n-gram windows, sentences mixed across texts (Tang et al. "
                        "2019); seeded (default: 0).")
    p.add_argument("--hidden-weight", type=float, default=0.0, metavar="W",
                   help="Layer-wise distillation (as CoFi, TinyBERT): weight of the loss pulling each student layer's "
                        "hidden states towards the teacher layer's it came from; the teacher runs beside the student "
                        "(default: 0, the logits alone).")
    p.add_argument("--augment-ops", nargs="+", choices=["replace", "dropout", "ngram", "mix"],
                   default=["replace", "dropout", "ngram", "mix"], help="The operations --augment uses (default: all).")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--output", help="Also keep the student's Hugging Face checkpoint in this folder.")
    p.add_argument("--teacher-version", metavar="NAME[:VERSION]|DIR",
                   help="The teacher's published version, timed beside the student: its model name (and version) "
                        "in the repository, or its version folder (default: the repository's version whose golden "
                        "outputs the teacher reproduces, whatever its name; else a scratch export).")
    p.add_argument("--speed-rounds", type=int, default=3, help="Alternating timing rounds (default 3).")
    _repository(p)


def add_commands(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("build-demo", help="Fine-tune, export, quantize and publish the demo model.")
    _repository(p)
    p.set_defaults(func=_lazy("demo"))

    p = commands.add_parser("build-demo-reranker", help="Fine-tune, export and publish the demo reranker: a one-logit "
                            "cross-encoder on (condition, review) pairs of the demo data (default repository: "
                            "rerankers).")
    p.add_argument("--model-repository", default="rerankers",
                   help="Model repository folder (default: rerankers, apart from the sentiment demo's models).")
    p.set_defaults(func=_lazy("demo_reranker"))

    p = commands.add_parser("build-demo-ner", help="Fine-tune the demo token classifier: MiniLM-L6 finding the drug "
                            "and the condition a review names (distant labels), and publish it where export takes "
                            "token models (default repository: ner-models).")
    p.add_argument("--model-repository", default="ner-models",
                   help="Model repository folder (default: ner-models; the checkpoint goes to its .checkpoints).")
    p.set_defaults(func=_lazy("demo_ner"))

    p = commands.add_parser("demo-data", help="Write the demo's drug reviews as train.csv / test.csv (text,label).")
    p.add_argument("output", help="Folder to write into.")
    p.set_defaults(func=_lazy("demo_data"))

    p = commands.add_parser(
        "train", help="Fine-tune a BERT-family checkpoint as a text classifier.",
        description="Fine-tune a BERT-family checkpoint as a text classifier: a single-label (softmax) head over the "
        "label column's classes, or with --one-logit one logit (a reranker). It trains no multi-label or regression "
        "head: fine-tune those with transformers (problem_type multi_label_classification or regression); export, "
        "evaluate and the server take them.")
    p.add_argument("--task", choices=["text-classification", "token-classification"], default="text-classification",
                   help="token-classification: a token classifier (NER) on a CoNLL-style file (token and BIO tag "
                        "per line, blank line between sentences) or JSONL ({\"text\", \"entities\": [{\"start\", "
                        "\"end\", \"label\"}]}); the column options do not apply, and early stopping follows the validation "
                        "entity micro-F1 (default: %(default)s).")
    p.add_argument("--data", help="CSV or TSV file with a header line (a token classifier: .conll/.txt "
                   "CoNLL, or .jsonl). Required, unless --from-log gives the examples: then added to them.")
    p.add_argument("--from-log", metavar="LOGDIR", help="Train on production: the prediction log folder "
                   "(BERTSERVE_PREDICTION_LOG_DIR, text mode \"full\"), its logged texts labelled by their POST "
                   "/feedback (the first feedback per item counts, as the server keeps it; feedback without a logged prediction is ignored and "
                   "counted). Starts from the checkpoint the serving version's bertserve.json names (report.source) "
                   "unless --base is given.")
    p.add_argument("--model", metavar="NAME[:VERSION]", help="With --from-log: the model whose log and feedback to "
                   "train on (default: the log's only model), and the version whose checkpoint to start from "
                   "(default: the newest version in the log).")
    p.add_argument("--text-column", default="text", help="Column holding the text (default: %(default)s).")
    p.add_argument("--label-column", default="label",
                   help="Column holding the class label, one per row (default: %(default)s).")
    _pair_column(p)
    p.add_argument("--one-logit", action="store_true",
                   help="One logit (a cross-encoder / reranker): 0/1 labels, binary cross-entropy; served with "
                        "sigmoid under one label named after the label column.")
    p.add_argument("--base", help="Local Hugging Face model folder to start from (required without --from-log; "
                   "with it, the default is the serving version's checkpoint, report.source in its bertserve.json).")
    p.add_argument("--output", required=True, help="Folder for the fine-tuned checkpoint and report.json.")
    p.add_argument("--epochs", type=int, default=4,
                   help="Most passes over the data; training stops earlier after 2 epochs without a better "
                        "validation macro-F1 (default: %(default)s).")
    p.add_argument("--learning-rate", type=float, default=8e-5, help="AdamW learning rate (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=16, help="Texts per training step (default: %(default)s).")
    p.add_argument("--max-length", type=int, default=128,
                   help="Tokens per text (pair), recorded for export (default: %(default)s).")
    p.add_argument("--seed", type=int, default=13,
                   help="Seed of the validation split, the new head's weights and the batch order (default: "
                        "%(default)s).")
    _repository(p)  # --from-log: where the serving version's bertserve.json is read
    p.set_defaults(func=_lazy("train"))

    p = commands.add_parser("export", help="Export a fine-tuned checkpoint to ONNX and publish it.")
    p.add_argument("source", help="Fine-tuned Hugging Face classification checkpoint folder.")
    p.add_argument("--name", required=True, help="Model name in the repository.")
    p.add_argument("--version", type=int, help="Version number (default: next free).")
    p.add_argument("--quantize", choices=["int8", "fp16", "none"], default="int8",
                   help="Extra artifact beside fp32: int8 for CPU (behind the accuracy gate), fp16 for CUDA.")
    p.add_argument("--require-int8", action="store_true",
                   help="Publish nothing and exit 1 when no int8 recipe passes the accuracy gate (default: publish "
                        "fp32 alone and record why int8 was refused).")
    p.add_argument("--optimize", choices=["none", "O1", "O2", "O3"], default="none",
                   help="Offline graph optimisation (the server applies the same fusions at load anyway).")
    p.add_argument("--max-length", type=int, help="Tokens per text (default: the length the checkpoint was trained "
                   "with, from its report.json (bertserve train); else the tokenizer's limit, at most 512).")
    p.add_argument("--eval-data", nargs="+", metavar="FILE", help="CSV/TSV texts (labels optional) for the gate; "
                   "for a token classifier also CoNLL (.conll/.txt) or JSONL (.jsonl) files, their texts.")
    p.add_argument("--calibration-data", nargs="+", metavar="FILE",
                   help="CSV/TSV training texts (same columns) to calibrate int8 on: SmoothQuant, the most sensitive "
                        "MatMul in fp32 (docs/int8.md). Never the --eval-data texts: those judge it.")
    p.add_argument("--guard-margin", type=_margin, default=0.02,
                   help="A single-label int8 artifact's guard: texts whose int8 top-two probability margin is under "
                        "this are decided by the fp32 graph (app.guard, docs/int8.md); 0: no guard. Default 0.02.")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    _pair_column(p)
    p.add_argument("--min-agreement", "--int8-min-agreement", dest="min_agreement", type=float, default=None,
                   help="The int8 gate: least share of identical decisions, int8 vs fp32 (default 0.97); for a token "
                        "classifier (NER) least entity-level F1 of int8's entities against fp32's on the gate texts "
                        "(default 0.95; token-label agreement is recorded).")
    p.add_argument("--max-accuracy-loss", type=float, default=0.01,
                   help="Most accuracy int8 may lose against fp32 when labels are known (default 0.01).")
    p.add_argument("--max-drift-share", type=float, default=0.02,
                   help="One-logit and regression heads: int8's largest score drift as a share of the fp32 scores' "
                   "spread over the gate texts (default 0.02).")
    _repository(p)
    p.set_defaults(func=_lazy("export"))

    p = commands.add_parser("distill", help="Distil a fine-tuned checkpoint into a student with fewer layers, "
                            "gated against the teacher, and publish it.")
    p.add_argument("teacher", help="Fine-tuned Hugging Face classification checkpoint folder (the teacher).")
    p.add_argument("--layers", type=int, required=True, help="Layers the student keeps, spread evenly.")
    _student_options(p)
    p.set_defaults(func=_lazy("distill", settings=lambda args: {}))

    p = commands.add_parser("prune", help="Prune attention heads and feed-forward neurons (and layers) of a "
                            "fine-tuned checkpoint, recover by distillation, gate against it and publish.")
    p.add_argument("teacher", help="Fine-tuned Hugging Face classification checkpoint folder (pruned, and the "
                   "teacher of the recovery).")
    p.add_argument("--heads", type=float, required=True,
                   help="Fraction of the attention heads removed, in [0, 1), least important first across layers "
                        "(one head always kept per layer).")
    p.add_argument("--ffn", type=float, required=True,
                   help="Fraction of each layer's feed-forward neurons removed, in [0, 1) (the same count per layer).")
    p.add_argument("--layers", type=int, help="Layers kept, spread evenly, before pruning (as distill; default: all).")
    p.add_argument("--importance", choices=["auto", "gradient", "magnitude"], default="auto",
                   help="What ranks heads and neurons: gradient (Michel et al. 2019; |activation x gradient| for "
                        "neurons), magnitude (L1 of their weights), or auto: both tried, the one whose pruned model "
                        "agrees more with the teacher before recovery kept (default: %(default)s).")
    _student_options(p, recovery=" (0: no recovery)")
    p.set_defaults(func=_lazy("prune", settings=lambda args: {}))

    p = commands.add_parser("evaluate", help="Score a published model on labelled data, through the serving code.")
    p.add_argument("model", nargs="?", help="NAME or NAME:VERSION (default: the latest version).")
    p.add_argument("--checkpoint", metavar="DIR", help="Instead of a published model: a token classifier's "
                   "checkpoint folder (bertserve train --task token-classification), scored in PyTorch fp32 with "
                   "seqeval (entity precision, recall, F1 per type, micro and macro; token accuracy).")
    p.add_argument("--max-length", type=int, help="With --checkpoint: tokens per text (default: the training "
                   "length from its report.json).")
    p.add_argument("--data", required=True, help="CSV or TSV file with a header line (a token classifier, published "
                   "or --checkpoint: CoNLL, or .jsonl with character spans).")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label",
                   help="The row's label: a class name; for a multi-label model its labels separated by '|'; for a "
                        "one-logit model 0 or 1; for a regression model a number (default: label).")
    _pair_column(p)
    p.add_argument("--provider", choices=["auto", "cpu", "openvino", "cuda"], default="auto")
    _repository(p)
    p.set_defaults(func=_lazy("evaluate", settings=lambda args: {
        "model_repository": args.model_repository, "provider": args.provider, "batch_autotune": False}))

    p = commands.add_parser("models", help="List published models, versions, quantization and gate figures.")
    _repository(p)
    p.set_defaults(func=_lazy("listing"))
