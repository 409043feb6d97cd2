"""Explanations by occlusion, as pure functions: the words of a text with their character offsets, their grouping
into at most `max_features` features, the variants of the text with one feature left out, and each feature's
weight — how much the explained label's probability drops without it.

A word is a run of non-space characters (punctuation stays with its word: "great!" is one feature). Only what the
model reads is explained: a text longer than its max_length is first cut after the word where the model stops
reading (`read_part`), so every variant is at most that long and the rest of the text costs nothing. Many words
are cut into consecutive groups of about equal word counts, so the cost stays one engine pass over
`features + 1` sequences of at most max_length tokens, whatever the length. Occlusion measures what the model
loses without a word, in the context of the others; it is not a gradient and not a causal claim, and words that
only matter together (a negation and its verb) may each look unimportant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from app.tokenizer import BREAK, SLACK

WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Feature:
    """Consecutive words [start, end) of the original text (character offsets), and how many."""

    start: int
    end: int
    words: int


def features(text: str, max_features: int) -> list[Feature]:
    """The text's words, or, past `max_features` words, that many groups of consecutive words (sizes differing by
    at most one, the larger ones first)."""
    spans = [m.span() for m in WORD.finditer(text)]
    count = min(len(spans), max_features)
    size, extra = divmod(len(spans), count) if count else (0, 0)
    groups, first = [], 0
    for k in range(count):
        last = first + size + (k < extra)
        groups.append(Feature(spans[first][0], spans[last - 1][1], last - first))
        first = last
    return groups


def read_part(text: str, read: int) -> str:
    """The text up to the word break at or after `read` characters (what the model reads, app.tokenizer): the
    word it stops reading in is kept whole, so this part tokenizes as the whole text does, up to max_length.
    Where no break comes within SLACK characters (CJK, a long run without spaces) it ends at `read`."""
    found = BREAK.search(text, read, read + SLACK)
    return text[:found.start()] if found else text[:read]


def occluded(text: str, feature: Feature) -> str:
    """The text without the feature (the spaces around it are left: the tokenizer drops them)."""
    return text[:feature.start] + text[feature.end:]


def weights(full: np.ndarray, without: np.ndarray, label: int) -> list[float]:
    """Per feature: the explained label's probability with the whole text minus without that feature."""
    return (float(full[label]) - without[:, label]).tolist()
