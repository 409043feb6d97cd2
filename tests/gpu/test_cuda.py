"""The CUDA path on a real GPU (`make gpu-check` runs these): skipped, with the reason, where onnxruntime has no CUDA
provider — which is every machine this project's CI runs on. Nothing here is simulated."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest

from app.engine import Engine
from app.lifecycle.quantize import to_fp16
from app.loader import load_model
from app.repository import Artifact, read_config, write_config
from app.settings import Settings

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                       reason="this onnxruntime build has no CUDAExecutionProvider (no GPU, or the cpu extra)"),
]
IDS = np.array([[2, 7, 3, 0], [2, 9, 11, 3]], dtype=np.int64)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)


@pytest.fixture
def tiny_with_fp16(tiny_model_repo, tmp_path):
    path = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    to_fp16(path / "model.onnx", path / "model.fp16.onnx")
    config = read_config(path)
    fp16 = Artifact(file="model.fp16.onnx", precision="fp16", providers=["cuda"])
    write_config(path, config.model_copy(update={"artifacts": [fp16, *config.artifacts]}))
    return path


def test_cuda_session_really_runs_on_cuda_and_matches_cpu(tiny_with_fp16):
    config = read_config(tiny_with_fp16)
    fp32 = config.artifacts_for("cpu")[0]
    cuda = Engine(tiny_with_fp16, config, "cuda", fp32)
    assert cuda.session.get_providers()[0] == "CUDAExecutionProvider" and cuda.use_io_binding
    np.testing.assert_allclose(cuda.run(IDS, MASK), Engine(tiny_with_fp16, config, "cpu", fp32).run(IDS, MASK),
                               atol=1e-3)
    fp16 = Engine(tiny_with_fp16, config, "cuda")
    assert fp16.artifact.precision == "fp16" and fp16.run(IDS, MASK).dtype == np.float32


def test_auto_measures_fp16_and_fp32_on_cuda_and_serves_one(tiny_with_fp16):
    model = load_model("tiny", 1, tiny_with_fp16, Settings(batch_autotune=False))
    trials = model.describe()["engine"]["candidates"]
    assert [(t["provider"], t["artifact"]) for t in trials] == [("cuda", "model.fp16.onnx"), ("cuda", "model.onnx")]
    assert model.engine.provider == "cuda" and any(t["chosen"] for t in trials)
