"""Token-classification (NER) data: CoNLL and JSONL readers and their one-line errors, BIO tags from character
spans, labels aligned to the first sub-word of each word on a real (tiny) fast tokenizer, the demo's distant labels,
and the entity figures as seqeval computes them."""

from __future__ import annotations

import json

import pytest

from app.lifecycle import LifecycleError
from app.lifecycle.data import (
    SpanText,
    TaggedWords,
    debris,
    demo_ner_split,
    distant_example,
    example_types,
    read_conll,
    read_span_jsonl,
    read_token_data,
    token_label_order,
    word_tags,
)

CONLL = """-DOCSTART- -X- -X- O

my PRP B-NP O
doctor NN I-NP B-PER
changed VBD B-VP O

headache NN B-NP B-COND
and CC O O
zoloft NN B-NP I-DRUG
"""


def test_conll_sentences_tag_in_the_last_column_docstart_skipped(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    sentences = read_conll(path)
    assert [(s.words, s.tags) for s in sentences] == [
        (["my", "doctor", "changed"], ["O", "B-PER", "O"]),
        (["headache", "and", "zoloft"], ["B-COND", "O", "I-DRUG"]),  # an I- after O: accepted (lenient IOB2)
    ]
    assert [s.where for s in sentences] == [f"{path}:3", f"{path}:7"]
    assert read_token_data(path) == sentences  # not .jsonl: CoNLL
    assert example_types(sentences) == ["COND", "DRUG", "PER"]
    (tmp_path / "two.txt").write_text("a O\nb B-X\n\n\n\nc I-X\n")  # two columns; several blank lines
    assert [s.tags for s in read_conll(tmp_path / "two.txt")] == [["O", "B-X"], ["I-X"]]


@pytest.mark.parametrize(
    "content, message",
    [
        ("my O\ndoctor\n", "x.conll:2: 'doctor' has one column; a CoNLL line is a token and its tag"),
        ("my O\ndoctor PER\n", "x.conll:2: tag 'PER' is not O, B-TYPE or I-TYPE"),
        ("my O\n\ndoctor S-PER\n", "x.conll:3: tag 'S-PER' is not O, B-TYPE or I-TYPE"),
        ("my B-\n", "x.conll:1: tag 'B-' is not O"),
        ("-DOCSTART- O\n\n\n", "x.conll: no tagged tokens"),
        (None, "x.conll: cannot read"),
    ],
)
def test_bad_conll_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "x.conll"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LifecycleError) as caught:
        read_conll(path)
    assert str(caught.value).startswith(f"{tmp_path}/{message}")


def test_jsonl_spans_sorted_blank_lines_skipped(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"text": "Zoloft helped my depression.", "entities": [{"start": 17, "end": 27, "label": "COND"},
                                                                     {"start": 0, "end": 6, "label": "DRUG"}]},
            {"text": "No names here."}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    examples = read_token_data(path)
    assert examples == [SpanText(rows[0]["text"], [(0, 6, "DRUG"), (17, 27, "COND")], f"{path}:1"),
                        SpanText("No names here.", [], f"{path}:3")]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "x.jsonl:2: not a JSON object"),
        ('["text"]', 'x.jsonl:2: no "text" string'),
        ('{"text": "abc", "entities": {}}', 'x.jsonl:2: "entities" is not a list'),
        ('{"text": "abc", "entities": [{"start": 0, "end": 2}]}', 'x.jsonl:2: entity {'),
        ('{"text": "abc", "entities": [{"start": "0", "end": 2, "label": "X"}]}', "needs integer"),
        ('{"text": "abc", "entities": [{"start": 1, "end": 4, "label": "X"}]}',
         "x.jsonl:2: entity span [1, 4) is out of range for a text of 3 characters"),
        ('{"text": "abc", "entities": [{"start": 2, "end": 2, "label": "X"}]}', "span [2, 2) is out of range"),
        ('{"text": "abc", "entities": [{"start": 0, "end": 1, "label": "B-X"}]}', "'B-X' is a type"),
        ('{"text": "abcdef", "entities": [{"start": 0, "end": 3, "label": "X"}, {"start": 2, "end": 5, "label": "Y"}]}',
         "x.jsonl:2: entities [0, 3) X and [2, 5) Y overlap"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(LifecycleError, match="x.jsonl") as caught:
        read_span_jsonl(path)
    assert message in str(caught.value)


def test_label_order_is_o_then_sorted_b_i_pairs():
    assert token_label_order(["DRUG", "COND", "DRUG"]) == ["O", "B-COND", "I-COND", "B-DRUG", "I-DRUG"]


def test_word_tags_from_spans():
    words = [(0, 4), (5, 10), (11, 18), (19, 23), (24, 30)]  # "high blood pressure with lisinopril"-like ranges
    spans = [(0, 18, "COND"), (24, 30, "DRUG")]
    assert word_tags(spans, words) == ["B-COND", "I-COND", "I-COND", "O", "B-DRUG"]
    assert word_tags([(0, 4, "A"), (5, 10, "A")], words[:2]) == ["B-A", "B-A"]  # two entities side by side
    assert word_tags([(2, 3, "A")], words[:2]) == ["B-A", "O"]  # a span inside a word tags the word


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tests.support.tiny import _bert_tokenizer

    return _bert_tokenizer(tmp_path_factory.mktemp("tok"))


def test_conll_words_first_subword_labelled_rest_ignored(tokenizer):
    from app.lifecycle.train import IGNORED, align, token_labels

    example = TaggedWords(["my", "doctor", "changed", "zoloft", "dose"], ["O", "B-PER", "O", "B-DRUG", "O"], "f:1")
    aligned = align(tokenizer, example, 64)
    tokens = tokenizer.convert_ids_to_tokens(aligned.ids)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens.index("z") == 4 and tokens[5].startswith("##")  # zoloft: several sub-words in the tiny vocabulary
    assert aligned.firsts == [1, 2, 3, 4, len(tokens) - 2] and aligned.tags == example.tags and not aligned.cut
    label2id = {name: i for i, name in enumerate(token_label_order(["DRUG", "PER"]))}
    labels = token_labels(aligned, label2id, "f:1")
    assert labels[0] == labels[-1] == IGNORED  # special tokens
    assert labels[5 : len(tokens) - 2] == [IGNORED] * (len(tokens) - 7)  # zoloft's later sub-words
    assert [labels[p] for p in aligned.firsts] == [0, label2id["B-PER"], 0, label2id["B-DRUG"], 0]
    with pytest.raises(LifecycleError, match="f:1: tag 'B-PER' is not one of the model's labels"):
        token_labels(aligned, {"O": 0, "B-DRUG": 1, "I-DRUG": 2}, "f:1")


def test_jsonl_spans_become_word_tags_by_offsets(tokenizer):
    from app.lifecycle.train import align

    text = "My doctor gave me Zoloft, for my headache nausea."
    start = text.index("headache")
    example = SpanText(text, [(text.index("Zoloft"), text.index("Zoloft") + 6, "DRUG"),
                              (start, start + len("headache nausea"), "COND")], "f:1")
    aligned = align(tokenizer, example, 64)
    words = [tokenizer.convert_ids_to_tokens(aligned.ids[p]) for p in aligned.firsts]
    assert words == ["my", "doctor", "g", "m", "z", ",", "f", "my", "headache", "nausea", "[UNK]"]  # "." unseen
    assert aligned.tags == ["O", "O", "O", "O", "B-DRUG", "O", "O", "O", "B-COND", "I-COND", "O"]
    cut = align(tokenizer, example, 8)  # truncated: only the words that fit are kept
    assert cut.cut and len(cut.ids) == 8 and cut.tags == aligned.tags[: len(cut.firsts)]


def test_distant_labels_case_insensitive_on_word_boundaries():
    example = distant_example("I took ZOLOFT for depression; zolofts? No. Zoloft-XR.", "Zoloft", "Depression", "r")
    text = example.text
    assert [(text[s:e], label) for s, e, label in example.spans] == [
        ("ZOLOFT", "DRUG"), ("depression", "COND"), ("Zoloft", "DRUG")]  # not "zolofts"; "Zoloft-XR" ends at '-'
    assert distant_example("It helped.", "Zoloft", "Depression", "r").spans == []  # names neither: all O
    helpful = '3</span> users found this comment helpful.'
    assert debris(helpful) and not debris("Birth Control")
    assert distant_example("users found this comment helpful", "X", helpful, "r").spans == []
    # overlapping mentions: the longer wins at one start
    assert distant_example("Acne Free cleared my acne", "Acne Free", "Acne", "r").spans == [
        (0, 9, "DRUG"), (21, 25, "COND")]


def test_demo_distant_labels():
    train, test = demo_ner_split("train"), demo_ner_split("test")
    assert (len(train), len(test)) == (600, 379)
    named = [sum(any(label == kind for *_, label in e.spans) for e in train) for kind in ("DRUG", "COND")]
    assert named == [186, 154]  # distant supervision: most reviews name neither verbatim
    assert sum(not e.spans for e in train) > 300
    assert train[0].where == "drugsComTrain.tsv row 1"


def test_token_figures_are_seqevals():
    from seqeval.metrics import accuracy_score, classification_report

    from app.lifecycle.evaluate import token_figures

    truth = [["B-DRUG", "I-DRUG", "O", "B-COND"], ["O", "B-COND", "I-COND", "O", "B-DRUG"]]
    predicted = [["B-DRUG", "I-DRUG", "O", "O"], ["O", "I-COND", "I-COND", "O", "B-COND"]]  # I- starts one (lenient)
    figures = token_figures(truth, predicted)
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    assert figures["micro_f1"] == round(report["micro avg"]["f1-score"], 4)
    assert figures["macro_f1"] == round(report["macro avg"]["f1-score"], 4)
    assert figures["per_type"]["COND"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert figures["per_type"]["DRUG"]["recall"] == 0.5 and figures["entities"] == 4
    assert figures["accuracy"] == round(accuracy_score(truth, predicted), 4)
    with pytest.raises(ValueError):
        token_figures(truth, predicted[:1])
    nothing = token_figures([["O", "O"]], [["O", "O"]])  # no entity anywhere: zeros, no NaN
    assert (nothing["micro_f1"], nothing["macro_f1"], nothing["accuracy"], nothing["per_type"]) == (0.0, 0.0, 1.0, {})
