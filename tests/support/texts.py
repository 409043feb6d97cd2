"""Long and awkward texts, and a tokenizer wrapper that counts what it was given: what an input costs to encode."""

from __future__ import annotations

from tokenizers import Tokenizer

from tests.support.tiny import CORPUS

KIB = 1024


def prose(size: int) -> str:
    text = " ".join(CORPUS) + " "
    return (text * (size // len(text) + 1))[:size]


def awkward_texts() -> list[str]:
    """Long texts whose first few thousand characters hold few tokens, or that break where a cut might go wrong."""
    sentence = " ".join(CORPUS)
    return [
        prose(20 * KIB),
        " " * 5000 + sentence * 40,  # many spaces first
        "\n\t " * 2000 + sentence * 40,
        ("x" * 150 + " ") * 60 + sentence * 40,  # words past WordPiece's 100-character limit: one [UNK] each
        "y" * 5000 + " " + sentence * 40,  # one enormous word
        "我喜欢这个药它很好用" * 3000,  # CJK: no spaces at all
        ("我喜欢这个药 它很好用 " * 2000),
        "😀👍🏽 great 🎉🎉 " * 2000,  # emoji, skin-tone modifiers
        ("word\x1cnext " * 3000),  # a control character BERT's normalizer deletes, joining the words around it
        ("café naïve résumé " * 2000),
        sentence[:60] + " " * 2000 + "ok",  # over the first cut, few tokens: grows to the whole text
        ("a" * 1023 + " " + "great " * 400),  # the first break just past the first bound
    ]


class Counting:
    """A served model's Rust tokenizer, counting the characters it was given and the tokens it made (overflowing
    chunks included: they are made whether read or not)."""

    def __init__(self, inner: Tokenizer) -> None:
        self.inner = inner
        self.chars = self.tokens = 0

    def encode_batch(self, texts, *args, **kwargs):
        out = self.inner.encode_batch(texts, *args, **kwargs)
        self.chars += sum(map(len, texts))
        self.tokens += sum(len(e.ids) + sum(len(o.ids) for o in e.overflowing) for e in out)
        return out

    def encode(self, text, pair=None, *args, **kwargs):
        out = self.inner.encode(text, pair, *args, **kwargs)
        self.chars += len(text) + len(pair or "")
        self.tokens += len(out.ids) + sum(len(o.ids) for o in out.overflowing)
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)
