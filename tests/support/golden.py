"""Golden outputs for a tiny model version, as `bertserve export` writes them (reference: its own fp32 graph)."""

from __future__ import annotations

import itertools

from app.engine import Engine
from app.loader import score_texts
from app.repository import Golden, read_config, write_golden
from app.served import ServedModel
from app.tokenizer import TextTokenizer
from tests.support.tiny import CORPUS

FAST = {"batch_autotune": False}
TEXTS = [" ".join(words) for words in itertools.islice(itertools.permutations(CORPUS, 2), 40)] + CORPUS


def fp32_probabilities(path, texts):
    config = read_config(path)
    model = ServedModel("ref", 1, path, config, TextTokenizer(path / "tokenizer.json", config.max_length),
                        [Engine(path, config, "cpu", config.artifacts_for("cpu")[-1])])
    return score_texts(model, texts, 8)[0]


def write_tiny_golden(path, min_agreement=0.97, max_prob_diff=0.25):
    write_golden(path, Golden(texts=TEXTS, probabilities=fp32_probabilities(path, TEXTS).tolist(),
                              min_agreement=min_agreement, max_prob_diff=max_prob_diff))
