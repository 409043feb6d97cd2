"""`bertserve train --task token-classification` on CoNLL and JSONL data: a tiny random BERT trained a few steps,
saved as a *ForTokenClassification checkpoint transformers reloads with its labels; `bertserve evaluate
--checkpoint` reports seqeval's own figures on the same predictions."""

from __future__ import annotations

import json
import os

import pytest

from app.cli import main
from tests.support.tiny import make_tiny_checkpoint

pytestmark = pytest.mark.slow

SENTENCES = [
    [("my", "O"), ("doctor", "B-PER"), ("changed", "O"), ("the", "O"), ("dose", "O")],
    [("headache", "B-COND"), ("nausea", "I-COND"), ("and", "O"), ("dizziness", "B-COND")],
    [("this", "O"), ("medicine", "B-DRUG"), ("worked", "O"), ("wonders", "O")],
]
TEXTS = [
    ("my doctor changed the dose after two weeks", [(3, 9, "PER")]),
    ("headache nausea and dizziness every single day", [(0, 15, "COND"), (20, 29, "COND")]),
    ("this medicine worked wonders", [(5, 13, "DRUG")]),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny")


def write_conll(path):
    lines = ["-DOCSTART- -X- O", ""]
    for _ in range(6):
        for sentence in SENTENCES:
            lines += [f"{word} NN {tag}" for word, tag in sentence] + [""]
    path.write_text("\n".join(lines))
    return path


def write_jsonl(path):
    rows = [{"text": text, "entities": [{"start": s, "end": e, "label": lab} for s, e, lab in spans]}
            for _ in range(6) for text, spans in TEXTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("writer, name", [(write_conll, "train.conll"), (write_jsonl, "train.jsonl")])
def test_train_then_evaluate_a_token_classifier(tmp_path, base, capsys, writer, name):
    from seqeval.metrics import classification_report
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from app.lifecycle.data import read_token_data
    from app.lifecycle.evaluate import evaluate_token_checkpoint
    from app.lifecycle.train import align, predict_word_tags

    data = writer(tmp_path / name)
    output = tmp_path / "ckpt"
    main(["train", "--task", "token-classification", "--data", str(data), "--base", str(base), "--output",
          str(output), "--epochs", "2", "--batch-size", "4", "--max-length", "32", "--learning-rate", "1e-3"])
    printed = capsys.readouterr().out
    assert "validation entity micro-F1" in printed

    labels = ["O", "B-COND", "I-COND", "B-DRUG", "I-DRUG", "B-PER", "I-PER"]
    model = AutoModelForTokenClassification.from_pretrained(output)
    assert type(model).__name__ == "BertForTokenClassification"
    assert model.config.id2label == dict(enumerate(labels))
    assert model.config.label2id == {lab: i for i, lab in enumerate(labels)}
    report = json.loads((output / "report.json").read_text())
    assert report["task"] == "token-classification" and report["labels"] == labels
    assert report["options"]["max_length"] == 32 and report["train_size"] + report["validation_size"] == 18
    assert report["entities"] == {"COND": 12, "DRUG": 6, "PER": 6}
    assert report["data"][0]["file"] == name and {"micro_f1", "accuracy"} <= set(report["validation"])

    figures = evaluate_token_checkpoint(output, data)
    tokenizer = AutoTokenizer.from_pretrained(output)
    aligned = [align(tokenizer, example, 32) for example in read_token_data(data)]
    truth = [a.tags for a in aligned]
    predicted = predict_word_tags(model, aligned, tokenizer.pad_token_id)
    direct = classification_report(truth, predicted, output_dict=True, zero_division=0)
    assert figures["micro_f1"] == round(float(direct["micro avg"]["f1-score"]), 4)
    assert figures["macro_f1"] == round(float(direct["macro avg"]["f1-score"]), 4)
    assert figures["per_type"] == {
        kind: {"precision": round(float(row["precision"]), 4), "recall": round(float(row["recall"]), 4),
               "f1": round(float(row["f1-score"]), 4), "support": int(row["support"])}
        for kind, row in direct.items() if not kind.endswith(" avg")}
    assert figures["max_length"] == 32 and figures["examples"] == 18

    main(["evaluate", "--checkpoint", str(output), "--data", str(data)])
    printed = capsys.readouterr().out
    assert f"entity micro-F1 {figures['micro_f1']:.4f}" in printed and "COND" in printed


def test_bad_token_data_and_sequence_checkpoint_are_one_line(tmp_path, base, capsys):
    bad = tmp_path / "bad.conll"
    bad.write_text("my O\ndoctor\n")
    with pytest.raises(SystemExit) as exited:
        main(["train", "--task", "token-classification", "--data", str(bad), "--base", str(base), "--output",
              str(tmp_path / "out")])
    assert exited.value.code == 1
    assert f"{bad}:2: 'doctor' has one column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(base), "--data", str(write_conll(tmp_path / "d.conll"))])
    assert "not a token classifier" in capsys.readouterr().err
