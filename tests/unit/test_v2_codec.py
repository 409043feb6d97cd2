"""The KServe V2 codec without HTTP: parse_infer (JSON and Triton's binary tensors) and encode_response (bytes, and
the JSON part's length when binary outputs follow)."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from app.api.v2.codec import encode_response, parse_infer
from app.api.v2.schemas import HEADER_LENGTH
from app.errors import InvalidInput
from app.protocol import v2


def body(inputs=None, **extra) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["good", "bad"]} | (inputs or {})
    return orjson.dumps({"inputs": [tensor], **extra})


def bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_json_request_defaults():
    parsed = parse_infer(body(), None, "m")
    assert parsed.texts == ["good", "bad"] and parsed.truncate and parsed.function is None
    assert [(w.name, w.binary, w.classification) for w in parsed.outputs] == [("label", False, None),
                                                                           ("scores", False, None)]


def test_binary_request_and_shape_n_by_1():
    raw = bytes_tensor(["één", "two"])
    header = body({"shape": [2, 1], "data": None, "parameters": {"binary_data_size": len(raw)}},
                  parameters={"truncate": False, "timeout": 5000})
    parsed = parse_infer(header + raw, str(len(header)), "m")
    assert parsed.texts == ["één", "two"] and not parsed.truncate and parsed.timeout_us == 5000


@pytest.mark.parametrize(("request_body", "header_length", "message"), [
    (b"{not json", None, "the request JSON is malformed"),
    (body({"name": "x"}), None, "unexpected input 'x' for model 'm'"),
    (body({"datatype": "FP32"}), None, "has datatype FP32; it takes BYTES"),
    (body({"shape": [3]}), None, "has shape [3] (3 elements) but 2 given"),
    (body({"shape": [1, 2]}), None, "send [n] or [n, 1] texts"),
    (body({"data": ["ok", ""]}), None, "element 1 is an empty text"),
    (body({"data": ["ok", 3]}), None, "data[1]: BYTES elements are sent as JSON strings"),
    (body({"data": None}), None, "has no data"),
    (body(parameters={"truncate": "yes"}), None, "parameters.truncate must be true or false"),
    (body(parameters={"function_to_apply": "tanh"}), None, "parameters.function_to_apply must be one of"),
    (body(parameters={"timeout": -1}), None, "parameters.timeout must be a positive number of microseconds"),
    (body(outputs=[{"name": "logits"}]), None, "unexpected output 'logits'"),
    (body(outputs=[{"name": "label", "parameters": {"classification": 2}}]), None, "applies to 'scores' only"),
    (body(), "999999", f"{HEADER_LENGTH} must be a byte count within the body"),
    (body({"data": None, "parameters": {"binary_data_size": 4}}) + b"\x09\x00\x00\x00", "__len__",
     "element 0 claims 9 bytes, past the binary data"),
])
def test_bad_requests_say_what_is_wrong(request_body, header_length, message):
    if header_length == "__len__":  # the JSON header is everything but the 4 binary bytes at the end
        header_length = str(len(request_body) - 4)
    with pytest.raises(InvalidInput) as caught:
        parse_infer(request_body, header_length, "m")
    assert message in caught.value.message


def encode(model, scores, parsed) -> tuple[bytes, int | None]:
    return encode_response(v2.Inferred(model, parsed.id, v2.outputs(model, scores, parsed.outputs)))


def test_responses_json_binary_and_classification():
    model = SimpleNamespace(name="m", version=3, config=SimpleNamespace(labels=["neg", "pos"]))
    scores = np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32)
    parsed = parse_infer(body(id="r1"), None, "m")
    raw, json_length = encode(model, scores, parsed)
    payload = orjson.loads(raw)
    assert json_length is None
    assert payload["id"] == "r1" and payload["model_version"] == "3"
    assert payload["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["pos", "neg"]}
    assert payload["outputs"][1]["shape"] == [2, 2] and payload["outputs"][1]["data"] == pytest.approx([.2, .8, .9, .1])

    parsed = parse_infer(body(outputs=[{"name": "scores", "parameters": {"binary_data": True}}]), None, "m")
    body_, split = encode(model, scores, parsed)
    header, raw = orjson.loads(body_[:split]), body_[split:]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(raw, dtype="<f4").tolist() == pytest.approx(scores.ravel().tolist())

    parsed = parse_infer(body(outputs=[{"name": "scores", "parameters": {"classification": 1}}]), None, "m")
    top = orjson.loads(encode(model, scores, parsed)[0])["outputs"][0]
    assert top["shape"] == [2, 1] and top["data"] == ["0.800000:1:pos", "0.900000:0:neg"]
