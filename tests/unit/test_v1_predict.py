"""KServe V1 `:predict` in huggingfaceserver's shape, and the `id`/`model_name`/`model_version` the protocols'
reference clients put in a V2 body, on the tiny model in-process (httpx ASGITransport): class ids by default,
probabilities with serving.json's `v1_return_probabilities`, and each refusal as a 422 saying why."""

from __future__ import annotations

import asyncio
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from app.api.v1.codec import check_head, predictions
from app.api.v2.codec import parse_infer
from app.errors import InvalidInput
from app.service import Service
from app.settings import Settings
from tests.support.apps import in_process

TEXTS = ["This medicine worked wonders, no side effects at all.", "Terrible headache all week.", "fine"]


@pytest.fixture(scope="module")
def repo(tiny_model_repo, tmp_path_factory):
    """The tiny model twice: `tiny` (no serving.json: class ids) and `tinyprob` (v1_return_probabilities)."""
    root = tmp_path_factory.mktemp("v1repo")
    for name in ("tiny", "tinyprob"):
        shutil.copytree(tiny_model_repo / "tiny" / "1", root / name / "1")
    (root / "tinyprob" / "serving.json").write_text(json.dumps({"v1_return_probabilities": True}))
    return root


@pytest.fixture(scope="module")
def call(repo):
    yield from in_process(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False,
                                   max_client_batch_size=4, log_level="warning"))


def scores(call, model: str, texts: list[str]) -> np.ndarray:
    """The softmax scores [n, labels] in label order, from V2 infer (the tiny head is softmax)."""
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    r = call("POST", f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}["scores"]
    return np.array(out["data"]).reshape(out["shape"])


def test_v1_predict_answers_class_ids_by_default(call):
    r = call("POST", "/v1/models/tiny:predict", json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-name"] == "tiny" and r.headers["x-model-version"] == "1"
    body = r.json()
    assert set(body) == {"predictions"}
    assert body["predictions"] == scores(call, "tiny", TEXTS).argmax(axis=1).tolist()
    assert all(type(p) is int for p in body["predictions"])


def test_v1_predict_answers_probabilities_where_serving_json_says_so(call):
    r = call("POST", "/v1/models/tinyprob:predict", json={"instances": TEXTS})
    assert r.status_code == 200, r.text
    expected = scores(call, "tinyprob", TEXTS)
    answered = r.json()["predictions"]
    assert [list(p) for p in answered] == [["0", "1", "2"]] * len(TEXTS)  # class ids as JSON keys, in order
    for row, want in zip(answered, expected):
        assert list(row.values()) == [float(f"{p:.4f}") for p in want]  # rounded to 4 decimals, as huggingfaceserver


def test_v1_predict_takes_a_matching_model_name(call):
    r = call("POST", "/v1/models/tiny:predict", json={"instances": ["fine"], "model_name": "tiny"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


@pytest.mark.parametrize("payload, message", [
    ({}, "instances"),                                                    # missing
    ({"instances": []}, "instances"),                                     # empty
    ({"instances": "fine"}, "instances"),                                 # not a list
    ({"instances": [1, 2]}, "instances[0]"),                              # not texts
    ({"instances": [""]}, "instances[0]"),                                # an empty text
    ({"instances": [None]}, "instances[0]"),
    ({"instances": [["a", "b"]]}, "V1 :predict takes single texts"),      # a pair: huggingfaceserver takes none
    ({"instances": [{"text": "a", "text_pair": "b"}]}, "V1 :predict takes single texts"),
    ({"instances": ["fine"], "model_name": "other"}, ("model_name 'other' in the body differs from the model of "
                                                      "the path ('tiny')")),
    ({"instances": ["fine"], "parameters": {"return_probabilities": True}}, "not part of the API"),  # not ignored
    ({"instances": ["a", "b", "c", "d", "e"]}, "limit is 4"),             # BERTSERVE_MAX_CLIENT_BATCH_SIZE
])
def test_bad_v1_predict_requests_are_422_saying_why(call, payload, message):
    r = call("POST", "/v1/models/tiny:predict", json=payload)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_v1_predict_errors_as_the_other_routes(call):
    assert call("POST", "/v1/models/nope:predict", json={"instances": ["a"]}).status_code == 404
    r = call("POST", "/v1/models/tiny:predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    r = call("POST", "/v1/models/tiny:predict", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415, r.text


def test_openapi_documents_v1_predict(call):
    paths = call("GET", "/openapi.json").json()["paths"]
    schema = paths["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"instances", "model_name"} <= set(schema["properties"])


def test_a_head_of_one_output_is_refused_not_answered_class_0():
    for kind, labels in (("one-logit", ["relevance"]), ("regression", ["rating"])):
        served = SimpleNamespace(name="m", version=1, config=SimpleNamespace(labels=labels),
                                 head=SimpleNamespace(kind=kind))
        with pytest.raises(InvalidInput, match=f"has a {kind} head with one output"):
            check_head(served)  # type: ignore[arg-type]
    check_head(SimpleNamespace(name="m", version=1, config=SimpleNamespace(labels=["a", "b"])))  # type: ignore


def test_predictions_in_huggingfaceservers_shape():
    softmax = np.array([[0.1, 0.7, 0.2], [0.33336, 0.33333, 0.33331]], dtype=np.float32)
    assert predictions(softmax, False) == [1, 0]
    assert predictions(softmax, True) == [{"0": 0.1, "1": 0.7, "2": 0.2}, {"0": 0.3334, "1": 0.3333, "2": 0.3333}]


def test_the_per_model_choice_follows_serving_json(tiny_model_repo, tmp_path):
    """The registry keeps the last valid serving.json it read (as it keeps the traffic table in force)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repo, repo)
    serving = repo / "tiny" / "serving.json"

    async def run() -> list[bool]:
        service = Service(Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False))
        await service.load_all()
        seen = [service.serving_of("tiny").v1_return_probabilities]  # no serving.json
        try:
            for text in ('{"v1_return_probabilities": true}',
                         '{"v1_return_probabilities": "maybe", "padding": 1}',  # refused: the last valid stays
                         '{"v1_return_probabilities": false}', None):
                if text is None:
                    serving.unlink()
                else:
                    serving.write_text(text)
                await service.registry.sync()
                seen.append(service.serving_of("tiny").v1_return_probabilities)
        finally:
            await service.close()
        return seen

    assert asyncio.run(run()) == [False, True, True, False, False]


# ---- V2: what the reference clients send beside the inputs ----

def v2_body(**extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}], **extra}


def test_v2_infer_takes_id_and_a_matching_model_name_and_echoes_the_id(call):
    r = call("POST", "/v2/models/tiny/infer", json=v2_body(id="req-7", model_name="tiny"))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "req-7" and r.json()["model_name"] == "tiny"
    assert call("POST", "/v2/models/tiny/infer", json=v2_body(model_name=None, model_version="")).status_code == 200


@pytest.mark.parametrize("path, extra, message", [
    ("/v2/models/tiny/infer", {"model_name": "tinyprob"},
     "model_name 'tinyprob' in the body differs from the model of the path ('tiny')"),
    ("/v2/models/tiny/infer", {"model_version": "1"}, "model_version '1' in the body"),
    ("/v2/models/tiny/versions/1/infer", {"model_name": "tinyprob"}, "model_name 'tinyprob' in the body differs"),
    ("/v2/models/tiny/infer", {"model_version": "v1"}, "the model version must be a positive integer"),
    ("/v2/models/tiny/infer", {"model_name": 3}, "model_name"),
])
def test_v2_infer_refuses_names_that_would_change_the_request(call, path, extra, message):
    r = call("POST", path, json=v2_body(**extra))
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_v2_codec_checks_model_version_against_the_paths():
    body = json.dumps(v2_body(model_version="1")).encode()
    assert parse_infer(body, None, "m", 1).texts == ["fine"]  # the path's own version: accepted
    for version, message in ((2, "differs from the version of the path (2)"),
                             (None, "send it to /v2/models/m/versions/1/infer")):
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_infer(body, None, "m", version)
    assert parse_infer(json.dumps(v2_body(model_name="m", id="x")).encode(), None, "m").id == "x"
