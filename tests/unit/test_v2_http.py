"""The Open Inference Protocol (KServe V2) over HTTP, in-process (the real app over httpx's ASGITransport, the tiny
model's real sessions): the JSON and binary wire shapes by hand, every malformed request's JSON error, the body limits,
counting like /predict and the OpenAPI document. No process boundary is under test here; tritonclient against a real
server is tests/integration/test_v2.py, the protocol seam without HTTP tests/unit/test_v2_protocol.py."""

from __future__ import annotations

import gzip
import struct

import httpx
import numpy as np
import pytest

from app.settings import Settings
from tests.support.apps import in_process
from tests.support.metrics import metric

TEXTS = ["this medicine worked wonders and i feel great", "terrible side effects", "headache", "it was okay"]
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                   log_level="warning"))


def predict_scores(call, texts: list[str]) -> np.ndarray:
    """Scores from /predict, in label order ([n, labels])."""
    answers = call("POST", "/predict", json={"inputs": texts}).json()
    return np.array([[{s["label"]: s["score"] for s in row}[label] for label in LABELS] for row in answers])


def infer_raw(call, body, path="/v2/models/tiny/infer", **kwargs) -> httpx.Response:
    if isinstance(body, dict):
        return call("POST", path, json=body, **kwargs)
    return call("POST", path, content=body, **kwargs)


def request(texts, **extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}], **extra}


def test_plain_json_request_and_response(call):
    r = infer_raw(call, request(TEXTS[:2], id="abc"))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"
    assert "inference-header-content-length" not in r.headers
    body = r.json()
    assert body["id"] == "abc" and body["model_name"] == "tiny"
    label, scores = body["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2], "data": label["data"]}
    assert scores["datatype"] == "FP32" and scores["shape"] == [2, 3] and len(scores["data"]) == 6
    np.testing.assert_allclose(np.reshape(scores["data"], (2, 3)), predict_scores(call, TEXTS[:2]), atol=1e-5)
    # nested data for shape [n, 1], versioned path, a softmax-free score function
    nested = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[TEXTS[0]], [TEXTS[1]]]}],
              "parameters": {"function_to_apply": "none"}, "outputs": [{"name": "scores"}]}
    r = infer_raw(call, nested, path="/v2/models/tiny/versions/1/infer")
    assert r.status_code == 200
    logits = np.reshape(r.json()["outputs"][0]["data"], (2, 3))
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, predict_scores(call, TEXTS[:2]), atol=1e-5)


def test_raw_binary_request_and_response(call):
    """The binary tensor extension by hand: the wire format, not just what tritonclient makes of it."""
    encoded = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS[:2])
    header = (b'{"inputs":[{"name":"text","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],'
              b'"outputs":[{"name":"scores","parameters":{"binary_data":true}}]}' % len(encoded))
    r = infer_raw(call, header + encoded, headers={
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    size = int(r.headers["inference-header-content-length"])
    meta = httpx.Response(200, content=r.content[:size]).json()
    assert meta["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": [2, 3],
                                "parameters": {"binary_data_size": 24}}]
    scores = np.frombuffer(r.content[size:], dtype="<f4").reshape(2, 3)
    np.testing.assert_allclose(scores, predict_scores(call, TEXTS[:2]), atol=1e-5)


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
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(call, body, headers, status, message):
    r = infer_raw(call, body, headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert set(r.json()) == {"error", "error_type"} and "Traceback" not in r.text
    assert infer_raw(call, request(TEXTS[:1])).status_code == 200


def test_unknown_model_is_404_before_the_body_is_judged_and_limits_apply(call):
    r = infer_raw(call, {"inputs": "whatever"}, path="/v2/models/nope/infer")
    assert r.status_code == 404 and r.json()["error_type"] == "not_found"
    big = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["' + b"a" * 2_000_000 + b'"]}]}'
    r = infer_raw(call, big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"
    bomb = gzip.compress(b" " * 3_000_000)  # small on the wire, over the limit once inflated
    r = infer_raw(call, bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "inflated" in r.json()["error"]
    r = infer_raw(call, request(TEXTS[:1], parameters={"timeout": 1}))  # 1 µs: dropped, 504
    assert r.status_code == 504 and r.json()["error_type"] == "timeout"


def test_requests_are_counted_like_predict(call):
    def count(status: str) -> float:
        return metric(call("GET", "/metrics").text, "bertserve_requests_total", model="tiny",
                      status=status)

    ok, bad = count("200"), count("422")
    assert infer_raw(call, request(TEXTS[:2])).status_code == 200
    assert infer_raw(call, request(["a"], outputs=[{"name": "x"}])).status_code == 422
    assert count("200") == ok + 1 and count("422") == bad + 1
    text = call("GET", "/metrics").text
    assert metric(text, "bertserve_request_duration_seconds_count", model="tiny") >= 2


def test_openapi_documents_the_v2_routes(call):
    spec = call("GET", "/openapi.json").json()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["maxItems"] == 3  # text_pair, candidate_labels
    assert "Inference-Header-Content-Length" in infer["description"]
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["security"] == [{"ClientKey": []}, {"AdminKey": []}]
    assert "security" not in spec["paths"]["/v2/health/ready"]["get"]
