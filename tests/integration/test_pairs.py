"""Text pairs end to end: tiny random BERT (token_type_ids) and RoBERTa (none) 3-label checkpoints, exported with
`bertserve export --quantize none`, served in-process, answering pairs as
`transformers.pipeline("text-classification", top_k=None)({"text": a, "text_pair": b})` does; KServe V2's
`text_pair` input alike; bad pairs a clear 422 while the server keeps serving."""

from __future__ import annotations

import numpy as np
import pytest

from app.cli import main as cli
from app.settings import Settings
from tests.support.apps import in_process
from tests.support.tiny import CORPUS, PARITY_PAIRS, make_tiny_checkpoint
from tests.support.v2 import v2_body

pytestmark = pytest.mark.slow

ARCHS = ["bert", "roberta"]
PAIRS = PARITY_PAIRS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("pairs")
    checkpoints = {}
    for seed, arch in enumerate(ARCHS):
        checkpoints[arch] = make_tiny_checkpoint(root / "checkpoints" / arch, arch, seed=seed)
        model = AutoModelForSequenceClassification.from_pretrained(checkpoints[arch]).eval()
        with torch.no_grad():  # scores spread over the labels, and the second text's type id weighs: parity means more
            for name, weights in model.named_parameters():
                if name.startswith("classifier") and name.endswith("weight"):
                    weights.mul_(20)
                if "token_type_embeddings" in name:
                    weights.mul_(20)
        model.save_pretrained(checkpoints[arch])
        cli(["export", str(checkpoints[arch]), "--name", arch, "--quantize", "none",
             "--model-repository", str(root / "repo")])
    return root / "repo", checkpoints


@pytest.fixture(scope="module")
def call(exported):
    yield from in_process(Settings(model_repository=exported[0], poll_interval_s=0, batch_autotune=False, provider="cpu",
                                   log_level="error"))


def pipeline_answers(checkpoint) -> list[list[dict]]:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(checkpoint), tokenizer=str(checkpoint), top_k=None,
                        device="cpu")
    return [classify({"text": a, "text_pair": b}, truncation=True) for a, b in PAIRS]


def worst(served: list[list[dict]], expected: list[list[dict]]) -> float:
    """The largest score difference; asserts the labels rank alike."""
    diffs = []
    for ours, theirs in zip(served, expected, strict=True):
        assert [s["label"] for s in ours] == [s["label"] for s in theirs]
        diffs += [abs(a["score"] - b["score"]) for a, b in zip(ours, theirs)]
    return max(diffs)


@pytest.mark.parametrize("arch", ARCHS)
def test_pairs_are_served_like_the_transformers_pipeline(exported, call, arch):
    expected = pipeline_answers(exported[1][arch])
    # Pairs as lists of two texts, in one padded batch with a plain text between them.
    listed = call("POST", "/predict", json={"inputs": [list(PAIRS[0]), CORPUS[0], *map(list, PAIRS[1:])],
                                            "model": arch})
    assert listed.status_code == 200, listed.text
    answers = listed.json()
    alone = call("POST", "/predict", json={"inputs": CORPUS[0], "model": arch}).json()
    assert worst([answers.pop(1)], [alone]) <= 1e-6  # the text among pairs is answered as a text
    diff = worst(answers, expected)
    print(f"\npairs parity {arch}: max |score diff| {diff:.2e}")
    assert diff <= 1e-3
    assert max(r[0]["score"] for r in expected) > 0.4  # scores spread over the labels
    # The Hugging Face form, a list of objects: the same answers.
    objects = call("POST", "/predict", json={"inputs": [{"text": a, "text_pair": b} for a, b in PAIRS],
                                             "model": arch}).json()
    assert worst(objects, expected) <= 1e-3
    # One pair in that form answers one ranked list, as one text does.
    single = call("POST", "/predict", json={"inputs": {"text": PAIRS[0][0], "text_pair": PAIRS[0][1]},
                                            "model": arch}).json()
    assert worst([single], expected[:1]) <= 1e-3


def test_bert_pairs_get_their_token_type_ids(call):
    """The old workaround, one string "a [SEP] b", has type id 0 throughout: BERT scores it differently."""
    a, b = PAIRS[0]
    pair = call("POST", "/predict", json={"inputs": [[a, b]], "model": "bert", "raw_scores": True}).json()[0]
    joined = call("POST", "/predict", json={"inputs": f"{a} [SEP] {b}", "model": "bert", "raw_scores": True}).json()
    by_label = {s["label"]: s["score"] for s in joined}
    assert max(abs(s["score"] - by_label[s["label"]]) for s in pair) > 1e-3


def test_a_flat_list_of_two_strings_is_two_texts(call):
    two = call("POST", "/predict", json={"inputs": list(PAIRS[0]), "model": "bert"}).json()
    each = [call("POST", "/predict", json={"inputs": text, "model": "bert"}).json() for text in PAIRS[0]]
    assert len(two) == 2 and worst(two, each) <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("binary", [False, True])
def test_kserve_v2_text_pair_answers_as_predict(call, arch, binary):
    premises, hypotheses = [a for a, _ in PAIRS], [b for _, b in PAIRS]
    predict = call("POST", "/predict", json={"inputs": [list(p) for p in PAIRS], "model": arch}).json()
    body, header_length = v2_body(("text", premises), ("text_pair", hypotheses), binary=binary, outputs=["scores"])
    r = call("POST", f"/v2/models/{arch}/infer", content=body,
             headers={"Content-Type": "application/json"} | ({"Inference-Header-Content-Length": header_length}
                                                             if binary else {}))
    assert r.status_code == 200, r.text
    [scores] = r.json()["outputs"]
    labels = call("GET", f"/v2/models/{arch}").json()["parameters"]["labels"]
    v2 = np.array(scores["data"]).reshape(scores["shape"])
    expected = np.array([[{s["label"]: s["score"] for s in row}[label] for label in labels] for row in predict])
    np.testing.assert_allclose(v2, expected, atol=1e-6)


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/predict", {"inputs": [["a", "b", "c"]]}, "inputs[0]: a pair is a list of exactly two texts"),
    ("/predict", {"inputs": [["a", 3]]}, "inputs[0][1]: Input should be a valid string"),
    ("/predict", {"inputs": []}, "inputs: List should have at least 1 item"),
    ("/predict", {"inputs": [{"text": "a"}]}, "inputs[0].text_pair: Field required"),
    ("/predict", {"inputs": [["great " * 70, "great"]], "truncate": False}, "the room the first text of a pair leaves"),
    ("/v2/models/bert/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
                                          {"name": "text_pair", "datatype": "BYTES", "shape": [1], "data": ["c"]}]},
     "input 'text_pair' has 1 elements and 'text' 2"),
    ("/explain", {"inputs": {"text": "a", "text_pair": "b"}},
     "inputs: explanations take single texts; text pairs are not explained"),
])
def test_bad_pairs_are_a_clear_422_and_the_server_keeps_serving(call, path, body, message):
    r = call("POST", path, json={"model": "bert", **body} if path != "/v2/models/bert/infer" else body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(message) or message in r.json()["error"], r.json()
    assert set(r.json()) == {"error", "error_type"}
    ok = call("POST", "/predict", json={"inputs": [list(PAIRS[0])], "model": "bert"})
    assert ok.status_code == 200 and len(ok.json()) == 1
