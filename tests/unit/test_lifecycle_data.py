"""Reading training/evaluation tables and the one-line errors for bad ones. No torch needed."""

from __future__ import annotations

import pytest

from app.lifecycle import LifecycleError
from app.lifecycle.data import (
    DEMO_LABELS,
    check_trainable,
    clean_review,
    demo_split,
    label_order,
    read_labelled,
    read_table,
)


def test_csv_and_tsv_by_extension_and_sniffed(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"hello, world",pos\nbye,neg\n')
    (tmp_path / "b.tsv").write_text("text\tlabel\nhello, world\tpos\n")
    (tmp_path / "c.data").write_text("text\tlabel\nhello, world\tpos\nbye\tneg\n")
    assert read_labelled(tmp_path / "a.csv", "text", "label") == (["hello, world", "bye"], ["pos", "neg"])
    assert read_table(tmp_path / "b.tsv") == [{"text": "hello, world", "label": "pos"}]
    assert read_labelled(tmp_path / "c.data", "text", "label")[1] == ["pos", "neg"]


@pytest.mark.parametrize(
    "content, columns, message",
    [
        (None, ("text", "label"), "cannot read"),
        ("text,label\n", ("text", "label"), "no data rows"),
        ("review,rating\nok,1\n", ("text", "rating"), "no column 'text'; the columns are 'review', 'rating'"),
        ("text,label\n,\n", ("text", "label"), "every row has an empty"),
        (b"\xff\xfe\x00garbage", ("text", "label"), "not UTF-8"),
    ],
)
def test_bad_tables_say_what_to_change(tmp_path, content, columns, message):
    path = tmp_path / "data.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(LifecycleError, match=message) as info:
        read_labelled(path, *columns)
    assert "\n" not in str(info.value)


def test_training_needs_two_classes_with_two_examples_each():
    with pytest.raises(LifecycleError, match="only one class"):
        check_trainable(["a", "a", "a"], "x.csv")
    with pytest.raises(LifecycleError, match=r"\['b'\] have a single example"):
        check_trainable(["a", "a", "b"], "x.csv")
    check_trainable(["a", "b", "a", "b"], "x.csv")


def test_label_order_is_numeric_for_numbers():
    assert label_order(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert label_order(["positive", "negative", "neutral"]) == DEMO_LABELS


def test_reviews_are_unescaped_and_unquoted():
    assert clean_review('"I&#039;ve been on it &amp; it works"') == "I've been on it & it works"


def test_demo_data_has_600_train_and_379_test_reviews():
    train_texts, train_labels = demo_split("train")
    test_texts, test_labels = demo_split("test")
    assert (len(train_texts), len(test_texts)) == (600, 379)
    assert set(train_labels) == set(test_labels) == set(DEMO_LABELS)
    assert not any("&#039;" in t or t.startswith('"') for t in train_texts + test_texts)


def test_a_text_pair_column_makes_each_row_a_pair(tmp_path):
    """--text-pair-column: rows are (text, text_pair) tuples, as app.tokenizer.TextInput; a row missing either text
    is dropped as a row missing its text is."""
    from app.lifecycle.data import read_examples, read_gate_data, read_texts

    path = tmp_path / "nli.csv"
    path.write_text("premise,hypothesis,label\na cat sleeps,an animal rests,entailment\n,no premise,neutral\n"
                    "a dog barks,,neutral\nit rains,it is dry,contradiction\n")
    assert read_labelled(path, "premise", "label", "hypothesis") == (
        [("a cat sleeps", "an animal rests"), ("it rains", "it is dry")], ["entailment", "contradiction"])
    assert read_labelled(path, "premise", "label") == (
        ["a cat sleeps", "a dog barks", "it rains"], ["entailment", "neutral", "contradiction"])
    assert read_texts(path, "premise", "hypothesis") == [("a cat sleeps", "an animal rests"), ("it rains", "it is dry")]
    labels = ["contradiction", "entailment", "neutral"]
    assert read_examples(path, "premise", "label", labels, "hypothesis")[1] == [1, 0]
    data = read_gate_data([path], "premise", "label", labels, "hypothesis")
    assert data.texts == [("a cat sleeps", "an animal rests"), ("it rains", "it is dry")] and data.truth == [1, 0]
    # a head other than single-label: labels are not class names, not read
    assert read_gate_data([path], "premise", "label", None, "hypothesis").truth is None
    with pytest.raises(LifecycleError, match="no column 'document'"):
        read_labelled(path, "premise", "label", "document")
    (tmp_path / "t.txt").write_text("one\ntwo\n")
    with pytest.raises(LifecycleError, match="a .txt file holds single texts"):
        read_texts(tmp_path / "t.txt", "text", "hypothesis")


def test_no_lifecycle_module_builds_settings_from_the_environment():
    """The CLI builds Settings (app.lifecycle.commands) and passes them: lifecycle code never reads BERTSERVE_*."""
    from pathlib import Path

    import app.lifecycle

    folder = Path(app.lifecycle.__file__).parent
    assert [p.name for p in folder.glob("*.py") if "Settings(" in p.read_text()] == []


def test_a_bad_setting_stops_evaluate_in_one_line(tmp_path, monkeypatch, capsys):
    from app.cli import main as cli

    monkeypatch.setenv("BERTSERVE_WORKERS", "many")
    with pytest.raises(SystemExit) as exit_info:
        cli(["evaluate", "m", "--data", str(tmp_path / "d.csv"), "--model-repository", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("bertserve: bad setting BERTSERVE_WORKERS")
