"""Zero-shot classification end to end: tiny random NLI checkpoints (BERT, RoBERTa, DeBERTa-v2, ModernBERT; their
labels in different orders, so the entailment index is found, not assumed), exported with `bertserve export
--quantize none`, served in-process and answering `/predict` with `parameters.candidate_labels` as
`transformers.pipeline("zero-shot-classification")` answers; the real `huggingface_hub.InferenceClient`; KServe V2's
`candidate_labels` input; bad requests a clear 4xx while the server keeps serving. A real server (tritonclient
http and grpc) in the `process`-marked test at the end."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.cli import main as cli
from app.settings import Settings
from tests.support.apps import in_process, inference_client
from tests.support.tiny import CORPUS, make_tiny_checkpoint
from tests.support.v2 import v2_body

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4
# Each architecture's labels, in id order: the entailment label is at 2, 0 (contradiction then its last label) and 1.
NLI_LABELS = {
    "bert": ["contradiction", "neutral", "entailment"],
    "roberta": ["ENTAILMENT", "neutral", "contradiction"],
    "deberta-v2": ["contradiction", "Entailment", "neutral"],
    "modernbert": ["contradiction", "neutral", "entailment"],
}
ARCHS = list(NLI_LABELS)
TEXTS = CORPUS[:4]
WORDS = sorted({word for text in CORPUS for word in text.split() if word.isalpha()})
LABELS_1 = ["medicine"]
LABELS_3 = ["side effects", "doctor", "great treatment"]
LABELS_20 = WORDS[:20]
TEMPLATE = "a review about {} ."


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("zeroshot")
    checkpoints = {}
    for seed, (arch, labels) in enumerate(NLI_LABELS.items()):
        path = make_tiny_checkpoint(root / "checkpoints" / arch, arch, seed=seed)
        # Weights 10x wider than BERT's default (as the tiny DeBERTa and ModernBERT have) and a classifier 20x
        # wider: the hypothesis moves the entailment logit, so candidates' scores are far from ties.
        config = AutoConfig.from_pretrained(path, initializer_range=0.2, id2label=dict(enumerate(labels)),
                                            label2id={label: i for i, label in enumerate(labels)})
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config).eval()
        with torch.no_grad():
            for name, weights in model.named_parameters():
                if name.startswith("classifier") and name.endswith("weight"):
                    weights.mul_(20)
        model.save_pretrained(path)
        checkpoints[arch] = path
        cli(["export", str(path), "--name", arch, "--quantize", "none", "--model-repository", str(root / "repo")])
    # A model without an entailment label (negative, neutral, positive).
    plain = make_tiny_checkpoint(root / "checkpoints" / "plain", "bert", seed=9)
    cli(["export", str(plain), "--name", "plain", "--quantize", "none", "--model-repository", str(root / "repo")])
    return root / "repo", checkpoints


@pytest.fixture(scope="module")
def call(exported):
    yield from in_process(Settings(model_repository=exported[0], poll_interval_s=0, batch_autotune=False,
                                   provider="cpu", log_level="error"))


@pytest.fixture(scope="module")
def pipelines(exported):
    from transformers import pipeline

    return {arch: pipeline("zero-shot-classification", model=str(path), tokenizer=str(path), device="cpu")
            for arch, path in exported[1].items()}


def worst(served: list[dict], expected: list[dict]) -> float:
    """The largest score difference between two zero-shot answers per text; asserts the texts, label sets and
    the order of labels whose scores differ by more than the tolerance."""
    diffs = [0.0]
    for ours, theirs in zip(served, expected, strict=True):
        assert ours["sequence"] == theirs["sequence"]
        assert sorted(ours["labels"]) == sorted(theirs["labels"])
        ours_by, theirs_by = dict(zip(ours["labels"], ours["scores"])), dict(zip(theirs["labels"], theirs["scores"]))
        diffs += [abs(ours_by[label] - theirs_by[label]) for label in theirs_by]
        for i in range(len(ours["labels"]) - 1):  # best first, except within the tolerance
            a, b = ours["labels"][i], ours["labels"][i + 1]
            assert theirs_by[a] >= theirs_by[b] - 2 * TOLERANCE, (ours, theirs)
    return max(diffs)


PARITY: dict[tuple[str, bool], float] = {}


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_zero_shot_answers_as_the_pipeline(call, pipelines, arch, multi_label):
    classify = pipelines[arch]
    found = 0.0
    for labels, template in ((LABELS_1, None), (LABELS_3, None), (LABELS_20, None), (LABELS_3, TEMPLATE),
                             (LABELS_20, TEMPLATE)):
        params = {"candidate_labels": labels, "multi_label": multi_label} | (
            {"hypothesis_template": template} if template else {})
        r = call("POST", "/predict", json={"inputs": TEXTS, "model": arch, "parameters": params})
        assert r.status_code == 200, r.text
        expected = classify(TEXTS, candidate_labels=labels, multi_label=multi_label,
                            **({"hypothesis_template": template} if template else {}))
        found = max(found, worst(r.json(), expected))
        if not multi_label and len(labels) > 1:  # a distribution over the labels
            assert all(abs(sum(answer["scores"]) - 1) < 1e-5 for answer in r.json())
        # One text: one object, as the pipeline and the Inference API answer.
        one = call("POST", "/predict", json={"inputs": TEXTS[0], "model": arch, "parameters": params})
        assert one.status_code == 200 and isinstance(one.json(), dict), one.text
        assert worst([one.json()], expected[:1]) <= TOLERANCE
    PARITY[arch, multi_label] = found
    print(f"\nzero-shot parity {arch} multi_label={multi_label}: max |score diff| {found:.2e}")
    assert found <= TOLERANCE
    spread = classify(TEXTS[0], candidate_labels=LABELS_20)["scores"]
    # The candidates' scores are far from ties (the tiny tokenizer's vocabulary, trained per process, varies: so
    # do the random model's scores)
    assert spread[0] - spread[-1] > 100 * TOLERANCE


def test_duplicate_labels_are_answered_as_the_pipeline_answers_them(call, pipelines):
    labels = ["doctor", "side effects", "doctor", "great"]
    for multi_label in (False, True):
        r = call("POST", "/predict", json={"inputs": TEXTS, "model": "bert",
                                            "parameters": {"candidate_labels": labels, "multi_label": multi_label}})
        assert r.status_code == 200, r.text
        expected = pipelines["bert"](TEXTS, candidate_labels=labels, multi_label=multi_label)
        assert all(answer["labels"].count("doctor") == 2 for answer in r.json())
        assert worst(r.json(), expected) <= TOLERANCE
    # A comma-separated string is split as the pipeline splits it.
    r = call("POST", "/predict", json={"inputs": TEXTS[0], "model": "bert",
                                        "parameters": {"candidate_labels": "doctor, side effects,,great"}})
    assert r.status_code == 200 and sorted(r.json()["labels"]) == ["doctor", "great", "side effects"], r.text


def test_the_answer_counts_the_texts_it_cut_not_their_pairs(call):
    long = " ".join(TEXTS * 40)  # past the tiny models' 64 tokens
    r = call("POST", "/predict", json={"inputs": [TEXTS[0], long, long], "model": "bert",
                                        "parameters": {"candidate_labels": ["doctor", "side effects", "great"]}})
    assert r.status_code == 200 and r.headers["X-Truncated-Texts"] == "2", r.text


def test_the_inference_client_works_unchanged(exported, pipelines):
    """huggingface_hub.InferenceClient.zero_shot_classification against the in-process app (BERTSERVE_DEFAULT_MODEL
    set: the client names no model in its body): its requests go through a requests adapter that hands them to the
    app (no socket, nothing else reachable)."""
    app = in_process(Settings(model_repository=exported[0], poll_interval_s=0, batch_autotune=False, provider="cpu",
                              log_level="error", default_model="bert"))
    call = next(app)

    try:
        with inference_client(call) as client:
            for multi_label, template in ((False, None), (True, TEMPLATE)):
                out = client.zero_shot_classification(TEXTS[1], LABELS_3, multi_label=multi_label,
                                                      hypothesis_template=template)
                expected = pipelines["bert"](TEXTS[1], candidate_labels=LABELS_3, multi_label=multi_label,
                                             **({"hypothesis_template": template} if template else {}))
                ours = {"sequence": TEXTS[1], "labels": [o.label for o in out], "scores": [o.score for o in out]}
                assert worst([ours], [expected]) <= TOLERANCE
    finally:
        next(app, None)  # closes the app


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_kserve_v2_candidate_labels_answer_as_predict(call, arch, binary):
    predict = call("POST", "/predict", json={"inputs": TEXTS, "model": arch, "parameters": {
        "candidate_labels": LABELS_20, "hypothesis_template": TEMPLATE, "multi_label": True}}).json()
    body, header_length = v2_body(("text", TEXTS), ("candidate_labels", LABELS_20), binary=binary)
    head = orjson.loads(body[:int(header_length)] if binary else body)
    head["parameters"] = {"hypothesis_template": TEMPLATE, "multi_label": True}
    body = orjson.dumps(head) + (body[int(header_length):] if binary else b"")
    headers = {"Content-Type": "application/json"} | (
        {"Inference-Header-Content-Length": str(len(orjson.dumps(head)))} if binary else {})
    r = call("POST", f"/v2/models/{arch}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    outputs = {out["name"]: out for out in r.json()["outputs"]}
    assert set(outputs) == {"label", "labels", "scores"}
    assert outputs["labels"]["shape"] == outputs["scores"]["shape"] == [len(TEXTS), len(LABELS_20)]
    labels = np.array(outputs["labels"]["data"]).reshape(len(TEXTS), -1).tolist()
    scores = np.array(outputs["scores"]["data"]).reshape(len(TEXTS), -1)
    assert outputs["label"]["data"] == [row[0] for row in labels]
    for k, answer in enumerate(predict):
        assert labels[k] == answer["labels"]
        np.testing.assert_allclose(scores[k], answer["scores"], atol=1e-6)
    # The metadata lists the input for an NLI model only.
    inputs = [t["name"] for t in call("GET", f"/v2/models/{arch}").json()["inputs"]]
    assert "candidate_labels" in inputs
    assert "candidate_labels" not in [t["name"] for t in call("GET", "/v2/models/plain").json()["inputs"]]


def _labels_tensor(labels: list[str]) -> dict:
    return {"name": "candidate_labels", "datatype": "BYTES", "shape": [len(labels)], "data": labels}


TEXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a fine review"]}


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": []}}, 422, "no candidate labels"),
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": " , "}}, 422, "no candidate labels"),
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": [f"l{i}" for i in range(10_000)]}}, 422,
     "BERTSERVE_MAX_REQUEST_SEQUENCES"),
    ("/predict", {"inputs": ["a"] * 30, "parameters": {"candidate_labels": [f"l{i}" for i in range(10)]}}, 422,
     "30 text(s) × 10 candidate label(s) = 300 sequences to score; the limit is 256 (BERTSERVE_MAX_REQUEST_SEQUENCES)"),
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": ["x"], "hypothesis_template": "no slot"}}, 422,
     "hypothesis_template 'no slot' does not place the label"),
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": ["x"], "hypothesis_template": "{label}"}}, 422,
     "does not place the label"),
    ("/predict", {"inputs": "a", "model": "plain", "parameters": {"candidate_labels": ["x"]}}, 422,
     "model plain (version 1) cannot classify zero-shot: none of its labels (negative, neutral, positive)"),
    ("/predict", {"inputs": [["a", "b"]], "parameters": {"candidate_labels": ["x"]}}, 422,
     "zero-shot classification takes texts, not pairs"),
    ("/predict", {"inputs": {"text": "a", "text_pair": "b"}, "parameters": {"candidate_labels": ["x"]}}, 422,
     "zero-shot classification takes texts, not pairs"),
    ("/predict", {"inputs": "a", "raw_scores": True, "parameters": {"candidate_labels": ["x"]}}, 422,
     "raw_scores: not taken with parameters.candidate_labels"),
    ("/predict", {"inputs": "a", "parameters": {"multi_label": True}}, 422,
     "apply to zero-shot classification only"),
    ("/predict", {"inputs": "a", "truncate": False, "parameters": {"candidate_labels": ["x"]}}, 422,
     "does not apply to candidate labels"),
    ("/predict", {"inputs": "a", "parameters": {"candidate_labels": ["x", 3]}}, 422, "candidate_labels"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, _labels_tensor([])]}, 422, "input 'candidate_labels' holds no text"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, _labels_tensor([f"l{i}" for i in range(10_000)])]}, 422,
     "BERTSERVE_MAX_REQUEST_SEQUENCES"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, _labels_tensor(["x"])], "parameters": {"hypothesis_template": "t"}},
     422, "does not place the label"),
    ("/v2/models/plain/infer", {"inputs": [TEXT, _labels_tensor(["x"])]}, 422,
     "model plain (version 1) cannot classify zero-shot"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, {**TEXT, "name": "text_pair"}, _labels_tensor(["x"])]}, 422,
     "takes texts, not pairs"),
    ("/v2/models/bert/infer", {"inputs": [TEXT], "parameters": {"multi_label": True}}, 422,
     "apply to zero-shot classification only"),
    ("/v2/models/bert/infer", {"inputs": [TEXT, _labels_tensor(["x"])], "parameters": {"multi_label": "yes"}}, 422,
     "parameters.multi_label must be true or false"),
    ("/v2/models/bert/infer", {"inputs": [TEXT], "outputs": [{"name": "labels"}]}, 422,
     "output 'labels' comes with 'candidate_labels' only"),
])
def test_bad_zero_shot_requests_are_a_clear_4xx_and_the_server_keeps_serving(call, path, body, status, message):
    r = call("POST", path, json={"model": "bert", **body} if path == "/predict" and "model" not in body else body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    assert set(r.json()) == {"error", "error_type"}
    ok = call("POST", "/predict", json={"inputs": TEXTS[0], "model": "bert",
                                         "parameters": {"candidate_labels": LABELS_3}})
    assert ok.status_code == 200 and ok.json()["labels"], ok.text


@pytest.mark.process
def test_tritonclient_http_and_grpc_read_zero_shot_scores(exported, start_server, pipelines):
    import tritonclient.grpc as tgrpc
    import tritonclient.http as thttp

    server = start_server(exported[0])
    expected = pipelines["bert"](TEXTS, candidate_labels=LABELS_3, multi_label=False)
    for module, client in ((thttp, thttp.InferenceServerClient(server.url.removeprefix("http://"))),
                           (tgrpc, tgrpc.InferenceServerClient(server.grpc_address))):
        text = module.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array(TEXTS, dtype=object))
        labels = module.InferInput("candidate_labels", [len(LABELS_3)], "BYTES")
        labels.set_data_from_numpy(np.array(LABELS_3, dtype=object))
        answer = client.infer("bert", [text, labels], parameters={"multi_label": False})
        ranked = [[label.decode() for label in row] for row in answer.as_numpy("labels")]
        scores = answer.as_numpy("scores")
        assert scores.shape == (len(TEXTS), len(LABELS_3)) and scores.dtype == np.float32
        served = [{"sequence": t, "labels": row, "scores": s.tolist()} for t, row, s in zip(TEXTS, ranked, scores)]
        assert worst(served, expected) <= TOLERANCE
