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
