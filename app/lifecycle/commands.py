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


def _pair_column(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-pair-column", metavar="COLUMN", help="Column holding each row's second text: the rows "
                   "are text pairs (NLI, cross-encoders), encoded with the tokenizer's pair template (default: none).")


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
    p.add_argument("--data", required=True, help="CSV or TSV file with a header line (a token classifier: .conll/.txt "
                   "CoNLL, or .jsonl).")
    p.add_argument("--text-column", default="text", help="Column holding the text (default: %(default)s).")
    p.add_argument("--label-column", default="label",
                   help="Column holding the class label, one per row (default: %(default)s).")
    _pair_column(p)
    p.add_argument("--one-logit", action="store_true",
                   help="One logit (a cross-encoder / reranker): 0/1 labels, binary cross-entropy; served with "
                        "sigmoid under one label named after the label column.")
    p.add_argument("--base", required=True, help="Local Hugging Face model folder to start from.")
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
    p.add_argument("--name", required=True, help="Model name in the repository.")
    p.add_argument("--data", required=True, help="CSV/TSV training texts; labels, where given, mix with the teacher's.")
    p.add_argument("--unlabeled", nargs="+", metavar="FILE",
                   help="Extra texts labelled by the teacher only (.txt: one per line, or CSV/TSV text column).")
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
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=2.0, help="Softmax temperature of the soft targets.")
    p.add_argument("--soft-weight", type=float, default=0.5,
                   help="Weight of the teacher's soft targets against the true label, where one is given.")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--output", help="Also keep the student's Hugging Face checkpoint in this folder.")
    p.add_argument("--teacher-version", metavar="NAME[:VERSION]|DIR",
                   help="The teacher's published version, timed beside the student: its model name (and version) "
                        "in the repository, or its version folder (default: the repository's version whose golden "
                        "outputs the teacher reproduces, whatever its name; else a scratch export).")
    p.add_argument("--speed-rounds", type=int, default=3, help="Alternating timing rounds (default 3).")
    _repository(p)
    p.set_defaults(func=_lazy("distill", settings=lambda args: {}))

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
