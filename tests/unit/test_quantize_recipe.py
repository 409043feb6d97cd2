"""SmoothQuant for dynamic INT8 (app.lifecycle.quantize): activation maxima over real tokens, a rescaled graph that
computes what fp32 computed, and less INT8 error where one channel dwarfs the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from app.lifecycle.quantize import activation_maxima, smooth_quant
from app.tokenizer import TextTokenizer, pad
from tests.support.tiny import CORPUS

TEXTS = CORPUS + ["ok", "great " * 20]  # lengths differ: batches are padded


def logits(path: Path, tokenizer: TextTokenizer, texts: list[str], output: int = 0) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask = pad([e.ids for e in tokenizer.encode(texts)], tokenizer.pad_id)
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    return session.run(None, feed)[output]


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {init.name for init in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def test_maxima_cover_real_tokens_only(tiny_model_repo):
    version = tiny_model_repo / "tiny" / "1"
    tokenizer = TextTokenizer(version / "tokenizer.json", 64)
    batched = activation_maxima(version / "model.onnx", tokenizer, TEXTS, batch=len(TEXTS))
    alone = [activation_maxima(version / "model.onnx", tokenizer, [text]) for text in TEXTS]  # no padding at all
    assert set(batched) == {n.input[0] for n in weight_matmuls(onnx.load(version / "model.onnx"))}
    for name, value in batched.items():
        np.testing.assert_allclose(value, np.max([a[name] for a in alone], axis=0), rtol=1e-4, atol=1e-5)


def test_smoothing_keeps_the_fp32_function(tiny_model_repo, tmp_path):
    version = tiny_model_repo / "tiny" / "1"
    tokenizer = TextTokenizer(version / "tokenizer.json", 64)
    smooth_quant(version / "model.onnx", tmp_path / "smoothed.onnx",
                 activation_maxima(version / "model.onnx", tokenizer, TEXTS), alpha=0.7)
    smoothed = onnx.load(tmp_path / "smoothed.onnx")
    produced_by = {out: node.op_type for node in smoothed.graph.node for out in node.output}
    assert all(produced_by[n.input[0]] == "Mul" for n in weight_matmuls(smoothed))  # every one rescaled
    np.testing.assert_allclose(logits(tmp_path / "smoothed.onnx", tokenizer, TEXTS),
                               logits(version / "model.onnx", tokenizer, TEXTS), atol=1e-4)


def test_smoothing_shrinks_int8_error_from_an_outlier_channel(tiny_model_repo, tmp_path):
    """Channel 0 of the input the first MatMuls read multiplied by 60 (an added Mul), their weights' row 0 divided
    by 60: the same fp32 function with the outlier channel transformers have. Dynamic INT8 (one activation scale
    per tensor) then loses the other channels; smoothed first, it loses far less."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    version = tiny_model_repo / "tiny" / "1"
    tokenizer = TextTokenizer(version / "tokenizer.json", 64)
    model = onnx.load(version / "model.onnx")
    inits = {init.name: init for init in model.graph.initializer}
    first = weight_matmuls(model)[0]
    source = first.input[0]
    readers = [n for n in weight_matmuls(model) if n.input[0] == source]
    for node in readers:
        weight = numpy_helper.to_array(inits[node.input[1]]).copy()
        weight[0] /= 60
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        node.input[0] = "outlier_out"
    boost = np.ones(weight.shape[0], np.float32)
    boost[0] = 60
    model.graph.initializer.append(numpy_helper.from_array(boost, "outlier"))
    model.graph.node.insert(list(model.graph.node).index(first),
                            onnx.helper.make_node("Mul", [source, "outlier"], ["outlier_out"]))
    # What the first MatMul computes, as a second output: the error INT8 makes there, before a random tiny model's
    # later layers wash it out.
    model.graph.output.append(onnx.helper.make_tensor_value_info(first.output[0], onnx.TensorProto.FLOAT, None))
    outlier = tmp_path / "outlier.onnx"
    onnx.save(model, outlier)
    np.testing.assert_allclose(logits(outlier, tokenizer, TEXTS), logits(version / "model.onnx", tokenizer, TEXTS),
                               atol=1e-4)
    reference = logits(outlier, tokenizer, TEXTS, output=1)

    def int8_error(graph: Path) -> float:
        quantize_dynamic(graph, graph.with_suffix(".int8.onnx"), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], extra_options={"WeightSymmetric": True})
        return float(np.abs(logits(graph.with_suffix(".int8.onnx"), tokenizer, TEXTS, output=1) - reference).mean())

    smooth_quant(outlier, tmp_path / "smoothed.onnx", activation_maxima(outlier, tokenizer, TEXTS), alpha=0.7)
    assert int8_error(tmp_path / "smoothed.onnx") < 0.5 * int8_error(outlier)
