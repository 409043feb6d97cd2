"""Zero-shot classification's rules (app.zeroshot) without a model: labels, hypotheses, the entailment label, the
score combination against transformers' own ZeroShotClassificationPipeline.postprocess, the ranking, the limits;
and how /predict and KServe V2 read and shape a zero-shot request (app.api.predict.codec, app.protocol.v2)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app import zeroshot
from app.api.predict.codec import encode_zero_shot, parse_predict, zero_shot
from app.errors import InvalidInput
from app.protocol import v2


def test_candidate_labels_are_read_as_the_pipeline_reads_them():
    assert zeroshot.candidate_labels(["a b", "c", "a b"]) == ["a b", "c", "a b"]  # a list as is, duplicates kept
    assert zeroshot.candidate_labels(" urgent, not urgent ,, phone") == ["urgent", "not urgent", "phone"]
    for empty in ([], "", " , "):
        with pytest.raises(InvalidInput, match="no candidate labels"):
            zeroshot.candidate_labels(empty)


def test_hypotheses_place_each_label_in_the_template():
    assert zeroshot.hypotheses(["sports", "news"], None) == ["This example is sports.", "This example is news."]
    assert zeroshot.hypotheses(["x"], "about {} !") == ["about x !"]
    assert zeroshot.hypotheses(["x"], "{0} and {0}") == ["x and x"]
    for bad in ("no slot", "{label}", "{0} {1}", "{", "}{"):
        with pytest.raises(InvalidInput, match="does not place the label"):
            zeroshot.hypotheses(["x"], bad)


@pytest.mark.parametrize(("labels", "index"), [
    (["contradiction", "neutral", "entailment"], 2),
    (["ENTAILMENT", "neutral", "CONTRADICTION"], 0),
    (["not_entailment", "entailment"], 1),  # starts with: "not_entailment" is not it
    (["Entails", "entailment"], 0),  # the first one
    (["negative", "neutral", "positive"], None),
    (["LABEL_0", "LABEL_1"], None),
])
def test_the_entailment_label_is_found_as_transformers_finds_it(labels, index):
    assert zeroshot.entailment_index(labels) == index
    assert zeroshot.takes_candidate_labels(labels) == (index is not None)


def served(labels, name="nli"):
    return SimpleNamespace(name=name, version=3, config=SimpleNamespace(labels=labels))


def test_a_model_without_an_entailment_label_is_a_422_naming_it_and_its_labels():
    assert zeroshot.check_model(served(["contradiction", "neutral", "entailment"])) == 2
    with pytest.raises(InvalidInput) as refused:
        zeroshot.check_model(served(["negative", "neutral", "positive"], "sentiment"))
    assert "model sentiment (version 3) cannot classify zero-shot" in refused.value.message
    assert "(negative, neutral, positive)" in refused.value.message
    with pytest.raises(InvalidInput):  # one label: nothing to weigh entailment against
        zeroshot.check_model(served(["entailment"]))


def pipeline_postprocess(logits: np.ndarray, labels: list[str], entailment: int, multi_label: bool) -> dict:
    """transformers' own ZeroShotClassificationPipeline.postprocess on one text's logits [labels, classes]."""
    torch = pytest.importorskip("torch")
    from transformers.pipelines.zero_shot_classification import ZeroShotClassificationPipeline

    fake = SimpleNamespace(framework="pt", entailment_id=entailment)
    outputs = [{"candidate_label": label, "sequence": "s", "logits": torch.tensor(row[None, :])}
               for label, row in zip(labels, logits, strict=True)]
    return ZeroShotClassificationPipeline.postprocess(fake, outputs, multi_label=multi_label)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("entailment", [0, 1, 2])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_scores_and_order_are_the_pipelines(multi_label, entailment, count):
    rng = np.random.default_rng(count * 10 + entailment)
    logits = (rng.normal(size=(2, count, 3)) * 4).astype(np.float32)
    labels = [f"label {i}" for i in range(count)]
    scores = zeroshot.combine(logits, entailment, multi_label)
    assert scores.shape == (2, count) and scores.dtype == np.float32
    for row, text_logits in zip(scores, logits, strict=True):
        expected = pipeline_postprocess(text_logits, labels, entailment, multi_label)
        _, ranked_labels, ranked_scores = zeroshot.ranked(labels, row)
        assert ranked_labels == expected["labels"]
        np.testing.assert_allclose(ranked_scores, expected["scores"], atol=1e-6)
    if not multi_label and count > 1:
        np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-6)


def test_contradiction_is_label_0_or_the_last_when_entailment_is_0():
    logits = np.array([[[1.0, 5.0, 2.0]]], dtype=np.float32)  # one text, one label: entailment vs contradiction
    def expected(entail, contra): return np.exp(entail) / (np.exp(entail) + np.exp(contra))
    np.testing.assert_allclose(zeroshot.combine(logits, 2, True)[0, 0], expected(2.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(zeroshot.combine(logits, 1, True)[0, 0], expected(5.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(zeroshot.combine(logits, 0, True)[0, 0], expected(1.0, 2.0), rtol=1e-6)


def test_large_logits_do_not_overflow():
    logits = np.array([[[-200.0, 0.0, 300.0], [-200.0, 0.0, 100.0]]], dtype=np.float32)
    single = zeroshot.combine(logits, 2, False)
    assert np.isfinite(single).all() and single[0, 0] == pytest.approx(1.0)
    assert np.isfinite(zeroshot.combine(logits, 2, True)).all()


def test_ranking_is_best_first_with_duplicates_answered_twice():
    order, labels, scores = zeroshot.ranked(["a", "b", "a", "c"], np.array([0.1, 0.5, 0.1, 0.3], dtype=np.float32))
    assert labels[:2] == ["b", "c"] and labels[2:] == ["a", "a"] and order[:2] == [1, 3]
    assert scores == sorted(scores, reverse=True)


def test_distinct_keeps_first_seen_order():
    assert zeroshot.distinct(["b", "a", "b", "c"]) == (["b", "a", "c"], [0, 1, 0, 2])


def test_sizes_are_bounded_by_the_setting_named():
    zeroshot.check_sizes(4, 64, 32, 256)
    with pytest.raises(InvalidInput, match=r"4 text\(s\) × 65 candidate label\(s\) = 260 sequences to score; the "
                       r"limit is 256 \(BERTSERVE_MAX_REQUEST_SEQUENCES\)"):
        zeroshot.check_sizes(4, 65, 32, 256)
    with pytest.raises(InvalidInput, match="33 inputs in one request; the limit is 32"):
        zeroshot.check_sizes(33, 1, 32, 256)


# ---- /predict ----

def test_predict_reads_zero_shot_parameters_and_answers_the_pipeline_shape():
    one = parse_predict(b'{"inputs": "t", "parameters": {"candidate_labels": ["a", "b"], "multi_label": true}}')
    assert zero_shot(one)
    scores = np.array([[0.2, 0.8]], dtype=np.float32)
    answer = encode_zero_shot(one, ["a", "b"], scores)
    assert answer["sequence"] == "t" and answer["labels"] == ["b", "a"]
    assert answer["scores"] == pytest.approx([0.8, 0.2])
    many = parse_predict(b'{"inputs": ["t", "u"], "parameters": {"candidate_labels": "a, b"}}')
    assert zero_shot(many)
    answers = encode_zero_shot(many, ["a", "b"], np.array([[0.9, 0.1], [0.3, 0.7]], dtype=np.float32))
    assert [a["labels"] for a in answers] == [["a", "b"], ["b", "a"]]
    assert not zero_shot(parse_predict(b'{"inputs": "t", "parameters": {"top_k": 1}}'))
    # The Inference API client sends these; null is its "unset".
    assert zero_shot(parse_predict(b'{"inputs": "t", "parameters": {"candidate_labels": ["a"], '
                                   b'"multi_label": false, "hypothesis_template": null}}'))


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": [["p", "h"]], "parameters": {"candidate_labels": ["a"]}}', "takes texts, not pairs"),
    (b'{"inputs": {"text": "p", "text_pair": "h"}, "parameters": {"candidate_labels": ["a"]}}', "not pairs"),
    (b'{"inputs": "t", "raw_scores": true, "parameters": {"candidate_labels": ["a"]}}', "raw_scores: not taken"),
    (b'{"inputs": "t", "parameters": {"candidate_labels": ["a"], "top_k": 1}}', "parameters.top_k: not taken"),
    (b'{"inputs": "t", "parameters": {"hypothesis_template": "{}"}}', "zero-shot classification only"),
])
def test_predict_refuses_what_does_not_go_with_zero_shot(body, message):
    with pytest.raises(InvalidInput, match=message):
        zero_shot(parse_predict(body))


# ---- KServe V2 ----

def test_v2_reads_candidate_labels_and_its_parameters():
    req = v2.request({"text": ["t", "u"], "candidate_labels": ["a", "b", "c"]},
                     {"hypothesis_template": "about {}", "multi_label": True}, None, None, "nli")
    assert (req.texts, req.candidate_labels, req.hypothesis_template, req.multi_label) == (
        ["t", "u"], ["a", "b", "c"], "about {}", True)
    assert [w.name for w in req.outputs] == ["label", "labels", "scores"]
    plain = v2.request({"text": ["t"]}, None, None, None, "m")
    assert plain.candidate_labels is None and [w.name for w in plain.outputs] == ["label", "scores"]


@pytest.mark.parametrize(("columns", "params", "outputs", "message"), [
    ({"text": ["t"], "text_pair": ["h"], "candidate_labels": ["a"]}, None, None, "takes texts, not pairs"),
    ({"text": ["t"]}, {"multi_label": True}, None, "zero-shot classification only"),
    ({"text": ["t"]}, {"hypothesis_template": "{}"}, None, "zero-shot classification only"),
    ({"text": ["t"], "candidate_labels": ["a"]}, {"multi_label": 1}, None, "parameters.multi_label must be true"),
    ({"text": ["t"], "candidate_labels": ["a"]}, {"hypothesis_template": 3}, None, "must be a string"),
    ({"text": ["t"], "candidate_labels": ["a"]}, {"function_to_apply": "softmax"}, None, "not taken with"),
    ({"text": ["t"]}, None, [("labels", {})], "comes with 'candidate_labels' only"),
    ({"candidate_labels": ["a"]}, None, None, "input 'text' is missing"),
])
def test_v2_refuses_what_does_not_go_with_zero_shot(columns, params, outputs, message):
    with pytest.raises(InvalidInput, match=message):
        v2.request(columns, params, outputs, None, "nli")


def test_v2_zero_shot_outputs_are_each_texts_labels_best_first():
    found = zeroshot.ZeroShot(served(["contradiction", "entailment"]), ["a", "b", "c"],
                              np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=np.float32))
    wanted = [v2.Wanted("label", False), v2.Wanted("labels", False), v2.Wanted("scores", True)]
    label, labels, scores = v2.zero_shot_outputs(found, wanted)
    assert (label.shape, label.values) == ([2], ["b", "a"])
    assert (labels.datatype, labels.shape, labels.values) == ("BYTES", [2, 3], ["b", "c", "a", "a", "c", "b"])
    assert scores.datatype == "FP32" and scores.shape == [2, 3] and scores.binary
    np.testing.assert_allclose(scores.values, [[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    [top] = v2.zero_shot_outputs(found, [v2.Wanted("scores", False, classification=2)])
    assert top.shape == [2, 2] and top.values == ["0.500000:1:b", "0.300000:2:c", "0.600000:0:a", "0.300000:2:c"]
