"""`--augment K` of distill and prune: K variants of each training text, labelled by the teacher alone.

A student that learns only from a few hundred texts sees the teacher's behaviour on few inputs; variants show it
more of that behaviour (Tang et al. 2019, "Distilling task-specific knowledge from BERT into simple neural
networks", whose variants only have to be plausible inputs, not correct examples: the teacher labels them). Each
variant applies, with the probabilities below, operations named in `ops`:

- replace: each word, with probability 0.1, becomes a word drawn from the training texts' own vocabulary (by
  frequency; Tang et al. draw a word of the same part of speech -- the data's vocabulary needs no tagger);
- dropout: each word, with probability 0.1, is dropped (Tang et al.'s masking, without a mask token the served
  texts never have);
- ngram: with probability 0.25, only a window of the words is kept (n-gram sampling; reviews are long, so the
  window is 30-100 % of the text rather than 1-5 words);
- mix: with probability 0.25, the text's later sentences are swapped for sentences of another review.

Seeded: the same texts, K, seed and ops give the same variants, in order (text 1's K variants, then text 2's ...).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import accumulate

OPS = ("replace", "dropout", "ngram", "mix")
P_WORD = 0.1
P_TEXT = 0.25
SENTENCE = re.compile(r"(?<=[.!?])\s+")


def check_ops(ops) -> tuple[str, ...]:
    unknown = sorted(set(ops) - set(OPS))
    if unknown or not ops:
        from app.lifecycle import LifecycleError

        raise LifecycleError(f"--augment-ops {' '.join(ops)}: choose among {', '.join(OPS)}")
    return tuple(ops)


def variants(texts: list[str], k: int, seed: int, ops=OPS) -> list[str]:
    """K variants of each text, in text order (see the module docstring). A variant equal to its text or empty is
    drawn again (up to 20 tries), so that the teacher labels new inputs."""
    ops = check_ops(ops)
    rng = random.Random(seed)
    counts = Counter(word for text in texts for word in text.split())
    vocabulary, weights = list(counts), list(accumulate(counts.values()))
    sentences = [SENTENCE.split(text.strip()) for text in texts]
    out = []
    for index, text in enumerate(texts):
        for _ in range(k):
            for _try in range(20):
                variant = one_variant(text, index, rng, ops, vocabulary, weights, sentences)
                if variant and variant != text:
                    break
            out.append(variant or text)
    return out


def one_variant(text: str, index: int, rng: random.Random, ops, vocabulary, weights, sentences) -> str:
    if "mix" in ops and len(sentences) > 1 and rng.random() < P_TEXT:
        own = sentences[index]
        j = rng.randrange(len(sentences) - 1)
        other = sentences[j + (j >= index)]  # any review but this one
        cut = rng.randint(1, max(1, len(own) - 1)) if len(own) > 1 else 1
        start = rng.randrange(len(other))
        text = " ".join(own[:cut] + other[start:start + max(1, len(own) - cut)])
    words = text.split()
    if "replace" in ops or "dropout" in ops:
        kept = []
        for word in words:
            roll = rng.random()
            if "dropout" in ops and roll < P_WORD:
                continue
            if "replace" in ops and P_WORD <= roll < 2 * P_WORD:
                word = rng.choices(vocabulary, cum_weights=weights)[0]
            kept.append(word)
        words = kept
    if "ngram" in ops and len(words) > 3 and rng.random() < P_TEXT:
        n = rng.randint(max(1, int(0.3 * len(words))), len(words))
        start = rng.randint(0, len(words) - n)
        words = words[start:start + n]
    return " ".join(words)
