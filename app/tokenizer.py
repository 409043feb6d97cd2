"""Fast (Rust) tokenizer: batch encoding with explicit truncation, and padding into engine arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


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
        self.pad_id = self._tokenizer.padding["pad_id"] if self._tokenizer.padding else self._find_pad_id()

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Tokenize a batch in parallel (the Rust side releases the GIL). Truncates to max_length."""
        return [Encoded(e.ids, bool(e.overflowing)) for e in self._tokenizer.encode_batch(texts)]


def pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as int64 arrays."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max())
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return input_ids, attention_mask
