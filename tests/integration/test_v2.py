"""The Open Inference Protocol (KServe V2) transport, spoken to by the real `tritonclient.http` and by raw HTTP,
against a real `bertserve serve` on loopback: same service and batchers as /predict, so the same scores."""

from __future__ import annotations

import gzip
import shutil
import struct
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app import __version__
from tests.conftest import metric, post

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


def infer_raw(server, body, path="/v2/models/tiny/infer", **kwargs) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.post(server.url + path, json=body, timeout=30, **kwargs)
    return httpx.post(server.url + path, content=body, timeout=30, **kwargs)


def request(texts, **extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


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


# ---- raw HTTP ----


def test_plain_json_request_and_response(tiny_server):
    r = infer_raw(tiny_server, request(TEXTS[:2], id="abc"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"
    assert "inference-header-content-length" not in r.headers
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "tiny"
    label, scores = body["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": label["data"]}
    assert scores["datatype"] == "FP32" and scores["shape"] == [2, 3] and len(scores["data"]) == 6
    np.testing.assert_allclose(np.reshape(scores["data"], (2, 3)), predict_scores(tiny_server, TEXTS[:2]), atol=1e-5)
    # nested data for shape [n, 1], versioned path, a softmax-free score function
    nested = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[TEXTS[0]], [TEXTS[1]]]}],
              "parameters": {"function_to_apply": "none"}, "outputs": [{"name": "scores"}]}
    r = infer_raw(tiny_server, nested, path="/v2/models/tiny/versions/1/infer")
    assert r.status_code == 200
    logits = np.reshape(r.json()["outputs"][0]["data"], (2, 3))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, predict_scores(tiny_server, TEXTS[:2]), atol=1e-5)


def test_raw_binary_request_and_response(tiny_server):
    """The binary tensor extension by hand: the wire format, not just what tritonclient makes of it."""
    encoded = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS[:2])
    header = (b'{"inputs":[{"name":"text","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],'
              b'"outputs":[{"name":"scores","parameters":{"binary_data":true}}]}' % len(encoded))
    r = infer_raw(tiny_server, header + encoded, headers={
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    size = int(r.headers["inference-header-content-length"])
    meta = httpx.Response(200, content=r.content[:size]).json()
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [2, 3],
                                "parameters": {"binary_data_size": 24}}]
    scores = np.frombuffer(r.content[size:], dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(scores, predict_scores(tiny_server, TEXTS[:2]), atol=1e-5)


def _binary_body(declared: int, payload: bytes) -> tuple[bytes, dict]:
    header = b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}]}' % declared
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    "body, headers, status, message",
    [
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, {}, 422, "takes BYTES"),
        ({"inputs": []}, {}, 422, "inputs: List should have at least 1 item"),
        ({"outputs": [{"name": "label"}]}, {}, 422, "inputs: Field required"),
        ({"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, {}, 422,
         "unexpected input 'txt'"),
        ({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]}, {}, 422,
         "shape [3] (3 elements) but 2 given"),
        ({"inputs": [{"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}, {}, 422,
         "send [n] or [n, 1]"),
        ({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 5]}]}, {}, 422,
         "data[1]: BYTES elements are sent as JSON strings"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, {}, 422, "has no data"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}]}, {}, 422, "empty text"),
        (request(["a"], outputs=[{"name": "probabilities"}]), {}, 422, "unexpected output 'probabilities'"),
        (request(["a"], outputs=[{"name": "label", "parameters": {"classification": 2}}]), {}, 422,
         "classification applies to 'scores' only"),
        (request(["a"], parameters={"timeout": "soon"}), {}, 422, "parameters.timeout"),
        (request(["a"] * 33), {}, 422, "33 inputs in one request; the limit is 32"),
        (b'{"inputs": [', {"Content-Type": "application/json"}, 422, "malformed"),
        (*_binary_body(9, struct.pack("<I", 1) + b"a"), 422, "declares 9 bytes of binary data; the body has 5"),
        (*_binary_body(5, struct.pack("<I", 7) + b"a"), 422, "element 0 claims 7 bytes"),
        (*_binary_body(5, struct.pack("<I", 1) + b"\xff"), 422, "not valid UTF-8"),
        (b'{"inputs": []}', {"Content-Type": "text/plain"}, 415, "send Content-Type"),
        (b'{"inputs": []}', {"Content-Type": "application/json", "Content-Encoding": "br"}, 415, "Content-Encoding"),
        (b'{"inputs": []}', {"Content-Type": "application/json", "Inference-Header-Content-Length": "99"}, 422,
         "Inference-Header-Content-Length must be"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(tiny_server, body, headers, status, message):
    r = infer_raw(tiny_server, body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert set(r.json()) == {"error", "error_type"} and "Traceback" not in r.text
    assert infer_raw(tiny_server, request(TEXTS[:1])).status_code == 200


def test_unknown_model_is_404_before_the_body_is_judged_and_limits_apply(tiny_server):
    r = infer_raw(tiny_server, {"inputs": "whatever"}, path="/v2/models/nope/infer")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    big = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["' + b"a" * 2_000_000 + b'"]}]}'
    r = infer_raw(tiny_server, big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    bomb = gzip.compress(b" " * 3_000_000)  # small on the wire, over the limit once inflated
    r = infer_raw(tiny_server, bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "inflated" in r.json()["error"]
    r = infer_raw(tiny_server, request(TEXTS[:1], parameters={"timeout": 1}))  # 1 µs: dropped, 504
    assert r.status_code == 504 and r.json()["error_type"] == "timeout"


def test_requests_are_counted_like_predict(tiny_server):
    def count(status: str) -> float:
        return metric(httpx.get(tiny_server.url + "/metrics").text, "bertserve_requests_total", model="tiny",
                      status=status)

    ok, bad = count("200"), count("422")
    assert infer_raw(tiny_server, request(TEXTS[:2])).status_code == 200
    assert infer_raw(tiny_server, request(["a"], outputs=[{"name": "x"}])).status_code == 422
    assert count("200") == ok + 1 and count("422") == bad + 1
    text = httpx.get(tiny_server.url + "/metrics").text
    assert metric(text, "bertserve_request_duration_seconds_count", model="tiny") >= 2


def test_openapi_documents_the_v2_routes(tiny_server):
    spec = httpx.get(tiny_server.url + "/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["maxItems"] == 2  # text_pair
    assert "Inference-Header-Content-Length" in infer["description"]
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["security"] == [{"ClientKey": []}, {"AdminKey": []}]
    assert "security" not in spec["paths"]["/v2/health/ready"]["get"]


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
