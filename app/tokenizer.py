"""Fast (Rust) tokenizer: batch encoding with explicit truncation, and padding into engine arrays.

A text is never encoded far past what the model can read: a long text is encoded from a prefix (see
TextTokenizer._encode), so the cost of a request is bounded by max_length, not by the bytes sent."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

# Where a text may be cut with the words before the cut tokenized as in the whole text: the whitespace every
# BERT-family pre-tokenizer splits on (not Python's \s, which takes in control characters that BERT's normalizer
# deletes, joining the words around them).
BREAK = re.compile(r"[ \t\n\r]")
CHARS_PER_TOKEN = 16  # the first prefix tried: max_length x this many characters (English runs ~4-5 per token)
GROWTH = 4  # a prefix that does not fill max_length is tried again this many times longer...
MAX_CHARS_PER_TOKEN = 512  # ...up to max_length x this many characters: past them nothing more is read
SLACK = 256  # a prefix ends at a word break within this many characters of its bound, else at the bound itself


@dataclass(slots=True)
class Encoded:
    ids: list[int]
    truncated: bool


class TextTokenizer:
    def __init__(self, path: Path, max_length: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        # tokenizer.json files saved by transformers carry stale padding/truncation settings: set both here.
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.prefix_chars = max_length * CHARS_PER_TOKEN
        self.max_chars = max_length * MAX_CHARS_PER_TOKEN
        self.pad_id = self._tokenizer.padding["pad_id"] if self._tokenizer.padding else self._find_pad_id()

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Tokenize a batch in parallel (the Rust side releases the GIL). Truncates to max_length."""
        if all(len(text) <= self.prefix_chars for text in texts):  # the usual case: one plain call
            return [Encoded(e.ids, bool(e.overflowing)) for e in self._tokenizer.encode_batch(texts)]
        return [Encoded(e.ids, bool(e.overflowing) or read < len(text))
                for text, (e, read) in zip(texts, self._encode(texts), strict=True)]

    def read(self, texts: list[str]) -> list[int]:
        """Per text, how many of its characters the model reads: all, or up to the end of the last token that
        fits in max_length."""
        return [_read(e) if e.overflowing else read for e, read in self._encode(texts)]

    def _encode(self, texts: list[str]) -> list[tuple[Encoding, int]]:
        """The encodings of the texts, truncated to max_length, and the length of the prefix each was computed
        from. A text longer than prefix_chars is cut at the first word break past that bound (or at the bound
        when none comes within SLACK characters: CJK, long runs without spaces) and the prefix encoded. If the
        prefix already overflows max_length, the tokens kept are those of the whole text — the words before a
        break tokenize the same whatever follows, and a cut elsewhere is accepted only when the tokens kept end
        SLACK characters before it — else a prefix GROWTH times longer is tried, up to max_chars. So a text
        costs about max_length tokens however long it is, and the ids are a full encode's whenever what the model
        reads lies in the first max_chars characters (a text that packs fewer than max_length tokens into them —
        runs of spaces, words of hundreds of letters — is read from those characters only, and counts as
        truncated)."""
        limit = self.prefix_chars
        out: list[tuple[Encoding, int] | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        while todo:
            last = limit >= self.max_chars
            cuts = [_prefix(texts[k], limit) for k in todo]
            left = []
            for k, (cut, forced), encoding in zip(todo, cuts, self._tokenizer.encode_batch([c for c, _ in cuts]),
                                                  strict=True):
                whole = len(cut) == len(texts[k])
                if last or whole or (encoding.overflowing and (not forced or _read(encoding) <= len(cut) - SLACK)):
                    out[k] = encoding, len(cut)
                else:
                    left.append(k)
            todo, limit = left, min(limit * GROWTH, self.max_chars)
        return out


def _read(encoding: Encoding) -> int:
    """Where the tokens an encoding keeps end in its text (characters)."""
    return max(end for _, end in encoding.offsets)


def _prefix(text: str, limit: int) -> tuple[str, bool]:
    """The text up to its first word break at or past `limit` characters, else up to `limit` (forced: True) when
    no break comes within SLACK; all of it when it is that short."""
    if len(text) <= limit:
        return text, False
    found = BREAK.search(text, limit, limit + SLACK)
    return (text[:found.start()], False) if found else (text[:limit], True)


def pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as int64 arrays."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max())
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return input_ids, attention_mask
