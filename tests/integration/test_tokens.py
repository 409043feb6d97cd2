"""Token classification end to end: a tiny random `*ForTokenClassification` checkpoint of every architecture served
today, exported with `bertserve export --quantize none`, served in-process and answering `/predict` as
`transformers.pipeline("token-classification")` answers for every aggregation strategy (texts with emoji, CJK,
accents and one over the model's length: windows with the pipeline's `stride`); the real
`huggingface_hub.InferenceClient`; bad requests a clear 4xx while the server keeps serving."""

from __future__ import annotations

import json
import time

import numpy as np
import orjson
import pytest

from app.cli import main as cli
from app.repository import read_config, read_golden
from app.settings import Settings
from tests.support.apps import in_process, inference_client
from tests.support.tiny import CORPUS, PARITY_TEXTS, TOKEN_LABELS, make_tiny_checkpoint, make_token_checkpoint
from tests.support.v2 import v2_body

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
ARCHS = ["bert", "distilbert", "roberta", "xlm-roberta", "camembert", "albert", "mpnet", "electra", "deberta",
         "deberta-v2", "modernbert"]  # DeBERTa-v3 is deberta-v2's layout (the tiny deberta-v2 is built as v3's)
STRATEGIES = ["none", "simple", "first", "average", "max"]
LONG = " ".join(CORPUS * 3)  # ~150 tokens: three windows or more of the tiny models' 64
TEXTS = [CORPUS[0], CORPUS[4], "Café naïve résumé: the doctor changed my dose 😀👍🏽 then 头痛 and 日本語 nausea",
         "e\u0301 combining marks, tabs\tand  double  spaces", PARITY_TEXTS[-2], LONG]
STRIDE = 16  # the tiny models' default (max_length 64 // 4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    checkpoints = {}
    for seed, arch in enumerate(ARCHS):
        path = make_token_checkpoint(root / "checkpoints" / arch, arch, seed=seed)
        cli(["export", str(path), "--name", arch, "--quantize", "none", "--model-repository", str(root / "repo")])
        checkpoints[arch] = path
    plain = make_tiny_checkpoint(root / "checkpoints" / "plain", "bert", seed=9)  # a sequence classifier
    cli(["export", str(plain), "--name", "plain", "--quantize", "none", "--model-repository", str(root / "repo")])
    return root / "repo", checkpoints


def settings(repo, **more) -> Settings:
    return Settings(model_repository=repo, poll_interval_s=0, batch_autotune=False, provider="cpu",
                    log_level="error", **more)


@pytest.fixture(scope="module")
def call(exported):
    yield from in_process(settings(exported[0]))


@pytest.fixture(scope="module")
def pipelines(exported):
    from transformers import pipeline

    return {arch: pipeline("token-classification", model=str(path), tokenizer=str(path), device="cpu")
            for arch, path in exported[1].items()}


def compare(served: list[dict], expected: list[dict]) -> float:
    """The largest score difference between two answers for one text; asserts the same entities (every field
    but the score equal, offsets included)."""
    assert len(served) == len(expected), (served, expected)
    diffs = [0.0]
    for ours, theirs in zip(served, expected, strict=True):
        assert set(ours) == set(theirs), (ours, theirs)
        plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in theirs.items() if k != "score"}
        assert {k: v for k, v in ours.items() if k != "score"} == plain, (ours, theirs)
        diffs.append(abs(ours["score"] - float(theirs["score"])))
    return max(diffs)


PARITY: dict[tuple[str, str], float] = {}


def test_export_publishes_a_token_model(exported):
    repo, _ = exported
    config = read_config(repo / "bert" / "1")
    assert config.task == "token-classification" and config.labels == TOKEN_LABELS
    golden = read_golden(repo / "bert" / "1", len(TOKEN_LABELS))
    assert golden is not None and golden.token_probabilities is not None and not golden.probabilities
    assert len(golden.token_probabilities) == len(golden.texts)
    assert all(len(row) == len(TOKEN_LABELS) for text in golden.token_probabilities for row in text)
    assert config.report["parity_max_prob_diff"] <= 1e-3


def test_int8_is_gated_by_token_label_agreement(exported, tmp_path):
    """INT8 for a token model: today's per-channel recipe, kept when its entities match fp32's on the gate texts
    (entity F1 >= --min-agreement, default 0.95; token-label agreement recorded beside it); refused (fp32 only, said
    in the report) when they do not (tests/integration/test_export_tokens.py: the entity gate in detail)."""
    checkpoint = exported[1]["bert"]
    cli(["export", str(checkpoint), "--name", "ner", "--model-repository", str(tmp_path)])
    config = read_config(tmp_path / "ner" / "1")
    gate = config.report["gate"]
    assert "token-label agreement" in gate["int8_gate"] and gate["attempts"][0]["agreement"] >= 0.97
    assert gate["entity_f1"] >= gate["threshold"] == 0.95
    # The recorded agreement is the kept recipe's: the first one, or (when the tiny model's entities sit nearer the
    # bound, as its training lands some runs) the first with MatMuls kept in fp32 that passes.
    kept = next(a for a in gate["attempts"] if a["passed"])
    assert gate["token_agreement"] == kept["agreement"] and gate["chosen"] == kept["recipe"]
    assert [a.precision for a in config.artifacts] == ["int8", "fp32"] and gate["chosen"]
    cli(["export", str(checkpoint), "--name", "strict", "--min-agreement", "1.01", "--model-repository",
         str(tmp_path)])
    strict = read_config(tmp_path / "strict" / "1")
    assert [a.precision for a in strict.artifacts] == ["fp32"] and "int8_refused" in strict.report["gate"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("arch", ARCHS)
def test_entities_as_the_pipeline(call, pipelines, arch, strategy):
    classify = pipelines[arch]
    found = 0.0
    # truncate true: cut at max length as the pipeline without stride (every strategy, none included)
    r = call("POST", "/predict", json={"inputs": TEXTS, "model": arch, "truncate": True,
                                        "parameters": {"aggregation_strategy": strategy}})
    assert r.status_code == 200, r.text
    longer = sum(len(classify.tokenizer(text)["input_ids"]) > 64 for text in TEXTS)
    assert LONG == TEXTS[-1] and longer >= 1 and r.headers["x-truncated-texts"] == str(longer)
    expected = classify(TEXTS, aggregation_strategy=strategy)
    for ours, theirs in zip(r.json(), expected, strict=True):
        found = max(found, compare(ours, theirs))
    if strategy != "none":
        # The default (truncate false): the long text read in windows, merged as the pipeline with stride merges them.
        r = call("POST", "/predict", json={"inputs": TEXTS, "model": arch,
                                            "parameters": {"aggregation_strategy": strategy}})
        assert r.status_code == 200, r.text
        assert r.headers["x-truncated-texts"] == "0"
        expected = classify(TEXTS, aggregation_strategy=strategy, stride=STRIDE)
        for ours, theirs in zip(r.json(), expected, strict=True):
            found = max(found, compare(ours, theirs))
        # Entities past what the first window reads: nothing after max_length vanished
        offsets = classify.tokenizer(LONG, truncation=True, max_length=64, return_offsets_mapping=True)
        assert r.json()[-1][-1]["end"] > max(end for _, end in offsets["offset_mapping"])
        # Another stride, asked per request.
        r = call("POST", "/predict", json={"inputs": LONG, "model": arch,
                                            "parameters": {"aggregation_strategy": strategy, "stride": 5}})
        assert r.status_code == 200, r.text
        found = max(found, compare(r.json(), classify(LONG, aggregation_strategy=strategy, stride=5)))
    else:  # texts within the max length (the default, truncate false): the pipeline's per-token answer
        short = [text for text in TEXTS if len(classify.tokenizer(text)["input_ids"]) <= 64]
        r = call("POST", "/predict", json={"inputs": short, "model": arch, "parameters": {"aggregation_strategy": "none"}})
        assert r.status_code == 200, r.text
        for ours, theirs in zip(r.json(), classify(short, aggregation_strategy="none"), strict=True):
            found = max(found, compare(ours, theirs))
    PARITY[arch, strategy] = found
    print(f"\ntoken parity {arch} {strategy}: max |score diff| {found:.2e}")
    assert found <= TOLERANCE


def test_strategy_none_reads_a_long_text_whole(call, pipelines):
    """The pipeline refuses stride with strategy none; bertserve reads the windows anyway and answers each token
    once, its index counted in the whole text's tokens: within the first window, the pipeline's own answer."""
    r = call("POST", "/predict", json={"inputs": LONG, "model": "bert", "parameters": {"aggregation_strategy": "none",
                                                                                        "ignore_labels": []}})
    assert r.status_code == 200, r.text
    tokens = r.json()
    whole = pipelines["bert"].tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert [t["index"] for t in tokens] == list(range(1, len(whole) + 1))  # every token once, in order
    assert tokens[-1]["end"] == len(LONG)
    first = pipelines["bert"](LONG, aggregation_strategy="none", ignore_labels=[])
    assert [(t["start"], t["index"]) for t in tokens[:30]] == [(t["start"], t["index"]) for t in first[:30]]


def test_one_text_is_a_flat_list_and_defaults(call, pipelines):
    r = call("POST", "/predict", json={"inputs": CORPUS[0], "model": "roberta"})
    assert r.status_code == 200, r.text
    assert compare(r.json(), pipelines["roberta"](CORPUS[0], aggregation_strategy="simple")) <= TOLERANCE
    r = call("POST", "/predict", json={"inputs": CORPUS[0], "model": "roberta",
                                        "parameters": {"ignore_labels": [], "aggregation_strategy": "first"}})
    assert compare(r.json(), pipelines["roberta"](CORPUS[0], aggregation_strategy="first", ignore_labels=[])) <= TOLERANCE
    models = {m["name"]: m for m in call("GET", "/models").json()}
    assert models["bert"]["task"] == "token-classification" and models["bert"]["default_stride"] == STRIDE


def test_the_inference_client_works_unchanged(exported, pipelines):
    """huggingface_hub.InferenceClient.token_classification against the in-process app (its requests handed to
    the app by a requests adapter: no socket)."""
    app = in_process(settings(exported[0], default_model="bert"))
    call = next(app)

    try:
        with inference_client(call) as client:
            for strategy in STRATEGIES:
                out = client.token_classification(TEXTS[2], aggregation_strategy=strategy)
                expected = pipelines["bert"](TEXTS[2], aggregation_strategy=strategy)
                assert len(out) == len(expected) and expected
                for ours, theirs in zip(out, expected, strict=True):
                    assert (ours.entity_group or ours.entity) == theirs.get("entity_group", theirs.get("entity"))
                    assert (ours.start, ours.end, ours.word) == (theirs["start"], theirs["end"], theirs["word"])
                    assert abs(ours.score - float(theirs["score"])) <= TOLERANCE
            out = client.token_classification(LONG, aggregation_strategy="simple", stride=8)
            expected = pipelines["bert"](LONG, aggregation_strategy="simple", stride=8)
            assert [(o.start, o.end) for o in out] == [(e["start"], e["end"]) for e in expected]
    finally:
        next(app, None)


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": "", "model": "bert"}, 422, "inputs"),
    ({"inputs": "   \t ", "model": "bert"}, 422, "no token to label"),
    ({"inputs": ["fine text", " "], "model": "bert"}, 422, "inputs[1] holds no token"),
    ({"inputs": CORPUS[0], "model": "bert", "parameters": {"aggregation_strategy": "longest"}}, 422,
     "aggregation_strategy must be one of none, simple, first, average, max"),
    ({"inputs": CORPUS[0], "model": "bert", "parameters": {"stride": 64}}, 422, "stride 64 must be below"),
    ({"inputs": LONG, "model": "bert", "parameters": {"stride": 62}}, 422, "stride 62 must be below"),
    ({"inputs": [[CORPUS[0], CORPUS[1]]], "model": "bert"}, 422, "not pairs"),
    ({"inputs": {"text": CORPUS[0], "text_pair": CORPUS[1]}, "model": "bert"}, 422, "not pairs"),
    ({"inputs": CORPUS[0], "model": "bert", "raw_scores": True}, 422, "not taken by a token-classification model"),
    ({"inputs": CORPUS[0], "model": "bert", "parameters": {"top_k": 2}}, 422, "parameters.top_k"),
    ({"inputs": CORPUS[0], "model": "bert", "parameters": {"candidate_labels": ["a", "b"]}}, 422, "candidate_labels"),
    ({"inputs": CORPUS[0], "model": "bert", "truncate": True, "parameters": {"stride": 4}}, 422,
     "stride applies to windows"),
    ({"inputs": CORPUS[0], "model": "plain", "parameters": {"aggregation_strategy": "simple"}}, 422,
     "model plain (version 1) is a text-classification model"),
    ({"inputs": [LONG * 40] * 2, "model": "bert"}, 422, "BERTSERVE_MAX_REQUEST_SEQUENCES"),
])
def test_bad_requests_are_clear_and_the_server_keeps_serving(call, body, status, words):
    r = call("POST", "/predict", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"], r.text
    assert call("POST", "/predict", json={"inputs": CORPUS[0], "model": "bert"}).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/explain", {"inputs": CORPUS[0], "model": "bert"}),
    ("/rerank", {"query": "a", "texts": ["b", "c"], "model": "bert"}),
    ("/v1/rerank", {"query": "a", "documents": ["b", "c"], "model": "bert"}),
    ("/v2/rerank", {"query": "a", "documents": ["b", "c"], "model": "bert"}),
    ("/classify", {"input": ["a"], "model": "bert"}),
    ("/score", {"text_1": "a", "text_2": "b", "model": "bert"}),
    ("/v1/models/bert:predict", {"instances": ["a"]}),
])
def test_sequence_routes_refuse_a_token_model(call, path, body):
    r = call("POST", path, json=body)
    assert r.status_code == 422, (path, r.text)
    text = r.text
    assert "bert" in text and "token-classification" in text, (path, text)


def test_zero_shot_refuses_a_token_model(call):
    r = call("POST", "/predict", json={"inputs": CORPUS[0], "model": "bert", "parameters": {"candidate_labels": "a, b"}})
    assert r.status_code == 422 and "token-classification" in r.text


def test_a_mebibyte_of_text_stops_at_the_cap_in_bounded_time(exported):
    """A 1 MiB text (the body limit raised above it): refused with a 422 naming BERTSERVE_MAX_REQUEST_SEQUENCES
    once its windows pass the cap, before the whole text is tokenized; the server keeps serving."""
    app = in_process(settings(exported[0], max_body_bytes=4 << 20, max_request_sequences=64))
    call = next(app)
    try:
        text = ("headache nausea " * 70000)[: 1 << 20]
        started = time.perf_counter()
        r = call("POST", "/predict", json={"inputs": text, "model": "bert"})
        took = time.perf_counter() - started
        assert r.status_code == 422 and "BERTSERVE_MAX_REQUEST_SEQUENCES" in r.text, r.text
        assert took < 5, took
        # Within the cap: a text of ~60 windows is answered whole.
        ok = call("POST", "/predict", json={"inputs": ("headache nausea " * 900), "model": "bert"})
        assert ok.status_code == 200 and ok.json()[-1]["end"] > 14000, ok.text[:200]
    finally:
        next(app, None)


def test_metrics_count_entities_by_group(call):
    call("POST", "/predict", json={"inputs": CORPUS[:3], "model": "bert"})
    text = call("GET", "/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("bertserve_entities_total{")]
    assert lines and all('model="bert"' in line or 'model="' in line for line in lines)
    groups = {line.split('entity="')[1].split('"')[0] for line in lines}
    assert groups <= {"DRUG", "COND", "O"}, groups  # the model's own groups (O too when not ignored)
    assert "bertserve_token_windows_per_request_bucket" in text


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_kserve_v2_answers_entities_as_predict(call, strategy, binary):
    predict = call("POST", "/predict", json={"inputs": TEXTS, "model": "roberta",
                                              "parameters": {"aggregation_strategy": strategy, "stride": 8}}).json()
    body, header_length = v2_body(("text", TEXTS), binary=binary)
    head = orjson.loads(body[:int(header_length)] if binary else body)
    head["parameters"] = {"aggregation_strategy": strategy, "stride": 8}
    body = orjson.dumps(head) + (body[int(header_length):] if binary else b"")
    headers = {"Content-Type": "application/json"} | (
        {"Inference-Header-Content-Length": str(len(orjson.dumps(head)))} if binary else {})
    r = call("POST", "/v2/models/roberta/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "entities" and out["datatype"] == "BYTES" and out["shape"] == [len(TEXTS)]
    assert [json.loads(one) for one in out["data"]] == predict
    meta = call("GET", "/v2/models/roberta").json()
    assert [o["name"] for o in meta["outputs"]] == ["entities"] and [i["name"] for i in meta["inputs"]] == ["text"]
    assert meta["parameters"]["task"] == "token-classification" and meta["parameters"]["default_stride"] == STRIDE


TEXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [CORPUS[0]]}


@pytest.mark.parametrize("path, body, words", [
    ("/v2/models/bert/infer", {"inputs": [TEXT], "parameters": {"aggregation_strategy": "longest"}},
     "aggregation_strategy must be one of"),
    ("/v2/models/bert/infer", {"inputs": [TEXT], "parameters": {"truncate": True, "stride": 4}},
     "stride applies to windows"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, {**TEXT, "name": "text_pair"}]}, "not pairs"),
    ("/v2/models/bert/infer", {"inputs": [TEXT], "outputs": [{"name": "scores"}]}, "its one output is 'entities'"),
    ("/v2/models/bert/infer", {"inputs": [TEXT], "parameters": {"function_to_apply": "none"}}, "not taken"),
    ("/v2/models/plain/infer", {"inputs": [TEXT], "parameters": {"aggregation_strategy": "simple"}},
     "model plain (version 1) is a text-classification model"),
    ("/v2/models/plain/infer", {"inputs": [TEXT], "outputs": [{"name": "entities"}]}, "token-classification"),
])
def test_kserve_v2_bad_token_requests(call, path, body, words):
    r = call("POST", path, json=body)
    assert r.status_code == 422 and words in r.json()["error"], r.text
    assert call("POST", "/v2/models/bert/infer", json={"inputs": [TEXT]}).status_code == 200


@pytest.mark.process
def test_tritonclient_http_and_grpc_read_entities(exported, start_server, pipelines):
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    server = start_server(exported[0])
    for strategy in ("none", "first"):
        expected = pipelines["bert"](TEXTS[:3], aggregation_strategy=strategy)
        for module, client in ((thttp, thttp.InferenceServerClient(server.url.removeprefix("http://"))),
                               (tgrpc, tgrpc.InferenceServerClient(server.grpc_address))):
            text = module.InferInput("text", [3], "BYTES")
            text.set_data_from_numpy(np.array(TEXTS[:3], dtype=object))
            answer = client.infer("bert", [text], parameters={"aggregation_strategy": strategy, "truncate": False,
                                                              "stride": 16})
            found = [json.loads(one) for one in answer.as_numpy("entities")]
            for ours, theirs in zip(found, expected, strict=True):
                assert compare(ours, theirs) <= TOLERANCE


def test_parity_table():
    """The parity figures of this module, as a table (run after the parity tests)."""
    if not PARITY:
        pytest.skip("the parity tests did not run")
    lines = ["| architecture | " + " | ".join(STRATEGIES) + " |", "|---" * (len(STRATEGIES) + 1) + "|"]
    for arch in ARCHS:
        lines.append(f"| {arch} | " + " | ".join(f"{PARITY[arch, s]:.1e}" if (arch, s) in PARITY else "-"
                                                 for s in STRATEGIES) + " |")
    print("\n" + "\n".join(lines))
