"""One session on one provider and artifact, and the check of what really runs. No GPU exists here: CUDA sessions
are simulated by a fake session factory (the only mock in the suite, for hardware that cannot exist on this
machine); CPU and OpenVINO sessions are real."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from app.engine import Engine, openvino_device
from app.errors import ModelLoadError
from app.repository import Artifact, read_config

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
IDS = np.array([[2, 7, 3, 0], [2, 9, 11, 3]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)


class FakeGpuSessions:
    """Stands in for onnxruntime on a CUDA machine: records what was opened; a CUDA request either 'works'
    or silently falls back to CPU, as onnxruntime-gpu does when the CUDA libraries fail to load."""

    def __init__(self, cuda_works: bool) -> None:
        self.cuda_works = cuda_works
        self.opened: list[tuple[str, list[str]]] = []

    def __call__(self, path, sess_options=None, providers=()):
        self.opened.append((path.rsplit("/", 1)[-1], list(providers)))
        if CUDA not in providers:  # CPU and OpenVINO sessions are real
            return ort.InferenceSession(path, sess_options=sess_options, **({"providers": providers} if providers else {}))
        real = ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])
        in_use = [CUDA, CPU] if (CUDA in providers and self.cuda_works) else [CPU]
        real_get_providers = real.get_providers
        real.get_providers = lambda: in_use if in_use[0] == CUDA else real_get_providers()
        return real


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
    """onnxruntime's OpenVINO plugin, really loaded: where it lists no device (AMD CPUs) it says why."""
    device, precision_or_why = openvino_device()
    if device is None:
        pytest.skip(precision_or_why)
    path = tiny_model_repo / "tiny" / "1"
    config = read_config(path)
    engine = Engine(path, config, "openvino", threads=2)
    assert engine.session.get_providers()[0] == "OpenVINOExecutionProvider"
    assert engine.artifact.precision == "fp32" and engine.precision in ("fp32", "bf16")
    atol = 1e-4 if engine.precision == "fp32" else 5e-2
    np.testing.assert_allclose(engine.run(IDS, MASK), Engine(path, config, "cpu").run(IDS, MASK), atol=atol)


def test_openvino_unavailable_is_a_load_error_with_the_reason(tiny_model_repo, monkeypatch):
    """The AMD case, where the plugin lists no device: simulated by the answer the plugin gives there."""
    import app.engine

    monkeypatch.setattr(app.engine, "openvino_device", lambda: (None, "the OpenVINO plugin lists no CPU device"))
    path = tiny_model_repo / "tiny" / "1"
    with pytest.raises(ModelLoadError, match="OpenVINO cannot run here: the OpenVINO plugin lists no CPU device"):
        Engine(path, read_config(path), "openvino")


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
