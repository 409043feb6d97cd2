"""KServe's own Python SDK (`kserve` from PyPI, the dev extra) against a real `bertserve serve` with two workers:
`InferenceRESTClient` over the V2 protocol (JSON and binary tensors: its body carries `id` and `model_name` beside
the inputs) and over V1 (`:predict`, answered in huggingfaceserver's shape: class ids, or probabilities where the
model's serving.json sets `v1_return_probabilities`), and `InferenceGRPCClient`, each compared with /predict's
scores, with a client key as every prediction route takes.

The SDK runs in a subprocess (this venv's Python): its generated `inference` protobuf package cannot share a process
with tritonclient.grpc's or bertserve's own stubs (the same symbols in protobuf's default pool), which other test
modules import."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.support.servers import Server

pytestmark = [pytest.mark.process]

KEY = "kserve-sdk-client-key"
AUTH = {"authorization": f"Bearer {KEY}"}
TEXTS = ["This medicine worked wonders, no side effects at all.", "Terrible headache all week.", "fine"]

# What the SDK does, as a new user would write it; prints one JSON object of plain values.
SDK_SCRIPT = r'''
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

url, grpc_address, key, texts = json.loads(sys.argv[1])
headers = {"Authorization": f"Bearer {key}"}


def request(binary: bool, **kwargs) -> InferRequest:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return InferRequest(model_name="tiny", infer_inputs=[tensor], **kwargs)


def plain(response) -> dict:
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    return {"id": response.id, "model_name": response.model_name,
            "label": [v.decode() if isinstance(v, bytes) else v for v in outputs["label"].tolist()],
            "scores": outputs["scores"].tolist()}


async def main() -> dict:
    found = {}
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    found["v2_json"] = plain(await v2.infer(url, request(False, request_id="sdk-json"), model_name="tiny",
                                            headers=headers))
    found["v2_binary"] = plain(await v2.infer(url, request(True, request_id="sdk-binary"), model_name="tiny",
                                              headers=dict(headers)))
    await v2.close()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    found["v1_ids"] = await v1.infer(url, {"instances": texts}, model_name="tiny", headers=headers)
    found["v1_probabilities"] = await v1.infer(url, {"instances": texts}, model_name="tinyprob", headers=headers)
    await v1.close()
    grpc_client = InferenceGRPCClient(grpc_address, timeout=30)
    found["grpc"] = plain(await grpc_client.infer(request(False, request_id="sdk-grpc"),
                                                  headers=(("authorization", f"Bearer {key}"),)))
    await grpc_client.close()
    return found

print(json.dumps(asyncio.run(main())))
'''


@pytest.fixture(scope="module")
def server(tiny_model_repo, tmp_path_factory):
    """The tiny model as `tiny` (class ids over V1) and `tinyprob` (v1_return_probabilities), two workers; one
    engine in both, so that any worker's answer equals /predict's (see test_grpc.py's server)."""
    repo = tmp_path_factory.mktemp("kserve-sdk")
    for name in ("tiny", "tinyprob"):
        shutil.copytree(tiny_model_repo / "tiny" / "1", repo / name / "1")
    (repo / "tinyprob" / "serving.json").write_text(json.dumps({"v1_return_probabilities": True}))
    server = Server(repo, workers=2, env={"BERTSERVE_API_KEYS": KEY, "BERTSERVE_PROVIDER": "cpu"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(server) -> dict:
    """Every SDK call's answer (one subprocess for all of them: importing the SDK takes a few seconds)."""
    # Looked for, never imported here: its stubs would clash with other modules' in this process.
    assert importlib.util.find_spec("kserve"), "the kserve SDK is missing (the dev extra: pip install -e '.[dev]')"
    args = json.dumps([server.url, server.grpc_address, KEY, TEXTS])
    done = subprocess.run([sys.executable, "-c", SDK_SCRIPT, args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{done.stderr[-4000:]}\nserver log:\n{server.output()[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def predicted(server) -> tuple[list[str], np.ndarray]:
    """/predict's top label per text and its scores [n, labels] in the model's label order."""
    labels = httpx.get(server.url + "/v2/models/tiny", headers=AUTH, timeout=30).json()["parameters"]["labels"]
    r = httpx.post(server.url + "/predict", json={"inputs": TEXTS, "model": "tiny"}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    rows = [{p["label"]: p["score"] for p in ranked} for ranked in r.json()]
    return [ranked[0]["label"] for ranked in r.json()], np.array([[row[label] for label in labels] for row in rows])


@pytest.mark.parametrize("way, request_id", [("v2_json", "sdk-json"), ("v2_binary", "sdk-binary"),
                                             ("grpc", "sdk-grpc")])
def test_the_sdks_v2_clients_get_predicts_scores(server, sdk, way, request_id):
    labels, scores = predicted(server)
    answer = sdk[way]
    assert answer["id"] == request_id and answer["model_name"] == "tiny"  # the request's id, echoed
    assert answer["label"] == labels
    assert np.allclose(answer["scores"], scores, atol=1e-6)


def test_the_sdks_v1_client_gets_class_ids(server, sdk):
    _, scores = predicted(server)
    assert sdk["v1_ids"] == {"predictions": scores.argmax(axis=1).tolist()}


def test_the_sdks_v1_client_gets_probabilities_where_the_model_says_so(server, sdk):
    _, scores = predicted(server)
    answered = sdk["v1_probabilities"]["predictions"]
    assert [list(row) for row in answered] == [["0", "1", "2"]] * len(TEXTS)  # class ids, as JSON keys
    assert all(value == round(value, 4) for row in answered for value in row.values())  # 4 decimals
    assert np.allclose([list(row.values()) for row in answered], scores, atol=5e-5 + 1e-6)


def test_v1_predict_needs_a_key_as_v2_infer(server):
    for path, body in (("/v1/models/tiny:predict", {"instances": ["fine"]}),
                       ("/v2/models/tiny/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                              "data": ["fine"]}]})):
        assert httpx.post(server.url + path, json=body, timeout=30).status_code == 401
        assert httpx.post(server.url + path, json=body, headers=AUTH, timeout=30).status_code == 200
