"""One session on one provider and artifact, and the check of what really runs. No GPU exists here: CUDA sessions
are simulated by a fake session factory (the only mock in the suite, for hardware that cannot exist on this
machine); CPU and OpenVINO sessions are real (OpenVINO's own runtime, Intel and AMD alike)."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine import Engine, OpenVinoEngine, open_engine
from app.errors import ModelLoadError
from app.repository import Artifact, read_config
from tests.support.sessions import CPU, CUDA, FakeGpuSessions

IDS = np.array([[2, 7, 3, 0], [2, 9, 11, 3]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)


@pytest.fixture
def two_artifact_model(tiny_model_repo, tmp_path):
    """The tiny model with an 'int8' (cpu) and an fp32 (cuda, cpu) artifact: the same graph under two names."""
    import shutil

    path = tmp_path / "m"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    shutil.copy(path / "model.onnx", path / "model.int8.onnx")
    config = read_config(path).model_copy(
        update={
            "artifacts": [
                Artifact(file="model.int8.onnx", precision="int8", providers=["cpu"]),
                Artifact(file="model.onnx", precision="fp32", providers=["cuda", "cpu"]),
            ]
        }
    )
    return path, config


def test_cuda_session_takes_the_cuda_artifact(two_artifact_model):
    path, config = two_artifact_model
    fake = FakeGpuSessions(cuda_works=True)
    engine = Engine(path, config, "cuda", session_factory=fake)
    assert engine.provider == "cuda" and engine.use_io_binding
    assert engine.artifact.file == "model.onnx"  # INT8 does not run on CUDA
    assert fake.opened == [("model.onnx", [CUDA, CPU])]


def test_a_quiet_fallback_to_cpu_is_refused(two_artifact_model):
    path, config = two_artifact_model
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider was asked for but the session runs on CPU"):
        Engine(path, config, "cuda", session_factory=FakeGpuSessions(cuda_works=False))


def test_real_cpu_session_feeds_only_declared_inputs(tiny_model_repo):
    path = tiny_model_repo / "tiny" / "1"
    engine = Engine(path, read_config(path), "cpu")
    assert engine.provider == "cpu" and engine.session.get_providers() == [CPU]
    logits = engine.run(np.array([[2, 7, 3]], dtype=np.int64), np.ones((1, 3), dtype=np.int64))
    assert logits.shape == (1, 3) and logits.dtype == np.float32


def test_real_openvino_session_gives_the_cpu_logits(tiny_model_repo):
    """OpenVINO's own runtime on the fp32 graph, on whatever x86-64 CPU runs the tests: in fp32 it answers what
    onnxruntime answers; in bf16 (OpenVINO's default where the CPU has it) within bf16's rounding."""
    path = tiny_model_repo / "tiny" / "1"
    config = read_config(path)
    engine = open_engine(path, config, "openvino", threads=2)
    assert isinstance(engine, OpenVinoEngine) and engine.provider == "openvino" and engine.threads == 2
    assert engine.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    assert engine.artifact.precision == "fp32" and engine.precision in ("fp32", "bf16")
    reference = Engine(path, config, "cpu").run(IDS, MASK)
    atol = 1e-4 if engine.precision == "fp32" else 5e-2
    np.testing.assert_allclose(engine.run(IDS, MASK), reference, atol=atol)
    forced = open_engine(path, config, "openvino", openvino_precision="f32")
    assert forced.precision == "fp32" and str(forced) == "openvino on model.onnx (fp32)"
    logits = forced.run(IDS, MASK)
    np.testing.assert_allclose(logits, reference, atol=1e-4)
    forced.run(IDS[::-1].copy(), MASK[::-1].copy())  # the request's buffers are reused: an answer is a copy
    np.testing.assert_allclose(logits, reference, atol=1e-4)


def test_openvino_feeds_type_ids_to_a_graph_that_declares_them(tiny_model_repo):
    path = tiny_model_repo / "tiny" / "1"
    config = read_config(path)
    engine = open_engine(path, config, "openvino", openvino_precision="f32")
    assert engine.input_names == Engine(path, config, "cpu").input_names
    types = np.array([[0, 0, 1, 0], [0, 0, 1, 1]], dtype=np.int64)
    np.testing.assert_allclose(engine.run(IDS, MASK, types), Engine(path, config, "cpu").run(IDS, MASK, types),
                               atol=1e-4)


def test_openvino_unavailable_is_a_load_error_with_the_reason(tiny_model_repo, monkeypatch):
    """Where the runtime is missing (a platform without the wheel): the reason, at load."""
    import app.engine

    monkeypatch.setattr(app.engine, "openvino_core", lambda: (None, "the openvino package is not installed"))
    assert app.engine.available("openvino") == "the openvino package is not installed"
    path = tiny_model_repo / "tiny" / "1"
    with pytest.raises(ModelLoadError, match="OpenVINO cannot run here: the openvino package is not installed"):
        open_engine(path, read_config(path), "openvino")


def test_openvino_refuses_a_corrupt_graph_and_a_wrong_label_count(tiny_model_repo, tmp_path):
    import shutil

    path = tmp_path / "broken"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    config = read_config(path)
    with pytest.raises(ModelLoadError, match="3 outputs but bertserve.json lists 2 labels"):
        open_engine(path, config.model_copy(update={"labels": ["a", "b"]}), "openvino")
    (path / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match="model.onnx: OpenVINO cannot load it"):
        open_engine(path, config, "openvino")


def test_label_count_must_match_the_graph(tiny_model_repo):
    path = tiny_model_repo / "tiny" / "1"
    config = read_config(path).model_copy(update={"labels": ["a", "b"]})
    with pytest.raises(ModelLoadError, match="3 outputs but bertserve.json lists 2 labels"):
        Engine(path, config, "cpu")


def test_a_graph_needing_an_input_the_engine_does_not_feed_is_refused_at_load(tiny_model_repo, tmp_path):
    """LayoutLM-style `bbox`: refused when the engine opens, not by the first request failing."""
    import shutil

    import onnx
    from onnx import TensorProto, helper

    path = tmp_path / "bbox"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    graph = onnx.load(path / "model.onnx")
    graph.graph.input.append(helper.make_tensor_value_info("bbox", TensorProto.INT64, ["batch", "sequence", 4]))
    onnx.save(graph, path / "model.onnx")
    with pytest.raises(ModelLoadError, match=r"graph needs inputs \['bbox'\] that bertserve does not feed"):
        Engine(path, read_config(path), "cpu")


def test_corrupt_onnx_file_is_named(tiny_model_repo, tmp_path):
    import shutil

    path = tmp_path / "broken"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    (path / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError, match="model.onnx: onnxruntime cannot load it"):
        Engine(path, read_config(path), "cpu")


def test_io_binding_path_gives_the_same_logits(tiny_model_repo):
    """The IOBinding path is what CUDA sessions use; on this CPU-only machine it is checked on CPU."""
    path = tiny_model_repo / "tiny" / "1"
    engine = Engine(path, read_config(path), "cpu")
    plain = engine.run(IDS, MASK)
    engine.use_io_binding = True
    np.testing.assert_allclose(engine.run(IDS, MASK), plain, rtol=1e-6, atol=1e-6)


def test_missing_artifact_or_tokenizer_is_named(tiny_model_repo, tmp_path):
    import shutil

    path = tmp_path / "incomplete"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    (path / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model.onnx: missing \(named by .*bertserve.json\)"):
        read_config(path)
    (path / "bertserve.json").write_text('{"labels": [], "max_length": 8, "artifacts": []}')  # one label is valid
    with pytest.raises(ModelLoadError, match="bertserve.json: labels"):
        read_config(path)
