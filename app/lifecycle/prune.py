"""`bertserve prune`: a smaller model by structured pruning, recovered by distillation, gated and published as a
student.

1. Optionally first N of the teacher's layers, spread evenly (--layers, as distill: make_student).
2. Importance, measured on the training texts, of every attention head and every feed-forward neuron, by two
   criteria:
   - gradient: Michel et al. 2019's head importance, |dL/dxi_h| for a gate xi_h on head h's output (= |sum of the
     head's context vector times its gradient|), per text, summed over the texts; L is the cross-entropy against the
     teacher's own decision, so what is measured is what the agreement gate asks to keep. For a neuron the
     analogous |activation x gradient| (of the input of the feed-forward output projection). Taken from the
     output projections' inputs by hooks, so it works whatever the attention implementation.
   - magnitude: the L1 norm of the weights a head or a neuron owns (its rows of Q, K, V / the first FFN matrix and
     its columns of the output projection / the second FFN matrix).
   Both are applied, each pruned model's agreement with the teacher on the training texts before any recovery is
   measured, and the better criterion is kept (both figures recorded): magnitude ignores what the data does to a
   weight, gradient ignores how its estimate at one point extrapolates to removing the whole head; which is the
   better guess for a given model is a measurement, not an argument.
3. Heads are ranked across layers (importance normalised per layer, as Michel et al.), at least one kept per layer,
   and removed with transformers' prune_heads (recorded as `pruned_heads` in the config). Neurons: the config has
   one intermediate size, so every layer keeps the same number, its most important ones; intermediate.dense and
   output.dense (DistilBERT: ffn.lin1 / lin2) are cut to them. The result is a dense, smaller checkpoint that
   transformers loads; ONNX export, parity, the INT8 gate and the golden outputs apply unchanged.
4. Recovery: distillation from the unpruned teacher, the loop of distill (distill.recover; --epochs 0: none);
   then distill's road to publishing (distill.compress): the gate against the teacher, timing, atomic publishing.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification
from transformers.pytorch_utils import prune_linear_layer

from app.lifecycle import LifecycleError
from app.lifecycle.distill import (
    DistillOptions,
    compress,
    layer_stack,
    make_student,
    recover,
    softmax_teacher,
    spread,
)
from app.lifecycle.export import say
from app.lifecycle.train import collate, encode, predict, seed_everything
from app.tokenizer import TextInput

CRITERIA = ("gradient", "magnitude")


@dataclass
class Parts:
    """One transformer layer's prunable parts: the attention module (what prune_heads cuts), its head count and
    size, the Q/K/V and output projections, and the two feed-forward projections."""

    attention: Any
    heads: int
    head_size: int
    qkv: list[torch.nn.Linear]
    attention_out: torch.nn.Linear
    ffn_in: torch.nn.Linear
    ffn_out: torch.nn.Linear


def layer_parts(layer) -> Parts:
    if hasattr(layer, "attention") and hasattr(layer.attention, "q_lin"):  # DistilBERT
        a = layer.attention
        return Parts(a, a.n_heads, a.dim // a.n_heads, [a.q_lin, a.k_lin, a.v_lin], a.out_lin, layer.ffn.lin1,
                     layer.ffn.lin2)
    try:  # BERT, RoBERTa, ELECTRA, XLM-R, ...: encoder.layer[i].attention.self / .output, intermediate, output
        s = layer.attention.self
        return Parts(layer.attention, s.num_attention_heads, s.attention_head_size, [s.query, s.key, s.value],
                     layer.attention.output.dense, layer.intermediate.dense, layer.output.dense)
    except AttributeError:
        raise LifecycleError(f"prune takes BERT-, RoBERTa- and DistilBERT-style layers; this model's layers are "
                             f"{type(layer).__name__}") from None


def all_parts(model) -> list[Parts]:
    parent, name = layer_stack(model)
    return [layer_parts(layer) for layer in getattr(parent, name)]


def check_fractions(heads: float, ffn: float, n_heads: int, n_layers: int, intermediate: int) -> tuple[int, int]:
    """Heads to remove in all (of n_layers x n_heads) and neurons each layer keeps; a clear error for fractions
    outside [0, 1) and for a fraction that would remove every head of a layer or every neuron."""
    for flag, fraction in (("--heads", heads), ("--ffn", ffn)):
        if not 0 <= fraction < 1:
            raise LifecycleError(f"{flag} {fraction}: the fraction removed must be in [0, 1)")
    remove = round(heads * n_heads * n_layers)
    if remove > n_layers * (n_heads - 1):
        raise LifecycleError(f"--heads {heads} removes {remove} of {n_layers} x {n_heads} heads: that would prune "
                             f"every head of a layer (at most {n_layers * (n_heads - 1)}, one head kept per layer)")
    keep = intermediate - round(ffn * intermediate)
    if keep < 1:
        raise LifecycleError(f"--ffn {ffn} removes every one of the {intermediate} feed-forward neurons of a layer")
    return remove, keep


def gradient_importance(model, encoded: list[list[int]], decisions: torch.Tensor, pad_id: int,
                        types: list[list[int]] | None = None, batch_size: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: each head's and each feed-forward neuron's summed |dL/dgate| over the texts (module docstring)."""
    parts = all_parts(model)
    captured: dict[tuple[int, str], torch.Tensor] = {}

    def keep(key):
        def hook(module, args):
            args[0].retain_grad()
            captured[key] = args[0]
        return hook

    hooks = [h for i, p in enumerate(parts) for h in (
        p.attention_out.register_forward_pre_hook(keep((i, "heads"))),
        p.ffn_out.register_forward_pre_hook(keep((i, "ffn"))))]
    heads = [np.zeros(p.heads) for p in parts]
    neurons = [np.zeros(p.ffn_in.out_features) for p in parts]
    model.eval()
    try:
        for start in range(0, len(encoded), batch_size):
            batch = list(range(start, min(start + batch_size, len(encoded))))
            model.zero_grad(set_to_none=True)
            logits = model(**collate(encoded, batch, pad_id, types)).logits
            F.cross_entropy(logits, decisions[batch], reduction="sum").backward()
            for i, p in enumerate(parts):
                context = captured[(i, "heads")]
                per_head = (context * context.grad).reshape(*context.shape[:2], p.heads, p.head_size).sum((1, 3))
                heads[i] += per_head.abs().sum(0).detach().numpy()
                hidden = captured[(i, "ffn")]
                neurons[i] += (hidden * hidden.grad).sum(1).abs().sum(0).detach().numpy()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return heads, neurons


@torch.no_grad()
def magnitude_importance(model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: the L1 norm of the weights each head and each feed-forward neuron owns."""
    heads, neurons = [], []
    for p in all_parts(model):
        rows = sum(lin.weight.abs().sum(1) for lin in p.qkv)  # (heads x head_size,)
        columns = p.attention_out.weight.abs().sum(0)
        heads.append((rows + columns).reshape(p.heads, p.head_size).sum(1).numpy())
        neurons.append((p.ffn_in.weight.abs().sum(1) + p.ffn_out.weight.abs().sum(0)).numpy())
    return heads, neurons


def choose(heads: list[np.ndarray], neurons: list[np.ndarray], remove: int, keep: int
           ) -> tuple[dict[int, list[int]], list[list[int]]]:
    """Heads to remove per layer (the `remove` least important across layers, importance normalised per layer,
    one head always kept per layer) and the `keep` most important neurons of each layer (sorted)."""
    scores = []
    for layer, values in enumerate(heads):
        norm = np.linalg.norm(values) or 1.0
        scores += [(v / norm, layer, h) for h, v in enumerate(values)]
    left = {layer: len(values) for layer, values in enumerate(heads)}
    pruned: dict[int, list[int]] = {}
    for _, layer, head in sorted(scores):
        if sum(len(v) for v in pruned.values()) == remove:
            break
        if left[layer] > 1:
            pruned.setdefault(layer, []).append(head)
            left[layer] -= 1
    kept = [sorted(np.argsort(-values, kind="stable")[:keep].tolist()) for values in neurons]
    return pruned, kept


def apply(model, pruned: dict[int, list[int]], kept: list[list[int]]):
    """Prune `model` in place (heads: positions in each layer as it is now; neurons kept per layer) and return a
    model built from its own new config with its weights: what is trained is exactly what is saved and exported."""
    parts = all_parts(model)
    already = {int(k): set(v) for k, v in (model.config.pruned_heads or {}).items()}
    original = model.config.num_attention_heads if model.config.model_type != "distilbert" else model.config.n_heads
    heads_to_prune = {}
    for layer, positions in pruned.items():  # prune_heads takes the original head indices
        alive = [h for h in range(original) if h not in already.get(layer, set())]
        heads_to_prune[layer] = [alive[p] for p in positions]
    if heads_to_prune:
        model.prune_heads(heads_to_prune)
    for p, neurons in zip(parts, kept):
        index = torch.tensor(neurons, dtype=torch.long)
        ffn_in, ffn_out = prune_linear_layer(p.ffn_in, index, dim=0), prune_linear_layer(p.ffn_out, index, dim=1)
        for owner, name, new in ((p, "ffn_in", ffn_in), (p, "ffn_out", ffn_out)):
            replace_module(model, getattr(owner, name), new)
    width = len(kept[0])
    setattr(model.config, "hidden_dim" if model.config.model_type == "distilbert" else "intermediate_size", width)
    rebuilt = AutoModelForSequenceClassification.from_config(model.config)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    return rebuilt


def replace_module(model, old: torch.nn.Module, new: torch.nn.Module) -> None:
    for module in model.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise AssertionError("module to replace not found")


def shape(model) -> dict[str, Any]:
    parts = all_parts(model)
    return {"heads_per_layer": [p.heads for p in parts], "ffn_width": parts[0].ffn_in.out_features,
            "parameters": sum(t.numel() for t in model.parameters())}


@dataclass
class PruneOptions:
    heads: float
    ffn: float
    importance: str = "auto"  # gradient, magnitude, or auto: both measured, the better kept


def prune_model(teacher: Path, texts: list[TextInput], options: DistillOptions, pruning: PruneOptions, tokenizer,
                layers: int | None) -> tuple[Any, dict[str, Any]]:
    """The pruned (not yet recovered) model and what was done, for the report."""
    seed_everything(options.seed)
    torch.set_num_threads(options.threads)
    teacher_model = AutoModelForSequenceClassification.from_pretrained(teacher).eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded, types = encode(tokenizer, texts, options.max_length)
    decisions = torch.from_numpy(predict(teacher_model, encoded, pad_id, types=types).argmax(1))
    teacher_shape = shape(teacher_model)
    if layers:
        model, kept_layers = make_student(teacher, layers)
    else:
        model, kept_layers = teacher_model, list(range(teacher_model.config.num_hidden_layers))
    parts = all_parts(model)
    remove, keep = check_fractions(pruning.heads, pruning.ffn, parts[0].heads, len(parts),
                                   parts[0].ffn_in.out_features)
    say(f"measuring head and neuron importance on {len(texts)} training texts ...")
    measured = {"gradient": lambda: gradient_importance(model, encoded, decisions, pad_id, types),
                "magnitude": lambda: magnitude_importance(model)}
    criteria = CRITERIA if pruning.importance == "auto" else (pruning.importance,)
    candidates: dict[str, tuple[Any, dict, list]] = {}
    before = {}
    for criterion in criteria:
        heads, neurons = measured[criterion]()
        pruned, kept_neurons = choose(heads, neurons, remove, keep)
        fresh = AutoModelForSequenceClassification.from_config(copy.deepcopy(model.config))
        fresh.load_state_dict(model.state_dict())
        candidate = apply(fresh, pruned, kept_neurons).eval()
        agreement = float((predict(candidate, encoded, pad_id, types=types).argmax(1) == decisions.numpy()).mean())
        before[criterion] = round(agreement, 4)
        say(f"{criterion} importance: agreement with the teacher on the training texts before recovery "
            f"{agreement:.4f}")
        candidates[criterion] = (candidate, pruned, kept_neurons)
    best = max(criteria, key=lambda c: before[c])  # ties: the first, gradient
    candidate, pruned, _ = candidates[best]
    report = {
        "method": "structured pruning (attention heads, feed-forward neurons" + (", layers" if layers else "") + ")",
        "heads_fraction": pruning.heads, "ffn_fraction": pruning.ffn,
        "layers": len(kept_layers), "layers_kept": kept_layers,
        "importance": best, "importance_requested": pruning.importance,
        "agreement_before_recovery": before,
        "heads_removed": {str(k): sorted(v) for k, v in sorted(pruned.items())},
        "pruned_heads": {str(k): sorted(v) for k, v in sorted((candidate.config.pruned_heads or {}).items())},
        "teacher_shape": teacher_shape, "shape": shape(candidate),
    }
    return candidate, report


def main(args: argparse.Namespace) -> None:
    """args.settings: the serving layout the speeds are measured with (the CLI's, app.lifecycle.commands)."""
    teacher = Path(args.teacher)
    hf_config, _, _ = softmax_teacher(teacher, "prune")
    if args.layers is not None:
        spread(hf_config.num_hidden_layers, args.layers)
    # Bad fractions fail here, before any work: with the teacher's own shape.
    model = AutoModelForSequenceClassification.from_config(hf_config)
    parts = all_parts(model)
    check_fractions(args.heads, args.ffn, parts[0].heads, args.layers or len(parts), parts[0].ffn_in.out_features)
    del model
    pruning = PruneOptions(heads=args.heads, ffn=args.ffn, importance=args.importance)

    def build(teacher: Path, texts, targets, output: Path, options: DistillOptions, tokenizer, data):
        started = time.perf_counter()
        pruned, described = prune_model(teacher, texts, options, pruning, tokenizer, args.layers)
        described["prune_s"] = round(time.perf_counter() - started, 1)
        what = (f"pruned with {described['importance']} importance to heads {described['shape']['heads_per_layer']}, "
                f"feed-forward width {described['shape']['ffn_width']}; recovering" if options.epochs else "no recovery")
        return recover(pruned, teacher, texts, targets, output, options, tokenizer, data, described, what)

    def summary(training: dict[str, Any]) -> str:
        s, t = training["shape"], training["teacher_shape"]
        return (f"pruned by {training['importance']} importance to heads {s['heads_per_layer']} (of "
                f"{t['heads_per_layer'][0]}), feed-forward width {s['ffn_width']} (of {t['ffn_width']}), "
                f"{s['parameters'] / 1e6:.1f}M of {t['parameters'] / 1e6:.1f}M parameters")

    compress(args, "prune", "pruning", build, summary)
