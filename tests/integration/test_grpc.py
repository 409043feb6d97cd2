"""The Open Inference Protocol over gRPC against a real `bertserve serve` (two workers sharing the gRPC port), with
tritonclient.grpc from PyPI: health, metadata, inference on texts and pairs as the HTTP V2 route answers them,
versions, keys, errors as status codes, the client's deadline, metrics, SIGTERM; and the generated stubs as a
plain client sending `contents.bytes_contents` (in a subprocess: their `inference` package cannot share a process
with tritonclient.grpc's)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from app import __version__
from tests.support.metrics import metric
from tests.support.paths import ROOT
from tests.support.servers import SLOW_ENV, Server, self_signed_cert, start_busy_batch

pytestmark = pytest.mark.process

CLIENT, ADMIN = "grpc-client-key", "grpc-admin-key"
AUTH = {"authorization": f"Bearer {CLIENT}"}
TEXTS = ["this medicine worked wonders and i feel great", "terrible side effects", "headache"]
SECRET = "zebra-quartz-text-that-must-never-be-logged"


@pytest.fixture(scope="module")
def server(tiny_model_repo):
    # One engine in both workers: the tests compare a gRPC answer with an HTTP one, which another worker may give,
    # and auto measures each worker's engines apart (on a CPU with bf16 one worker may pick OpenVINO, the other
    # onnxruntime: scores 5e-5 apart; the engine choice's own stability is issue 34's)
    server = Server(tiny_model_repo, workers=2, env={"BERTSERVE_API_KEYS": CLIENT, "BERTSERVE_ADMIN_API_KEYS": ADMIN,
                                                     "BERTSERVE_PROVIDER": "cpu"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    with tgrpc.InferenceServerClient(server.grpc_address) as c:
        yield c


def inputs(texts: list[str], pairs: list[str] | None = None) -> list[tgrpc.InferInput]:
    tensors = []
    for name, values in (("text", texts), ("text_pair", pairs)):
        if values is not None:
            tensor = tgrpc.InferInput(name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=object))
            tensors.append(tensor)
    return tensors


def http_v2(server, texts: list[str], pairs: list[str] | None = None, path="/v2/models/tiny/infer",
            parameters: dict | None = None) -> dict:
    body = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    if parameters:
        body["parameters"] = parameters
    if pairs is not None:
        body["inputs"].append({"name": "text_pair", "shape": [len(pairs)], "datatype": "BYTES", "data": pairs})
    r = httpx.post(server.url + path, json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def status_of(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def test_both_workers_serve_the_grpc_port(server):
    started = r'"pid":(\d+),"message":"gRPC \(inference.GRPCInferenceService\) on 127.0.0.1'
    pids = set(re.findall(started, server.output()))
    assert len(pids) == 2, server.output()[-3000:]
    for _ in range(6):  # fresh connections, spread by the kernel among the workers: every one answered
        with tgrpc.InferenceServerClient(server.grpc_address) as fresh:
            assert fresh.infer("tiny", inputs(TEXTS[:1]), headers=AUTH).as_numpy("label").shape == (1,)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()  # open, as the HTTP probes
    assert client.is_model_ready("tiny", headers=AUTH) and client.is_model_ready("tiny", "1", headers=AUTH)
    assert client.get_server_metadata(headers=AUTH, as_json=True) == {
        "name": "bertserve", "version": __version__, "extensions": ["binary_tensor_data", "classification"],
    }
    meta = client.get_model_metadata("tiny", headers=AUTH, as_json=True)
    assert meta["name"] == "tiny" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("text", "BYTES"), ("text_pair", "BYTES")]
    assert meta["outputs"][1] == {"name": "scores", "datatype": "FP32", "shape": ["-1", "3"]}
    assert client.get_model_metadata("tiny", "1", headers=AUTH, as_json=True)["versions"] == ["1"]


@pytest.mark.parametrize("count", [1, 3])
def test_infer_answers_as_the_http_v2_route(client, server, count):
    texts = TEXTS[:count]
    result = client.infer("tiny", inputs(texts), headers=AUTH, request_id="r-1")
    http = http_v2(server, texts)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("tiny", "1", "r-1")
    assert [o.name for o in response.outputs] == ["label", "scores"]
    assert [o.datatype for o in response.outputs] == [http["label"]["datatype"], http["scores"]["datatype"]]
    assert [s.decode() for s in result.as_numpy("label")] == http["label"]["data"]
    np.testing.assert_allclose(result.as_numpy("scores"), np.array(http["scores"]["data"]).reshape(count, 3),
                               atol=1e-6)
    assert len(response.raw_output_contents) == 2  # tritonclient sends raw and reads only raw outputs


def test_pairs_pinned_version_and_classification(client, server):
    pairs = ["it was fine", "no side effects at all", "migraine"]
    result = client.infer("tiny", inputs(TEXTS, pairs), model_version="1", headers=AUTH)
    http = http_v2(server, TEXTS, pairs, path="/v2/models/tiny/versions/1/infer")
    np.testing.assert_allclose(result.as_numpy("scores"), np.array(http["scores"]["data"]).reshape(3, 3), atol=1e-6)
    assert not np.allclose(result.as_numpy("scores"), client.infer("tiny", inputs(TEXTS), headers=AUTH)
                           .as_numpy("scores"))  # the second text counts
    top = client.infer("tiny", inputs(TEXTS[:1]), outputs=[tgrpc.InferRequestedOutput("scores", class_count=2)],
                       headers=AUTH).as_numpy("scores")
    assert top.shape == (1, 2) and all(re.fullmatch(rb"[0-9.]+:[0-2]:\w+", v) for v in top[0])


def test_long_texts_read_whole_in_windows_or_cut_and_counted(client, server):
    long = " ".join(TEXTS * 30)  # several windows of the tiny model's 64 tokens
    texts = [TEXTS[0], long]
    cut = client.infer("tiny", inputs(texts), headers=AUTH).get_response()
    assert cut.parameters["truncated"].int64_param == 1
    whole = client.infer("tiny", inputs(texts), headers=AUTH, parameters={
        "truncate": False, "stride": 8, "window_aggregation": "max"})
    assert whole.get_response().parameters["truncated"].int64_param == 0
    http = http_v2(server, texts, parameters={"truncate": False, "stride": 8, "window_aggregation": "max"})
    np.testing.assert_allclose(whole.as_numpy("scores"), np.array(http["scores"]["data"]).reshape(2, 3), atol=1e-6)


def test_errors_are_status_codes_without_the_text(client, server):
    assert status_of(lambda: client.infer("nope", inputs(TEXTS), headers=AUTH))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.infer("tiny", inputs(TEXTS), model_version="7", headers=AUTH))[0] == \
        "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.get_model_metadata("nope", headers=AUTH))[0] == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.is_model_ready("nope", headers=AUTH))[0] == "StatusCode.NOT_FOUND"
    code, message = status_of(lambda: client.infer("tiny", inputs([SECRET], [SECRET, "x"]), headers=AUTH))
    assert code == "StatusCode.INVALID_ARGUMENT" and "pairs need as many" in message and SECRET not in message
    code, message = status_of(lambda: client.infer("tiny", inputs([SECRET, ""]), headers=AUTH))
    assert code == "StatusCode.INVALID_ARGUMENT" and "empty text" in message and SECRET not in message
    assert SECRET not in server.output()


def test_keys(client, server):
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": CLIENT}):
        assert status_of(lambda h=headers: client.infer("tiny", inputs(TEXTS), headers=h))[0] == \
            "StatusCode.UNAUTHENTICATED"
        assert status_of(lambda h=headers: client.get_server_metadata(headers=h))[0] == "StatusCode.UNAUTHENTICATED"
        assert status_of(lambda h=headers: client.is_model_ready("tiny", headers=h))[0] == \
            "StatusCode.UNAUTHENTICATED"
    admin = {"authorization": f"Bearer {ADMIN}"}  # an admin key opens the client calls too
    assert client.infer("tiny", inputs(TEXTS), headers=admin).as_numpy("label").shape == (3,)
    assert CLIENT not in server.output() and ADMIN not in server.output()


def test_requests_are_counted_with_the_grpc_protocol(client, server):
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    before = metric(text, "bertserve_requests_total", protocol="grpc", status="200", model="tiny")
    client.infer("tiny", inputs(TEXTS), headers=AUTH)
    status_of(lambda: client.infer("nope", inputs(TEXTS), headers=AUTH))
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert metric(text, "bertserve_requests_total", protocol="grpc", status="200", model="tiny") == before + 1
    assert metric(text, "bertserve_requests_total", protocol="grpc", route="ModelInfer") >= 1
    assert metric(text, "bertserve_requests_total", protocol="grpc", status="404") >= 1
    assert metric(text, "bertserve_requests_total", protocol="http", status="200") >= 1  # the HTTP comparisons


def raw_infer(server, body: bytes, key: str | None) -> grpc.RpcError:
    """ModelInfer with `body` as it is on the wire (no protobuf in this process: tritonclient.grpc's is here)."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                                   response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(body, metadata=[("authorization", f"Bearer {key}")] if key else None, timeout=30)
    return info.value


def test_a_body_that_is_not_protobuf_is_invalid_argument_after_the_key_check(server):
    garbage = b"\xff\xff\xff\xff not protobuf " + SECRET.encode()
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    before = {status: metric(text, "bertserve_requests_total", protocol="grpc", route="ModelInfer", status=status)
              for status in ("401", "422")}
    error = raw_infer(server, garbage, CLIENT)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a ModelInferRequest" in error.details()
    assert SECRET not in error.details()
    for key in (None, "wrong"):  # the key is checked before the body is read
        assert raw_infer(server, garbage, key).code() == grpc.StatusCode.UNAUTHENTICATED
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    after = {status: metric(text, "bertserve_requests_total", protocol="grpc", route="ModelInfer", status=status)
             for status in ("401", "422")}
    assert after == {"401": before["401"] + 2, "422": before["422"] + 1}
    assert SECRET not in server.output()


STUB_CLIENT = """
import json, sys
import grpc
from app.api.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as stubs

address, key, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with grpc.insecure_channel(address) as channel:
    stub = stubs.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="tiny", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[len(texts)],
        contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]))])
    response = stub.ModelInfer(request, metadata=[("authorization", "Bearer " + key)], timeout=30)
    print(json.dumps({"raw": len(response.raw_output_contents), "outputs": [
        {"name": o.name, "datatype": o.datatype, "shape": list(o.shape),
         "data": [v.decode() for v in o.contents.bytes_contents] or list(o.contents.fp32_contents)}
        for o in response.outputs]}))
"""


def test_generated_stubs_with_bytes_contents(server):
    out = subprocess.run([sys.executable, "-c", STUB_CLIENT, server.grpc_address, CLIENT, json.dumps(TEXTS)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    http = http_v2(server, TEXTS)
    assert answer["raw"] == 0  # asked in contents: answered in contents
    label, scores = answer["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [3], "data": http["label"]["data"]}
    assert scores["shape"] == [3, 3] and scores["datatype"] == "FP32"
    np.testing.assert_allclose(scores["data"], http["scores"]["data"], atol=1e-6)


def test_tls_with_the_https_certificate(tiny_model_repo, start_server, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    env = {"BERTSERVE_SSL_CERTFILE": str(cert), "BERTSERVE_SSL_KEYFILE": str(key)}
    server = start_server(tiny_model_repo, env=env, scheme="https", verify=str(cert))
    with tgrpc.InferenceServerClient(server.grpc_address, ssl=True, root_certificates=str(cert)) as client:
        assert client.infer("tiny", inputs(TEXTS)).as_numpy("label").shape == (3,)
    with tgrpc.InferenceServerClient(server.grpc_address) as plain:  # no plaintext beside TLS
        assert status_of(lambda: plain.is_server_live())[0] == "StatusCode.UNAVAILABLE"


def test_the_clients_deadline_is_the_requests(slow_model_repo, start_server):  # noqa: F811
    server = start_server(slow_model_repo, env=SLOW_ENV)
    busy = start_busy_batch(server)  # the engine is busy: a short request waits behind it
    with tgrpc.InferenceServerClient(server.grpc_address) as client:
        # The batcher takes it at its next turn, after the batch running now (~0.15 s on an AMD EPYC Zen 4, more on
        # slower CPUs): a deadline well under one batch
        code, _ = status_of(lambda: client.infer("slow", inputs(["a short review"]), client_timeout=0.05))
        busy.join()
        assert code == "StatusCode.DEADLINE_EXCEEDED"
        assert busy.result["response"].status_code == 200
        assert client.infer("slow", inputs(["next one"])).as_numpy("label").shape == (1,)
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "bertserve_batch_size_sum", model="slow") == 32 + 1  # the expired one never ran
    assert metric(text, "bertserve_requests_total", model="slow", protocol="grpc", status="504") + \
        metric(text, "bertserve_requests_total", model="slow", protocol="grpc", status="499") == 1


def test_sigterm_with_grpc_clients_posting_loses_nothing(tiny_model_repo, start_server):
    """Clients post without pause until the server has exited: each call is answered, or refused UNAVAILABLE
    (draining, or no connection any more); none fails otherwise."""
    server = start_server(tiny_model_repo, env={"BERTSERVE_DRAIN_TIMEOUT_S": "10"})
    outcomes: list[str] = []
    lock = threading.Lock()
    exited = threading.Event()
    clients = 6
    warmed = threading.Barrier(clients + 1)

    def client_loop():
        with tgrpc.InferenceServerClient(server.grpc_address) as client:
            for _ in range(3):
                client.infer("tiny", inputs(TEXTS))
            warmed.wait(60)
            while not exited.is_set():
                try:
                    client.infer("tiny", inputs(TEXTS), client_timeout=30)
                    outcome = "ok"
                except InferenceServerException as exc:  # refused: by the draining service, or at connect
                    refused = exc.status() == "StatusCode.UNAVAILABLE" and re.search(
                        "shutting down|failed to connect|Connection refused", exc.message())
                    outcome = "refused" if refused else f"lost: {exc.status()}: {exc.message()}"
                with lock:
                    outcomes.append(outcome)
                if outcome == "refused":
                    exited.wait(0.01)  # pace the retries until the process is gone

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    warmed.wait(60)
    deadline = time.monotonic() + 60
    while outcomes.count("ok") < 10 * clients:  # steady load
        assert time.monotonic() < deadline
        time.sleep(0.005)
    answered_before = outcomes.count("ok")
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(30)
    exited.set()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    lost = [o for o in outcomes if o.startswith("lost")]
    assert code == 0, server.output()[-3000:]
    assert not lost, lost[:5]
    assert set(outcomes) <= {"ok", "refused"} and outcomes.count("ok") >= answered_before
    print(f"gRPC SIGTERM: {outcomes.count('ok')} answered, {outcomes.count('refused')} refused, lost {len(lost)}")
