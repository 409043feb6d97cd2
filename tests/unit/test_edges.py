"""The API at its edges, in-process (httpx ASGITransport over the app, the tiny model's real sessions): a model
name headers cannot carry as is, CORS preflights for every documented header, the 405 error's type, the version
a V1 :explain is counted under, and odd header and field values that must be a 422, never a 500."""

from __future__ import annotations

import json
import shutil
from urllib.parse import unquote

import pytest

from app.api.v2.schemas import HEADER_LENGTH
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.metrics import metric

UNI = "uni-модель"  # a folder name that is not ASCII
ORIGIN = "https://ui.example"
TENSOR = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["this medicine worked wonders"]}


@pytest.fixture(scope="module")
def call(tiny_model_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("edges")
    for name in ("tiny", UNI):
        shutil.copytree(tiny_model_repo / "tiny" / "1", repo / name / "1")
    yield from in_process(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False,
                                   default_model="tiny", cors_origins=[ORIGIN], log_level="warning"))


def test_a_model_name_headers_cannot_carry_is_sent_percent_encoded_on_every_prediction_route(call):
    answers = [
        call("POST", "/predict", json={"inputs": "fine", "model": UNI}),
        call("POST", f"/v2/models/{UNI}/infer", json={"inputs": [TENSOR]}),
        call("POST", f"/v2/models/{UNI}/infer", json={"inputs": [TENSOR], "parameters": {"binary_data_output": True}}),
        call("POST", "/explain", json={"inputs": "fine", "model": UNI}),
        call("POST", f"/v1/models/{UNI}:explain", json={"instances": ["fine", "awful"]}),
    ]
    for r in answers:
        assert r.status_code == 200, r.text
        assert r.headers["x-model-name"].isascii() and unquote(r.headers["x-model-name"]) == UNI
        assert r.headers["x-model-version"] == "1"
    assert answers[1].json()["model_name"] == UNI  # bodies carry the name itself
    plain = call("POST", "/predict", json={"inputs": "fine"})
    assert plain.status_code == 200 and plain.headers["x-model-name"] == "tiny"  # an ASCII name is unchanged


def test_model_headers_escape_only_what_a_header_cannot_carry():
    from types import SimpleNamespace

    from app.api.transport import model_headers

    def name(n: str) -> str:
        return model_headers(SimpleNamespace(name=n, version=3))["X-Model-Name"]  # type: ignore[arg-type]

    assert name("drug-review_sentiment.v2 (a)") == "drug-review_sentiment.v2 (a)"
    assert name("a\r\nSet-Cookie: x") == "a%0D%0ASet-Cookie: x"  # no header injection from a folder name
    assert name("100%") == "100%25" and unquote(name("100%")) == "100%"  # decoding is never ambiguous
    assert unquote(name(UNI)) == UNI


@pytest.mark.parametrize("path", ["/predict", "/explain", "/v2/models/tiny/infer", "/v1/models/tiny:explain"])
def test_a_cors_preflight_allows_every_documented_request_header(call, path):
    asked = ("authorization, content-type, content-encoding, x-request-id, x-routing-key, "
             "inference-header-content-length")
    r = call("OPTIONS", path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                        "Access-Control-Request-Headers": asked})
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert set(asked.split(", ")) <= {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}


def test_cors_exposes_the_documented_response_headers(call):
    r = call("POST", "/predict", json={"inputs": "fine"}, headers={"Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"x-model-name", "x-model-version", "x-request-id", "retry-after", HEADER_LENGTH.lower()} <= exposed
    assert call("OPTIONS", "/predict", headers={"Origin": "https://elsewhere.example",
                                                 "Access-Control-Request-Method": "POST"}).status_code == 400


def test_a_wrong_method_is_typed_method_not_allowed(call):
    r = call("GET", "/predict")
    assert r.status_code == 405 and r.json()["error_type"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"


def test_a_v1_explain_is_counted_under_the_version_that_answered(call):
    def counted(version: str) -> float:
        return metric(call("GET", "/metrics").text, "bertserve_explanations_total", model="tiny", version=version,
                      status="200")

    before, before_blank = counted("1"), counted("")
    assert call("POST", "/v1/models/tiny:explain", json={"instances": ["fine", "awful"]}).status_code == 200
    assert counted("1") == before + 1 and counted("") == before_blank


@pytest.mark.parametrize("header", [b"\xb2", b"\xb9\xb2", b"-1", b"1e3", b"0x10", b"", b"99999999999999999999"])
def test_an_odd_binary_header_length_is_a_422(call, header):
    """Latin-1 b"\\xb2" is "²", which str.isdigit() takes for a digit and int() refuses."""
    body = json.dumps({"inputs": [TENSOR]}).encode()
    r = call("POST", "/v2/models/tiny/infer", content=body,
             headers=[(b"content-type", b"application/json"), (HEADER_LENGTH.encode(), header)])
    assert r.status_code == 422 and r.json()["error_type"] == "validation", r.text
    assert HEADER_LENGTH in r.json()["error"]


def test_an_odd_content_length_is_not_a_500(call):
    r = call("POST", "/predict", content=b'{"inputs": "fine"}',
             headers=[(b"content-type", b"application/json"), (b"content-length", b"\xb2")])
    assert r.status_code < 500 and r.headers["content-type"] == "application/json", r.text


@pytest.mark.parametrize("value", [[], {}, ["softmax"], {"a": 1}, 1, None, True])
def test_an_odd_function_to_apply_is_a_422_on_both_protocols(call, value):
    v2 = call("POST", "/v2/models/tiny/infer", json={"inputs": [TENSOR], "parameters": {"function_to_apply": value}})
    predict = call("POST", "/predict", json={"inputs": "fine", "parameters": {"function_to_apply": value}})
    if value is None:  # /predict's null means the default; V2's parameters are plain JSON, null is no function
        assert predict.status_code == 200, predict.text
    else:
        assert predict.status_code == 422 and "function_to_apply" in predict.json()["error"], predict.text
    assert v2.status_code == 422 and "function_to_apply" in v2.json()["error"], v2.text


@pytest.mark.parametrize("parameters", [
    {"timeout": []}, {"timeout": 1.5}, {"truncate": {}}, {"binary_data_output": [1]},
])
def test_odd_v2_parameters_are_422(call, parameters):
    r = call("POST", "/v2/models/tiny/infer", json={"inputs": [TENSOR], "parameters": parameters})
    assert r.status_code == 422 and r.json()["error_type"] == "validation", r.text


@pytest.mark.parametrize("output_parameters", [{"classification": []}, {"classification": "2"}, {"binary_data": {}}])
def test_odd_v2_output_parameters_are_422(call, output_parameters):
    r = call("POST", "/v2/models/tiny/infer",
             json={"inputs": [TENSOR], "outputs": [{"name": "scores", "parameters": output_parameters}]})
    assert r.status_code == 422 and r.json()["error_type"] == "validation", r.text
