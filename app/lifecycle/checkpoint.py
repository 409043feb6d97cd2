"""A fine-tuned checkpoint as export and distill read it: config and tokenizer checked, the length per text, and
transformers' own encoding of texts or pairs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.lifecycle import LifecycleError
from app.repository import file_sha256
from app.tokenizer import TextInput

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HEADS = ("ForSequenceClassification", "ForTokenClassification")


def checkpoint_task(config) -> str:
    """The task a checkpoint's head serves: token-classification for a `*ForTokenClassification` one, else
    text-classification."""
    if any(a.endswith("ForTokenClassification") for a in config.architectures or []):
        return "token-classification"
    return "text-classification"


def read_checkpoint(source: Path):
    """The checkpoint's config and fast tokenizer, or a one-line reason it cannot be exported."""
    from transformers import AutoConfig, AutoTokenizer

    from app.lifecycle.architectures import check_architecture

    if not (source / "config.json").is_file():
        raise LifecycleError(f"{source}: no config.json; give a fine-tuned Hugging Face model folder (bertserve train)")
    config = AutoConfig.from_pretrained(source)
    check_architecture(config, str(source), checkpoint_task(config))
    if not any(a.endswith(HEADS) for a in config.architectures or []):
        raise LifecycleError(
            f"{source}: a {config.architectures} checkpoint, not a sequence or token classifier; fine-tune it first "
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
    check_inputs(config, tokenizer, source)
    return config, tokenizer


def check_inputs(config, tokenizer, source: Path) -> None:
    """One line when the tokenizer makes inputs the model does not take (a DistilBERT saved with a BERT tokenizer
    makes token_type_ids): PyTorch, and transformers' own text-classification pipeline, which passes the model
    whatever the tokenizer makes, would fail on them with a TypeError."""
    import inspect

    import transformers

    name = next(a for a in config.architectures if a.endswith(HEADS))
    model_class = getattr(transformers, name, None)
    if model_class is None:  # not a transformers class: nothing to check it against
        return
    extra = [n for n in tokenizer.model_input_names if n not in inspect.signature(model_class.forward).parameters]
    if extra:
        kept = [n for n in tokenizer.model_input_names if n not in extra]
        raise LifecycleError(f"{source}: its tokenizer makes {extra}, which {name} does not take (a tokenizer saved "
                             f"from another model?); save the model's own tokenizer, or set \"model_input_names\": "
                             f"{json.dumps(kept)} in its tokenizer_config.json")


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


def data_record(path: Path, rows: int) -> dict:
    """What a training report records of one data file: its name (never its folder), rows read, sha256."""
    return {"file": path.name, "rows": rows, "sha256": file_sha256(path)}


def log_record(folder: Path, texts: list) -> dict:
    """data_record of the texts read from a prediction log folder: its name, the texts, the sha256 of them as JSON."""
    digest = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    return {"file": f"prediction log {folder.name}", "rows": len(texts), "sha256": digest}


def training_report(source: Path) -> dict | None:
    """The report.json `bertserve train` or `distill --output` wrote into the checkpoint; None for a checkpoint
    trained elsewhere (or an unreadable report)."""
    try:
        report = json.loads((source / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def trained_on_pairs(source: Path) -> bool:
    """Whether the checkpoint was fine-tuned on text pairs (report.json of `bertserve train` or `distill --output`):
    its built-in gate sample is then pairs."""
    try:
        return json.loads((source / "report.json").read_text()).get("pairs") is True
    except (OSError, ValueError, AttributeError):
        return False


def tokenize(tokenizer, inputs: list[TextInput], max_length: int, **kwargs):
    """transformers' encoding: texts truncated to max_length, pairs with the tokenizer's pair template, truncated
    longest_first (what the server's tokenizer does). kwargs: padding, return_tensors."""
    if inputs and all(isinstance(one, tuple) for one in inputs):
        return tokenizer([a for a, _ in inputs], [b for _, b in inputs], truncation="longest_first",
                         max_length=max_length, **kwargs)
    return tokenizer(list(inputs), truncation=True, max_length=max_length, **kwargs)


def model_inputs(batch) -> dict:
    """The tokenizer's outputs a model takes: token_type_ids only where its tokenizer makes them."""
    return {name: batch[name] for name in MODEL_INPUTS if name in batch}
