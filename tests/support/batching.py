"""A fake model for the batcher alone, on plain asyncio: no HTTP, no onnxruntime."""

from __future__ import annotations

import threading

from app.batching import Batcher
from app.tokenizer import Encoded


class FakeModel:
    """Tokens = words; the 'logits' row of a sequence is its text, so answers can be matched to callers.
    infer() blocks until released when gated, to pile requests up behind a running batch."""

    max_length = 8

    def __init__(self, gated: bool = False) -> None:
        self.batches: list[list[int]] = []  # lengths of the sequences of each batch, in batch order
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()

    def encode(self, texts: list[str]) -> list[Encoded]:
        out = []
        for text in texts:
            words = text.split()
            out.append(Encoded([hash(w) % 1000 for w in words[: self.max_length]], len(words) > self.max_length))
        return out

    def infer(self, sequences: list[list[int]]) -> list[tuple[int, ...]]:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append([len(s) for s in sequences])
        return [tuple(s) for s in sequences]


def make(model: FakeModel, **limits) -> Batcher:
    """A started batcher on `model` (4 sequences, 64 tokens a batch; 100 queued), `limits` overriding."""
    settings = dict(max_batch_size=4, max_batch_tokens=64, max_queue_size=100) | limits
    batcher = Batcher(model, name="fake", **settings)
    batcher.start()
    return batcher
