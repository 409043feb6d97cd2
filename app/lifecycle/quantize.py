"""Dynamic INT8 quantization recipes, SmoothQuant, FP16 conversion, and the per-MatMul sensitivity used to pick
remedies."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from app.scores import Head
from app.tokenizer import TextInput, TextTokenizer, pad, pad_types

QUANTIZED_OPS = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"]
EMBEDDING_OPS = {"Gather", "EmbedLayerNormalization"}
# SmoothQuant's migration strength when export has calibration texts. On the demo model (docs/int8.md, alphas
# 0.5-0.8 measured) 0.7 moved the fewest decisions on the training texts and on the test texts; with per-output-
# channel weights a larger share moved onto the weights costs them precision (0.8 was worse again).
SMOOTH_ALPHA = 0.7


@dataclass(frozen=True)
class Recipe:
    per_channel: bool = True
    fp32_matmuls: tuple[str, ...] = ()  # MatMul nodes left in fp32
    fp32_embeddings: bool = False
    smooth_alpha: float | None = None  # quantized from the graph smooth_quant rescaled with this alpha

    def describe(self) -> str:
        text = "dynamic int8 " + ("per-channel" if self.per_channel else "per-tensor")
        if self.smooth_alpha is not None:
            text = f"smoothquant {self.smooth_alpha} + {text}"
        if self.fp32_matmuls:
            text += f", {len(self.fp32_matmuls)} MatMul fp32"
        if self.fp32_embeddings:
            text += ", fp32 embeddings"
        return text

    def operators(self) -> list[str]:
        return [op for op in QUANTIZED_OPS if not (self.fp32_embeddings and op in EMBEDDING_OPS)]


def quantize(fp32_path: Path, out_path: Path, recipe: Recipe, optimized: bool) -> None:
    """Write the int8 graph. ORTQuantizer for plain exports; onnxruntime directly for optimised (fused) graphs,
    on which ORTQuantizer fails, and for smoothed ones: that is what docs/int8.md measured (through ORTQuantizer
    the same smoothed recipe moved 9 of the demo's 379 test decisions, not 4, at the gate's batches of 8)."""
    if optimized or recipe.smooth_alpha is not None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # It warns through the root logger that pre-processing (shape inference) may help: it does not here.
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(
                fp32_path, out_path, per_channel=recipe.per_channel, weight_type=QuantType.QInt8,
                op_types_to_quantize=recipe.operators(), nodes_to_exclude=list(recipe.fp32_matmuls),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "WeightSymmetric": True},
            )
        finally:
            root.setLevel(level)
        return
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx512_vnni(
        is_static=False, per_channel=recipe.per_channel, nodes_to_exclude=list(recipe.fp32_matmuls),
        operators_to_quantize=recipe.operators(),
    )
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        ORTQuantizer.from_pretrained(fp32_path.parent, file_name=fp32_path.name).quantize(config, scratch)
        (produced,) = Path(scratch).glob("*.onnx")  # its name: optimum's, from the input's
        shutil.move(produced, out_path)


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """FP16 weights and compute for CUDA; inputs and logits stay int64/float32 so callers see no change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True)
    onnx.save(model, out_path)


def activation_maxima(fp32_path: Path, tokenizer: TextTokenizer, texts: list[TextInput],
                      batch: int = 16) -> dict[str, np.ndarray]:
    """Per input channel, the largest |value| each weight MatMul's input takes on the texts' real tokens (padding
    left out), keyed by the input's name: what smooth_quant balances."""
    model = onnx.load(fp32_path)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    names = sorted({n.input[0] for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights})
    for name in names:
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    maxima: dict[str, np.ndarray] = {}
    encoded = tokenizer.encode(texts)
    for start in range(0, len(encoded), batch):
        part = encoded[start:start + batch]
        ids, mask = pad([e.ids for e in part], tokenizer.pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in wanted:
            feed["token_type_ids"] = pad_types([e.type_ids for e in part], ids.shape[1])
        real = mask.astype(bool)
        for name, value in zip(names, session.run(names, feed)):
            top = np.abs(value[real]).max(axis=0)  # [tokens, channels] -> [channels]
            maxima[name] = np.maximum(maxima[name], top) if name in maxima else top
    return maxima


def smooth_quant(fp32_path: Path, out_path: Path, maxima: dict[str, np.ndarray], alpha: float = 0.5) -> None:
    """SmoothQuant (Xiao et al. 2023) for dynamic INT8: a transformer's activations have a few channels far larger
    than the rest, and one int8 scale per tensor leaves the others few levels. Each weight MatMul's input is
    divided per channel by s = max|x|^alpha / max|W|^(1 - alpha) (an added Mul, shared by the MatMuls reading the
    same tensor) and its weight rows multiplied by s: the fp32 result is unchanged, the int8 one loses less."""
    model = onnx.load(fp32_path)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, list] = {}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] in maxima:
            readers.setdefault(node.input[0], []).append(node)
    for name, nodes in readers.items():
        if any(uses[n.input[1]] > 1 for n in nodes):  # a shared weight would be rescaled for its other readers too
            continue
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0)
        scale = np.power(np.maximum(maxima[name], 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        scale = np.clip(scale, 1e-2, 1e2).astype(np.float32)
        for node, weight in zip(nodes, arrays):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(scale[:, None] * weight, node.input[1]))
        smoothed = f"{name}_smoothed"
        graph.initializer.append(numpy_helper.from_array(1.0 / scale, f"{name}_smooth_scale"))
        first = min(list(graph.node).index(n) for n in nodes)
        graph.node.insert(first, helper.make_node("Mul", [name, f"{name}_smooth_scale"], [smoothed],
                                                  name=f"{nodes[0].name}_smooth"))
        for node in nodes:
            node.input[0] = smoothed
    onnx.save(model, out_path)


def _fake_quantize_weight(weight: np.ndarray) -> np.ndarray:
    """What symmetric per-output-channel int8 does to a MatMul weight [in, out]."""
    scale = np.maximum(np.abs(weight).max(axis=0, keepdims=True), 1e-12) / np.float32(127)
    return np.clip(np.round(weight / scale), -127, 127) * scale


def _fake_quantize_activation(x: np.ndarray) -> np.ndarray:
    """What DynamicQuantizeLinear (per-tensor uint8, asymmetric) does to a MatMul input."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = np.float32((high - low) / 255.0 or 1.0)
    zero = np.float32(np.clip(np.round(-low / scale), 0, 255))
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def matmul_sensitivity(fp32_path: Path, tokenizer: TextTokenizer, texts: list[TextInput],
                       head: Head) -> list[tuple[str, float]]:
    """Each weight MatMul's effect on the head's scores (mean absolute change) when it alone is int8, most
    harmful first.

    One session for all: every such MatMul gets an added `delta` input (a broadcast zero when idle) and its
    input is exposed. With only node i quantized, its input is unchanged, so feeding delta_i = Q(x)Q(W) - xW
    reproduces exactly the output of that partly quantized model."""
    model = onnx.load(fp32_path)
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    exposed = set()
    for node in nodes:
        raw, delta = f"{node.output[0]}_raw", f"{node.name}_delta"
        graph.node.insert(list(graph.node).index(node) + 1, helper.make_node("Add", [raw, delta], [node.output[0]]))
        node.output[0] = raw
        graph.input.append(helper.make_tensor_value_info(delta, onnx.TensorProto.FLOAT, None))
        if node.input[0] not in exposed:
            exposed.add(node.input[0])
            graph.output.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    encoded = tokenizer.encode(texts)
    ids, mask = pad([e.ids for e in encoded], tokenizer.pad_id)
    base = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:  # a pair's second text: type 1, as served
        base["token_type_ids"] = pad_types([e.type_ids for e in encoded], ids.shape[1])
    idle = np.zeros((1,), dtype=np.float32)
    base |= {f"{n.name}_delta": idle for n in nodes}
    names = [o.name for o in session.get_outputs()]

    outputs = dict(zip(names, session.run(names, base)))
    reference = head.scores(outputs[names[0]])
    effects = []
    for node in nodes:
        x = outputs[node.input[0]]
        weight = numpy_helper.to_array(weights[node.input[1]])
        delta = _fake_quantize_activation(x) @ _fake_quantize_weight(weight) - x @ weight
        (logits,) = session.run(names[:1], base | {f"{node.name}_delta": delta.astype(np.float32)})
        effects.append((node.name, float(np.abs(head.scores(logits) - reference).mean())))
    return sorted(effects, key=lambda item: -item[1])
