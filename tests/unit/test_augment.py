"""--augment's variants (app.lifecycle.augment): seeded, in text order, each operation doing what it says."""

from __future__ import annotations

import pytest

from app.lifecycle import LifecycleError
from app.lifecycle.augment import variants

TEXTS = [
    "The pills worked well. I slept all night. No side effects at all.",
    "Terrible headache after two days. Stopped taking it. Would not recommend.",
    "It helped a bit with the pain. The nausea was bad though.",
]


def test_variants_are_seeded_k_per_text_in_order():
    first = variants(TEXTS, 3, seed=7)
    assert first == variants(TEXTS, 3, seed=7)
    assert first != variants(TEXTS, 3, seed=8)
    assert len(first) == 9
    assert all(v and v not in TEXTS for v in first)  # new inputs for the teacher to label


def test_dropout_only_removes_words_in_order():
    for text, variant in zip([t for t in TEXTS for _ in range(4)], variants(TEXTS, 4, seed=1, ops=["dropout"])):
        words, kept = text.split(), variant.split()
        assert len(kept) < len(words)
        it = iter(words)
        assert all(w in it for w in kept)  # a subsequence of the text


def test_replacement_draws_from_the_datas_own_vocabulary():
    vocabulary = {w for t in TEXTS for w in t.split()}
    out = variants(TEXTS, 5, seed=2, ops=["replace"])
    assert all(len(v.split()) == len(t.split()) for v, t in zip(out, [t for t in TEXTS for _ in range(5)]))
    assert {w for v in out for w in v.split()} <= vocabulary


def test_ngram_keeps_one_window_of_the_text():
    for text, variant in zip([t for t in TEXTS for _ in range(6)], variants(TEXTS, 6, seed=3, ops=["ngram"])):
        assert f" {variant} " in f" {text} " and len(variant.split()) >= 0.3 * len(text.split()) - 1


def test_mix_joins_sentences_of_two_reviews():
    sentences = {s for t in TEXTS for s in t.replace(". ", ".|").split("|")}
    out = variants(TEXTS, 6, seed=4, ops=["mix"])
    for variant, own in zip(out, [t for t in TEXTS for _ in range(6)]):
        parts = variant.replace(". ", ".|").split("|")
        assert set(parts) <= sentences
        assert parts[0] in own and any(p not in own for p in parts[1:])  # starts as itself, ends as another


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(LifecycleError, match="choose among replace, dropout, ngram, mix"):
        variants(TEXTS, 1, seed=0, ops=["shuffle"])
