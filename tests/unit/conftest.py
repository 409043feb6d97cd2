"""Fixtures of the unit layer (shared helpers: tests/support/)."""

from __future__ import annotations

import shutil

import pytest

from tests.support.golden import write_tiny_golden
from tests.support.tiny import _bert_tokenizer, _roberta_tokenizer


@pytest.fixture(scope="module", params=["bert", "roberta"])
def tokenizer_file(request, tmp_path_factory):
    """The tiny BERT (WordPiece) and RoBERTa (byte-level BPE) tokenizers' tokenizer.json, one after the other."""
    path = tmp_path_factory.mktemp(request.param)
    (_bert_tokenizer if request.param == "bert" else _roberta_tokenizer)(path)
    return path / "tokenizer.json"


@pytest.fixture
def golden_model(tiny_model_repo, tmp_path):
    """The tiny model with golden outputs, as `bertserve export` writes them (reference: its own fp32 graph)."""
    path = tmp_path / "golden" / "1"
    shutil.copytree(tiny_model_repo / "tiny" / "1", path)
    write_tiny_golden(path)
    return path
