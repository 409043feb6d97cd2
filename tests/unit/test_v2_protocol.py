"""The protocol seam without HTTP: app.protocol.v2's readiness, metadata, version and request rules called directly
on a real Service (the tiny model's sessions and batchers), as the gRPC servicer calls them; then the one request
skeleton (app.api.transport.handle) giving every prediction-like route the answering version's X-Model-* headers."""

from __future__ import annotations

import asyncio
import inspect
import shutil

import numpy as np
import pytest

from app.errors import InvalidInput, ModelNotFound
from app.protocol import v2
from app.service import Service
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.services import service_on

LABELS = ["negative", "neutral", "positive"]


def run_on(repository, scenario):
    """Run `scenario(service)` on a loaded service, closed afterwards."""
    async def main():
        service = service_on(repository)
        await service.load_all()
        try:
            return await scenario(service)
        finally:
            await service.close()

    return asyncio.run(main())


@pytest.mark.parametrize(("text", "version"), [(None, None), ("", None), ("3", 3), ("9" * 18, int("9" * 18))])
def test_version_of_reads_the_protocols_version_string(text, version):
    assert v2.version_of(text) == version


@pytest.mark.parametrize("text", ["0", "01", "-1", "x", "1.0", "²", "1" * 19])
def test_version_of_refuses_what_is_not_a_positive_integer(text):
    with pytest.raises(InvalidInput, match="positive integer"):
        v2.version_of(text)


def test_server_and_model_rules_as_data(tiny_model_repo):
    async def scenario(service):
        ready = v2.server_ready(service)
        meta = v2.model_metadata(service, "tiny", None), v2.model_metadata(service, "tiny", 1)
        states = v2.model_ready(service, "tiny", None), v2.model_ready(service, "tiny", 1)
        errors = []
        for call in (lambda: v2.model_ready(service, "tiny", 2), lambda: v2.model_ready(service, "nope", None),
                     lambda: v2.model_metadata(service, "tiny", 7), lambda: v2.model_metadata(service, "nope", None),
                     lambda: v2.require_model(service, "nope", None), lambda: v2.require_model(service, "tiny", 2)):
            with pytest.raises(ModelNotFound) as caught:
                call()
            errors.append(caught.value.message)
        v2.require_model(service, "tiny", 1)
        service.stop_admitting()
        return ready, meta, states, errors, v2.model_ready(service, "tiny", 1), v2.server_ready(service)

    ready, (meta, meta_1), (state, state_1), errors, draining, ready_draining = run_on(tiny_model_repo, scenario)
    assert v2.server_live() == {"live": True} and v2.server_metadata()["name"] == "bertserve"
    assert ready == (True, {"ready": True, "status": "ready", "models": {"tiny": {"1": "ready"}}})
    assert meta == meta_1 == {
        "name": "tiny", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                   {"name": "text_pair", "datatype": "BYTES", "shape": [-1]}],  # issue 22: pairs are listed
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
        "parameters": {"labels": LABELS, "max_length": 64},
    }
    assert state == {"name": "tiny", "version": None, "ready": True}
    assert state_1 == {"name": "tiny", "version": "1", "ready": True}
    assert "version 2 is not served" in errors[0] and "'nope' is not served" in errors[1]
    assert "version 7 is not served" in errors[2]
    assert draining == {"name": "tiny", "version": "1", "ready": False,
                        "reason": "model 'tiny' is not ready: the server is draining"}
    assert ready_draining[0] is False and ready_draining[1]["ready"] is False


def test_a_failed_version_is_not_ready_with_its_reason(tiny_model_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    (repo / "tiny" / "2" / "model.onnx").write_bytes(b"broken")
    (repo / "tiny" / "serving.json").write_text('{"version_policy": {"all": true}}')

    async def scenario(service):
        return v2.model_ready(service, "tiny", 2), v2.model_ready(service, "tiny", None), \
            v2.model_metadata(service, "tiny", None)["versions"]

    failed, either, versions = run_on(repo, scenario)
    assert failed == {"name": "tiny", "version": "2", "ready": False,
                      "reason": "model 'tiny' is not ready: version 2 failed to load"}
    assert either["ready"] is True and versions == ["1"]


def test_request_rules_on_decoded_inputs():
    req = v2.request({"text_pair": ["b", "d"], "text": ["a", "c"]},
                     {"timeout": 5000, "truncate": False, "function_to_apply": "sigmoid"},
                     [("scores", {"classification": 2, "binary_data": True})], "r1", "m")
    assert req == v2.Infer("r1", [("a", "b"), ("c", "d")], [v2.Wanted("scores", True, 2)], False, "sigmoid", 5000)
    default = v2.request({"text": ["a"]}, None, None, None, "m")
    assert [(w.name, w.binary) for w in default.outputs] == [("label", False), ("scores", False)]
    assert default.truncate and default.function is None and default.timeout_us is None

    for columns, params, outputs, message in [
        ({"text_pair": ["b"]}, None, None, "input 'text' is missing"),
        ({"text": ["a"], "tokens": ["b"]}, None, None, "unexpected input 'tokens'"),
        ({"text": ["a", "c"], "text_pair": ["b"]}, None, None, "pairs need as many of each"),
        ({"text": ["a"]}, {"timeout": True}, None, "parameters.timeout must be a positive number"),
        ({"text": ["a"]}, None, [("label", {}), ("label", {})], "output 'label' is asked for twice"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            v2.request(columns, params, outputs, None, "m")


def test_bytes_tensors_and_text_checks():
    texts = ["één", "two", "x" * 300]
    assert v2.decode_bytes(v2.encode_bytes(texts), "text") == texts
    assert v2.check_texts("text", "BYTES", [3, 1], texts) == texts
    with pytest.raises(InvalidInput, match="past the binary data"):
        v2.decode_bytes(v2.encode_bytes(["abc"])[:-1], "text")
    with pytest.raises(InvalidInput, match="has datatype INT32"):
        v2.check_texts("text", "INT32", [1], ["a"])
    with pytest.raises(InvalidInput, match="element 1 is an empty text"):
        v2.check_texts("text", "BYTES", [2], ["a", ""])


def as_data(inferred: v2.Inferred) -> dict:
    """An inference answer as JSON-able data, every output's values inline (what both codecs encode)."""
    outputs = [{"name": o.name, "datatype": o.datatype, "shape": o.shape,
                "data": o.values if isinstance(o.values, list) else o.values.ravel().tolist()}
               for o in inferred.outputs]
    payload = {"model_name": inferred.model.name, "model_version": str(inferred.model.version), "outputs": outputs}
    return payload if inferred.id is None else payload | {"id": inferred.id}


def test_infer_classifies_and_answers_data(tiny_model_repo):
    async def scenario(service):
        req = v2.request({"text": ["great", "awful"], "text_pair": ["yes", "no"]}, None,
                         [("label", {}), ("scores", {"classification": 1})], "r1", "tiny")
        inferred = await v2.infer(service, "tiny", 1, req, routing_key="k")
        _, scores = await service.classify([("great", "yes"), ("awful", "no")], model="tiny", timeout_s=10)
        plain = await v2.infer(service, "tiny", None, v2.request({"text": ["great"]}, None, None, None, "tiny"),
                               timeout_ms=5000)
        return inferred, scores, plain

    inferred, scores, plain = run_on(tiny_model_repo, scenario)
    data = as_data(inferred)
    assert (data["model_name"], data["model_version"], data["id"]) == ("tiny", "1", "r1")
    best = [LABELS[i] for i in scores.argmax(axis=1)]
    assert data["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [2], "data": best}
    assert data["outputs"][1]["shape"] == [2, 1] and [s.split(":")[2] for s in data["outputs"][1]["data"]] == best
    [_, fp32] = plain.outputs
    assert fp32.datatype == "FP32" and isinstance(fp32.values, np.ndarray) and fp32.values.shape == (1, 3)
    assert "id" not in as_data(plain) and as_data(plain)["outputs"][1]["shape"] == [1, 3]


def test_service_offers_methods_not_rebound_attributes(tiny_model_repo):
    service = service_on(tiny_model_repo)
    for name in ("classify", "explain", "explain_many", "timeout_s", "resolve", "metric_label", "readiness",
                 "list_models", "version_states", "admin_load", "admin_unload", "load_all", "poll", "drain"):
        assert inspect.isfunction(getattr(Service, name)), name  # "go to definition" lands on a method
        assert name not in vars(service), name
    assert not hasattr(service, "default_version")


@pytest.fixture(scope="module")
def call(tiny_model_repo):
    yield from in_process(Settings(model_repository=tiny_model_repo, poll_interval_s=0, batch_autotune=False,
                                   log_level="warning"))


@pytest.mark.parametrize(("path", "body"), [
    ("/predict", {"inputs": "great"}),
    ("/explain", {"inputs": "great pills", "max_features": 2}),
    ("/v1/models/tiny:explain", {"instances": ["great pills"], "parameters": {"max_features": 2}}),
    ("/v2/models/tiny/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]}),
])
def test_every_prediction_route_names_the_version_that_answered(call, path, body):
    r = call("POST", path, json=body)
    assert r.status_code == 200, r.text
    assert (r.headers["x-model-name"], r.headers["x-model-version"]) == ("tiny", "1")


def test_v2_binary_answers_keep_their_header_length_beside_the_model_headers(call):
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}],
            "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]}
    r = call("POST", "/v2/models/tiny/infer", json=body)
    split = int(r.headers["inference-header-content-length"])
    assert r.headers["content-type"] == "application/octet-stream" and r.headers["x-model-version"] == "1"
    assert np.frombuffer(r.content[split:], dtype="<f4").shape == (3,)
