"""Golden outputs: a sample of the evaluation inputs with the checkpoint's own PyTorch scores (the reference), the
fp32 graph's parity with them, and golden.json, the gate every engine must pass on them at load (app.loader)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from app.lifecycle import LifecycleError
from app.lifecycle.checkpoint import model_inputs, tokenize
from app.lifecycle.gate import Gate
from app.lifecycle.runner import open_artifact, probabilities
from app.repository import Artifact, Golden, ModelConfig, write_golden
from app.scores import Head
from app.tokenizer import TextInput

# Largest fp32 ONNX vs PyTorch difference accepted at export: on a probability, absolute; on a raw (regression)
# value, relative to its magnitude, times max(1, |value|) (app.scores.Head.tolerance).
PARITY_TOLERANCE = 1e-3
GOLDEN_TEXTS = 256  # evaluation texts kept with their PyTorch probabilities, for the gate every engine passes at load
# The golden gate's bound on any probability: INT8 drifts up to ~0.1 on the demo model, a broken engine far more.
GOLDEN_MAX_PROB_DIFF = 0.25


def pytorch_probabilities(source: Path, tokenizer, texts: list[TextInput], max_length: int) -> np.ndarray:
    """The checkpoint's own fp32 scores, by its head as the text-classification pipeline applies it (app.scores.Head
    from its config), on texts or pairs (the tokenizer's pair template, token_type_ids where it makes them): the
    reference every artifact and engine is held to."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    head = Head(tuple(model.config.id2label[i] for i in range(model.config.num_labels)), model.config.problem_type)
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenize(tokenizer, texts[start : start + 32], max_length, padding=True, return_tensors="pt")
            rows.append(head.scores(model(**model_inputs(batch)).logits.float().numpy()))
    return np.concatenate(rows)


def pytorch_token_probabilities(source: Path, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """A token classifier's own fp32 softmax per token (special tokens too), each text cut to max_length as the
    token-classification pipeline cuts it without stride: one row per token, texts in order."""
    import torch
    from transformers import AutoModelForTokenClassification

    from app.tokens import softmax

    model = AutoModelForTokenClassification.from_pretrained(source).eval()
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), 32):
            batch = tokenize(tokenizer, texts[start : start + 32], max_length, padding=True, return_tensors="pt")
            logits = model(**model_inputs(batch)).logits.float().numpy()
            for k, mask in enumerate(batch["attention_mask"].numpy()):
                rows.append(softmax(logits[k][mask.astype(bool)]))
    return np.concatenate(rows)


def golden_sample(texts: list[TextInput]) -> list[TextInput]:
    """Up to GOLDEN_TEXTS of the evaluation texts, a seeded sample in their original order."""
    if len(texts) <= GOLDEN_TEXTS:
        return list(texts)
    keep = sorted(random.Random(0).sample(range(len(texts)), GOLDEN_TEXTS))
    return [texts[i] for i in keep]


def reference_with_parity(source: Path, tokenizer, folder: Path, config: ModelConfig, fp32: Artifact,
                          texts: list[TextInput]) -> tuple[np.ndarray, float]:
    """PyTorch's scores on the golden sample, and the fp32 graph's largest difference from them (served through the
    serving code); an export over PARITY_TOLERANCE (Head.tolerance: relative for raw values) is refused."""
    if config.task == "token-classification":  # per token, one row each (app.tokens.score_token_texts)
        torch_golden = pytorch_token_probabilities(source, tokenizer, texts, config.max_length)  # type: ignore
    else:
        torch_golden = pytorch_probabilities(source, tokenizer, texts, config.max_length)
    onnx_golden, _ = probabilities(open_artifact(folder, config, fp32), texts)
    diff = np.abs(torch_golden - onnx_golden)
    parity = float(diff.max())
    allowed = config.head.tolerance(torch_golden, PARITY_TOLERANCE)
    if (diff > allowed).any():
        worst = np.unravel_index(np.argmax(diff / allowed), diff.shape)
        raise LifecycleError(f"the ONNX graph differs from PyTorch by {float(diff[worst]):.2e} "
                             f"(> {float(allowed[worst]):.2e})")
    return torch_golden, parity


def golden_outputs(folder: Path, config: ModelConfig, texts: list[TextInput], reference: np.ndarray, gate: Gate,
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
    if config.head.function == "none":  # raw values: as wide as the recorded bound (relative to large values)
        widest = max(widest, config.head.bound or 0.0)
    rows: dict = {"probabilities": reference.round(6).tolist()}
    if config.task == "token-classification":  # per text, its tokens' rows
        from app.repository import TOKENIZER_FILE
        from app.tokenizer import TextTokenizer
        from app.tokens import per_text

        split = per_text(reference, texts, TextTokenizer(folder / TOKENIZER_FILE, config.max_length))  # type: ignore
        rows = {"token_probabilities": [part.round(6).tolist() for part in split]}
    golden = Golden(texts=texts, **rows, min_agreement=round(min(1.0, floor), 4),
                    max_prob_diff=round(widest if config.head.function == "none" else min(1.0, widest), 4),
                    source=source)
    return golden, figures


def store_golden(folder: Path, config: ModelConfig, texts: list[TextInput], reference: np.ndarray, gate: Gate,
                 source: str) -> dict:
    """Write golden.json beside the artifacts; returns its figures for the export report."""
    golden, figures = golden_outputs(folder, config, texts, reference, gate, source)
    write_golden(folder, golden)
    return {"texts": len(golden.texts), "min_agreement": golden.min_agreement,
            "max_prob_diff": golden.max_prob_diff, "artifacts": figures}
