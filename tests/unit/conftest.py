"""Fixtures of the unit layer (shared helpers: tests/support/)."""

from __future__ import annotations

import pytest

from tests.support.tiny import _bert_tokenizer, _roberta_tokenizer


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizer_file(request, tmp_path_factory):
    """The tiny BERT (WordPiece) and RoBERTa (byte-level BPE) tokenizers' tokenizer.json, one after the other."""
    path = tmp_path_factory.mktemp(request.param)
    (_bert_tokenizer if request.param == "bert" else _roberta_tokenizer)(path)
    return path / "tokenizer.json"
