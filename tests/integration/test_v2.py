"""The Open Inference Protocol (KServe V2) transport, spoken to by the real `tritonclient.http` against a real
`bertserve serve` on loopback: same service and batchers as /predict, so the same scores. The wire shapes by raw
HTTP, which need no process, run in-process: tests/unit/test_v2_http.py."""

from __future__ import annotations

import shutil
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app import __version__
from tests.support.servers import post

pytestmark = pytest.mark.process

TEXTS = ["this medicine worked wonders and i feel great", "terrible side effects", "headache", "it was okay"]
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def client(tiny_server):
    with triton.InferenceServerClient(url=f"127.0.0.1:{tiny_server.port}") as c:
        yield c


def text_input(texts: list[str], binary: bool, shape: list[int] | None = None) -> triton.InferInput:
    data = np.array(texts, dtype=object).reshape(shape or [len(texts)])
    tensor = triton.InferInput("text", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data, binary_data=binary)
    return tensor


def predict_scores(server, texts: list[str]) -> np.ndarray:
    """Scores from /predict, in label order ([n, labels])."""
    answers = post(server, {"inputs": texts}).json()
    return np.array([[{s["label"]: s["score"] for s in row}[label] for label in LABELS] for row in answers])


# ---- health and metadata ----


def test_health_and_server_metadata(client, tiny_server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "bertserve", "version": __version__, "extensions": ["binary_tensor_data", "classification"],
    }
    ready = httpx.get(tiny_server.url + "/v2/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["models"] == {"tiny": {"1": "ready"}}
    assert httpx.get(tiny_server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(tiny_server.url + "/v2/").json()["name"] == "bertserve"  # the protocol spec writes /v2/


def test_model_readiness(client, tiny_server):
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "2") and not client.is_model_ready("nope")
    r = httpx.get(tiny_server.url + "/v2/models/nope/ready")
    assert r.status_code == 404 and "'nope' is not served" in r.json()["error"]
    assert httpx.get(tiny_server.url + "/v2/models/tiny/versions/x/ready").status_code == 422


def test_model_metadata(client):
    """Both inputs are listed, the optional `text_pair` too (issue 22), as tritonclient reads them."""
    expected = {
        "name": "tiny", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                   {"name": "text_pair", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
        "parameters": {"labels": LABELS, "max_length": 64},
    }
    assert client.get_model_metadata("tiny") == expected
    assert client.get_model_metadata("tiny", "1") == expected
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("tiny", "7")
    assert caught.value.status() == "404" and "version 7 is not served" in caught.value.message()


# ---- inference with tritonclient ----


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-input", "json-input"])
@pytest.mark.parametrize("outputs", ["default", "json", "binary", "mixed", "scores-only"])
def test_infer_matches_predict(client, tiny_server, binary_in, outputs):
    requested = {
        "default": None,  # tritonclient then asks for every output in binary (parameters.binary_data_output)
        "json": [triton.InferRequestedOutput("label", binary_data=False),
                 triton.InferRequestedOutput("scores", binary_data=False)],
        "binary": [triton.InferRequestedOutput("label"), triton.InferRequestedOutput("scores")],
        "mixed": [triton.InferRequestedOutput("scores", binary_data=False), triton.InferRequestedOutput("label")],
        "scores-only": [triton.InferRequestedOutput("scores", binary_data=binary_in)],
    }[outputs]
    result = client.infer("tiny", [text_input(TEXTS, binary_in)], outputs=requested, request_id=f"req-{outputs}")
    response = result.get_response()
    assert response["model_name"] == "tiny" and response["model_version"] == "1"
    assert response["id"] == f"req-{outputs}"
    names = [o["name"] for o in response["outputs"]]
    assert names == {"default": ["label", "scores"], "mixed": ["scores", "label"], "scores-only": ["scores"]}.get(
        outputs, ["label", "scores"])
    for output in response["outputs"]:
        binary = "binary_data_size" in output.get("parameters", {})
        assert binary == (outputs in ("default", "binary") or (outputs == "mixed" and output["name"] == "label")
                          or (outputs == "scores-only" and binary_in))
        assert binary != ("data" in output)
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (len(TEXTS), len(LABELS))
    np.testing.assert_allclose(scores, predict_scores(tiny_server, TEXTS), atol=1e-5)
    labels = result.as_numpy("label")
    if outputs == "scores-only":
        assert labels is None
    else:
        assert labels.shape == (len(TEXTS),)
        # BYTES come back as bytes from binary data and as str from JSON data
        assert [label.decode() if isinstance(label, bytes) else label for label in labels] == [
            LABELS[i] for i in scores.argmax(axis=1)]


def test_explicit_version_column_shape_and_compressed_request(client, tiny_server):
    texts = TEXTS[:3]
    result = client.infer("tiny", [text_input(texts, True, shape=[3, 1])], model_version="1",
                          request_compression_algorithm="gzip")
    assert result.get_response()["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("scores"), predict_scores(tiny_server, texts), atol=1e-5)


def test_classification_extension_gives_the_k_best(client, tiny_server):
    result = client.infer("tiny", [text_input(TEXTS, True)], outputs=[triton.InferRequestedOutput("scores", class_count=2)])
    top = result.as_numpy("scores")
    assert top.shape == (len(TEXTS), 2)
    expected = predict_scores(tiny_server, TEXTS)
    for row, scores in zip(top, expected):
        order = np.argsort(-scores)[:2]
        assert [entry.decode().split(":", 1)[1] for entry in row] == [f"{i}:{LABELS[i]}" for i in order]
        assert [float(entry.decode().split(":")[0]) for entry in row] == pytest.approx(scores[order], abs=1e-5)


def test_unknown_model_and_version_raise_a_useful_error(client):
    with pytest.raises(InferenceServerException) as caught:
        client.infer("nope", [text_input(TEXTS, True)])
    assert caught.value.status() == "404"
    assert "model 'nope' is not served" in caught.value.message() and "tiny" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tiny", [text_input(TEXTS, False)], model_version="9")
    assert "version 9 is not served" in caught.value.message() and "[1]" in caught.value.message()


def test_api_keys_and_a_failed_model(tiny_model_repo, tmp_path, start_server):
    """Model and infer routes need the key, health does not; a failed model is not ready, the server not
    ready (503) while the other model serves."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "broken" / "1")
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    server = start_server(repo, env={"BERTSERVE_API_KEYS": "k1"}, wait_ready=False)
    server.wait_until("/v2/health/live")
    auth = {"Authorization": "Bearer k1"}
    with triton.InferenceServerClient(url=f"127.0.0.1:{server.port}") as c:
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health/ready").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.is_server_live() and not c.is_server_ready()
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503
        with pytest.raises(InferenceServerException) as caught:
            c.infer("tiny", [text_input(TEXTS, True)])
        assert caught.value.status() == "401" and "API key" in caught.value.message()
        with pytest.raises(InferenceServerException):
            c.get_model_metadata("tiny")
        assert not c.is_model_ready("tiny")  # 401 without the key
        assert c.is_model_ready("tiny", headers=auth) and not c.is_model_ready("broken", headers=auth)
        r = httpx.get(server.url + "/v2/models/broken/ready", headers=auth)
        assert r.status_code == 400 and r.json()["error"] == "model 'broken' is not ready: version 1 failed to load"
        assert httpx.get(server.url + "/v2/models/broken/versions/1/ready", headers=auth).status_code == 400
        result = c.infer("tiny", [text_input(TEXTS, True)], headers=auth)
        assert result.as_numpy("scores").shape == (len(TEXTS), 3)
        with pytest.raises(InferenceServerException) as caught:
            c.infer("broken", [text_input(TEXTS, True)], headers=auth)
        assert caught.value.status() == "404"
