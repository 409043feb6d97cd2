"""Least privilege against real servers on loopback: which key opens which route group (client keys, admin keys,
none), admin routes absent unless asked for, keys given as SHA-256 digests, and nothing of a client's text in any
output a failure can produce."""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid

import httpx
import pytest

from tests.support.metrics import metric
from tests.support.receiver import Receiver
from tests.support.servers import SLOW_ENV, call, post, start_busy_batch
from tests.support.tiny import REVIEW

pytestmark = pytest.mark.process

CLIENT, ADMIN = "client-key-1", "admin-key-1"
V2_INFER = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [REVIEW]}]}
# (route group, method, path, body): one representative request per group of the API.
ROUTES = [
    ("predict", "POST", "/predict", {"inputs": REVIEW}),
    ("models", "GET", "/models", None),
    ("admin", "POST", "/admin/models/tiny/load", None),
    ("v2 infer", "POST", "/v2/models/tiny/infer", V2_INFER),
    ("v2 metadata", "GET", "/v2/models/tiny", None),
    ("metrics", "GET", "/metrics", None),
    ("health", "GET", "/health/ready", None),
    ("explain", "POST", "/explain", {"inputs": REVIEW}),
]
CALLERS = {"no key": None, "wrong key": "nope", "client key": CLIENT, "admin key": ADMIN}


def matrix(server) -> dict[tuple[str, str], int]:
    statuses = {}
    for caller, key in CALLERS.items():
        for group, method, path, body in ROUTES:
            r = call(server, method, path, body, key)
            statuses[caller, group] = r.status_code
            if r.status_code in (401, 403):  # the one JSON error shape
                assert r.json()["error_type"] == {401: "unauthorized", 403: "forbidden"}[r.status_code]
            if r.status_code == 401:
                assert r.headers["www-authenticate"] == "Bearer"
    return statuses


def table(statuses: dict[tuple[str, str], int]) -> str:
    groups = [g for g, *_ in ROUTES]
    lines = ["| caller | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(statuses[c, g]) for g in groups) + " |" for c in CALLERS]
    return "\n".join(lines)


@pytest.mark.parametrize("protect_metrics", [False, True])
def test_role_matrix(tiny_model_repo, start_server, protect_metrics):
    """Client keys open prediction, model and V2 routes; only admin keys open /admin (a client key there: 403);
    no key or a wrong one: 401; health always open; metrics open unless BERTSERVE_PROTECT_METRICS. The admin
    key is configured as its SHA-256 digest."""
    env = {
        "BERTSERVE_API_KEYS": CLIENT,
        "BERTSERVE_ADMIN_API_KEYS": "sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest(),
        "BERTSERVE_PROTECT_METRICS": str(protect_metrics).lower(),
    }
    server = start_server(tiny_model_repo, env=env)
    statuses = matrix(server)
    print(f"\nBERTSERVE_PROTECT_METRICS={str(protect_metrics).lower()}\n{table(statuses)}")
    metrics = 401 if protect_metrics else 200
    expected = {
        "no key": [401, 401, 401, 401, 401, metrics, 200, 401],
        "wrong key": [401, 401, 401, 401, 401, metrics, 200, 401],
        "client key": [200, 200, 403, 200, 200, 200, 200, 200],
        "admin key": [200, 200, 200, 200, 200, 200, 200, 200],
    }
    assert statuses == {(c, g): expected[c][i] for c in CALLERS for i, (g, *_) in enumerate(ROUTES)}
    server.stop()
    assert CLIENT not in server.output() and ADMIN not in server.output()  # keys are never logged


def test_admin_routes_are_not_served_without_an_admin_key(tiny_model_repo, start_server):
    """Default (no keys at all) and client keys only: /admin does not exist, for any caller, nor in the OpenAPI
    document; the model keeps serving."""
    for env in ({}, {"BERTSERVE_API_KEYS": CLIENT}):
        server = start_server(tiny_model_repo, env=env)
        for key in (None, CLIENT, "anything"):
            for action in ("unload", "load"):
                r = call(server, "POST", f"/admin/models/tiny/{action}", None, key)
                assert r.status_code == 404 and r.json()["error_type"] == "not_found"
        assert call(server, "POST", "/predict", {"inputs": REVIEW}, CLIENT).status_code == 200
        spec = httpx.get(server.url + "/openapi.json").json()
        assert not [p for p in spec["paths"] if p.startswith("/admin")]
        assert set(spec["components"]["securitySchemes"]) == {"ClientKey", "AdminKey"}
        server.stop()
        assert "/admin: not served" in server.output()


def test_admin_without_key_is_an_explicit_setting_and_warned_about(tiny_model_repo, start_server):
    server = start_server(tiny_model_repo, env={"BERTSERVE_ADMIN_WITHOUT_KEY": "true"})
    assert call(server, "POST", "/admin/models/nope/load", None, None).status_code == 404  # routed: unknown model
    assert call(server, "POST", "/admin/models/tiny/load", None, None).status_code == 200
    server.stop()
    warnings = [line for line in server.output().splitlines() if '"level":"warning"' in line]
    assert any("BERTSERVE_ADMIN_WITHOUT_KEY" in line for line in warnings), server.output()


def test_hashed_keys_in_files(tiny_model_repo, start_server, tmp_path):
    """Keys given only as digests in key files (as a Kubernetes Secret mounts them): the plain key opens its
    routes; the digest itself, presented as a key, does not; a plain admin key file works beside it."""
    client_file, admin_file = tmp_path / "client", tmp_path / "admin"
    client_digest = hashlib.sha256(b"rotated-client").hexdigest()
    client_file.write_text(f"sha256:{client_digest}\n")
    admin_file.write_text("plain-admin\n")
    env = {"BERTSERVE_API_KEYS_FILE": str(client_file), "BERTSERVE_ADMIN_API_KEYS_FILE": str(admin_file)}
    server = start_server(tiny_model_repo, env=env)
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, "rotated-client").status_code == 200
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, f"sha256:{client_digest}").status_code == 401
    assert call(server, "POST", "/predict", {"inputs": REVIEW}, client_digest).status_code == 401
    assert call(server, "POST", "/admin/models/tiny/load", None, "rotated-client").status_code == 403
    assert call(server, "POST", "/admin/models/tiny/load", None, "plain-admin").status_code == 200


# ---- nothing of a client's text leaks ----

MARKER = "zqx" + uuid.uuid4().hex[:12] + "leak"  # unique: found only where a client's text went
DEBUG_ENV = {"BERTSERVE_LOG_LEVEL": "debug", "BERTSERVE_ACCESS_LOG": "true"}


def seen(response: httpx.Response) -> str:
    """Everything a client gets back: status line, headers, body."""
    return f"{response.status_code} {response.headers!r} {response.text}"


def test_no_client_text_in_logs_errors_metrics_or_headers(tiny_model_repo, slow_model_repo, start_server, tmp_path):
    """A marker sent through every path that can fail, against real servers logging at debug with the access
    log on: validation, too long with truncate false, overload, deadline, disconnect. It is in no log line, no
    error body, no header, no metric; and, the prediction log on with its default text mode (none), in no file of
    its folder (records, join index, key) and in nothing its CloudEvents receiver got on the wire."""
    text = f"great drug {MARKER} no side effects"
    outputs: list[str] = []
    receiver = Receiver()
    folder = tmp_path / "prediction-log"
    server = start_server(tiny_model_repo, env=DEBUG_ENV | {"BERTSERVE_PREDICTION_LOG_DIR": str(folder),
                                                            "BERTSERVE_PREDICTION_LOG_URL": receiver.url})
    answered = httpx.post(server.url + "/predict", json={"inputs": [text, text + " again"]})
    assert answered.status_code == 200  # logged: its texts are what must stay out of the log
    feedback = {"id": answered.headers["x-request-id"], "index": 1, "label": "positive"}
    assert httpx.post(server.url + "/feedback", json=feedback).status_code == 200
    receiver.wait_for(2)  # the prediction and the feedback, on the wire
    bad_bodies = [
        b'{"inputs": "' + text.encode(),  # malformed JSON
        json.dumps({"inputs": text, "truncate": text}).encode(),  # wrong types
        json.dumps({"inputs": [text, 3]}).encode(),
        json.dumps({"inputs": text, MARKER: 1}).encode(),  # an unknown field named by the client
        json.dumps({"inputs": text, "parameters": {"function_to_apply": text, "top_k": text}}).encode(),
        json.dumps({"inputs": text, "model": text}).encode().replace(b'"model"', b'"version"'),
        json.dumps({"inputs": [text] * 40}).encode(),  # too many inputs
        text.encode(),  # not JSON at all
    ]
    for body in bad_bodies:
        r = httpx.post(server.url + "/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        outputs.append(seen(r))
    long = {"inputs": " ".join([text] * 40), "truncate": False, "stride": 10_000}  # windows overlapping past a window
    r = httpx.post(server.url + "/predict", json=long)
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    outputs.append(seen(r))
    r = httpx.post(server.url + "/predict", content=text.encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 415
    outputs.append(seen(r))
    v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}], MARKER: 1}
    r = httpx.post(server.url + "/v2/models/tiny/infer", json=v2)
    assert r.status_code == 422
    outputs.append(seen(r))
    for explain in ({"inputs": text, "target": text}, {"inputs": text, "max_features": text},
                    {"inputs": " ".join([text] * 40), "truncate": False}):
        r = httpx.post(server.url + "/explain", json=explain)
        assert r.status_code == 422, r.text
        outputs.append(seen(r))
    assert httpx.post(server.url + "/explain", json={"inputs": text}).status_code == 200  # logged at debug too
    outputs.append(server.metrics_text())
    server.stop()
    outputs.append(server.output())
    receiver.close()
    outputs += [f"{headers!r} {body!r}" for headers, body in receiver.received]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(".jsonl" in p.name for p in files) and any(p.name.startswith("index.sqlite3") for p in files)
    outputs += [p.read_bytes().decode("latin-1") for p in files]

    env = SLOW_ENV | DEBUG_ENV | {"BERTSERVE_MAX_QUEUE_SIZE": "40"}
    slow = start_server(slow_model_repo, env=env)
    busy = start_busy_batch(slow)  # 32 of 40 places taken, the engine busy for a while
    r = post(slow, {"inputs": [text] * 9})  # 32 + 9 > 40
    assert r.status_code == 429, r.text
    outputs.append(seen(r))
    r = post(slow, {"inputs": text, "timeout_ms": 50})
    assert r.status_code == 504, r.text
    outputs.append(seen(r))
    body = json.dumps({"inputs": text}).encode()
    with socket.create_connection(("127.0.0.1", slow.port)) as s:  # gone before the answer
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                  + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    busy.join()
    deadline = time.monotonic() + 30
    while metric(slow.metrics_text(), "bertserve_requests_total", status="499") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    outputs.append(slow.metrics_text())
    slow.stop()
    outputs.append(slow.output())

    log = server.output() + slow.output()
    assert "POST /predict 422" in log and "POST /predict 429" in log and "POST /predict 504" in log  # access log
    assert '"level":"debug"' in log  # really at debug
    leaks = [o for o in outputs if MARKER in o]
    assert not leaks, [o[max(0, o.find(MARKER) - 300): o.find(MARKER) + 100] for o in leaks]


def test_no_entity_text_leaks_on_the_token_route(tmp_path, start_server):
    """A token-classification model (NER, PII: its answers are personal data by design): a marker sent through
    the token route's good and failing paths, /predict and V2, is in no log line, error body, header or metric
    (the answers' own entities hold it, as they must: they are not looked at)."""
    from app.cli import main as cli
    from tests.support.tiny import make_token_checkpoint

    checkpoint = make_token_checkpoint(tmp_path / "checkpoint", "bert")
    cli(["export", str(checkpoint), "--name", "ner", "--quantize", "none", "--model-repository", str(tmp_path / "repo")])
    text = f"great drug {MARKER} no side effects"
    outputs: list[str] = []
    server = start_server(tmp_path / "repo", env=DEBUG_ENV | {"BERTSERVE_MAX_REQUEST_SEQUENCES": "8"})
    for strategy in ("none", "simple", "first", "average", "max"):
        for body in ({"inputs": text, "parameters": {"aggregation_strategy": strategy, "ignore_labels": []}},
                     {"inputs": " ".join([text] * 12), "parameters": {"aggregation_strategy": strategy}}):
            r = httpx.post(server.url + "/predict", json=body)
            assert r.status_code == 200 and MARKER in r.text, r.text  # the answer: its words are the text's
            outputs.append(repr(r.headers))
    bad = [
        {"inputs": text, "parameters": {"aggregation_strategy": text}},
        {"inputs": text, "parameters": {"aggregation_strategy": [text]}},
        {"inputs": text, "parameters": {"ignore_labels": text}},
        {"inputs": [[text, text]]},
        {"inputs": [text, "   "]},
        {"inputs": " ".join([text] * 200)},  # over BERTSERVE_MAX_REQUEST_SEQUENCES
        {"inputs": text, "parameters": {"stride": 10_000}},
        {"inputs": text, "truncate": True, "parameters": {"stride": 2}},
        {"inputs": text, "raw_scores": True},
    ]
    for body in bad:
        r = httpx.post(server.url + "/predict", json=body)
        assert r.status_code == 422, r.text
        outputs.append(seen(r))
    for path, body in (("/explain", {"inputs": text}), ("/rerank", {"query": text, "texts": [text]})):
        r = httpx.post(server.url + path, json=body)
        assert r.status_code == 422 and "token-classification" in r.text, r.text
        outputs.append(seen(r))
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}
    for params in ({"aggregation_strategy": text}, {"ignore_labels": 3}, {"stride": 10_000}):
        r = httpx.post(server.url + "/v2/models/ner/infer", json={"inputs": [tensor], "parameters": params})
        assert r.status_code == 422, r.text
        outputs.append(seen(r))
    r = httpx.post(server.url + "/v2/models/ner/infer", json={"inputs": [tensor]})
    assert r.status_code == 200 and MARKER in r.text
    outputs.append(server.metrics_text())
    assert "bertserve_entities_total" in outputs[-1]
    server.stop()
    outputs.append(server.output())
    assert '"level":"debug"' in outputs[-1]
    leaks = [o for o in outputs if MARKER in o]
    assert not leaks, [o[max(0, o.find(MARKER) - 300): o.find(MARKER) + 100] for o in leaks]


def test_no_client_text_leaks_when_the_engine_or_the_code_raises(tiny_model_repo, capfd, monkeypatch):
    """In-process, a real uvicorn server on loopback whose tokenizer, engine and request parsing are made to raise
    with the client's text in their error messages (the worst case): the answers are 500 with the fixed JSON
    error, and neither they nor anything written to stdout/stderr (every log, at debug) carries the text."""
    import threading

    import uvicorn

    from app.api.predict import routes
    from app.main import create_app
    from app.served import ServedModel
    from app.settings import Settings
    from tests.support.servers import free_port

    text = f"lovely {MARKER} pills"
    # grpc_port=0: no gRPC in the test process (its stubs cannot share it with tritonclient.grpc's)
    settings = Settings(model_repository=tiny_model_repo, log_level="debug", access_log=True,
                        batch_autotune=False, poll_interval_s=0, grpc_port=0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, loop="asyncio",
                                           http="httptools", log_config=None, log_level="debug"))
    thread = threading.Thread(target=server.run)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.post(url + "/predict", json={"inputs": "fine"}).status_code == 200
        encode, texts_seen = ServedModel.encode, []

        def raising_encode(self, texts):
            raise ValueError(f"cannot tokenize {texts!r}")

        def remembering_encode(self, texts):
            texts_seen.extend(texts)
            return encode(self, texts)

        def raising_infer(self, sequences):
            raise RuntimeError(f"engine failed on {texts_seen!r}")

        def raising_parse(body):
            raise KeyError(body.decode())

        answers = []
        for patches in ([("encode", raising_encode)], [("encode", remembering_encode), ("infer", raising_infer)]):
            with monkeypatch.context() as m:
                for name, fn in patches:
                    m.setattr(ServedModel, name, fn)
                r = httpx.post(url + "/predict", json={"inputs": text})
                assert r.status_code == 500 and r.json()["error_type"] == "backend", r.text
                answers.append(seen(r))
        with monkeypatch.context() as m:
            m.setattr(routes, "parse_predict", raising_parse)
            r = httpx.post(url + "/predict", json={"inputs": text})
            assert r.status_code == 500 and r.json() == {"error": "internal error", "error_type": "internal"}
            answers.append(seen(r))
        answers.append(httpx.get(url + "/metrics").text)
    finally:
        server.should_exit = True
        thread.join(30)
    out, err = capfd.readouterr()
    assert "tokenization failed" in err and "inference failed" in err and "unhandled builtins.KeyError" in err
    assert texts_seen and '"level":"debug"' in err
    for where, output in [("answers", "\n".join(answers)), ("stdout", out), ("stderr", err)]:
        assert MARKER not in output, (where, output[max(0, output.find(MARKER) - 300): output.find(MARKER) + 100])
