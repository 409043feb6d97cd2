"""app.tokens, pure: the token-classification rules against transformers' own TokenClassificationPipeline methods
(gather_pre_entities, aggregate, aggregate_overlapping_entities) on the tiny tokenizers and seeded random logits,
and the request checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.errors import InvalidInput
from app.tokens import (
    STRATEGIES,
    Vocabulary,
    Window,
    aggregate,
    check_strategy,
    entities,
    entity_groups,
    gather_pre_entities,
    get_tag,
    merge_overlapping,
    softmax,
)
from tests.support.tiny import TOKEN_LABELS, _bert_tokenizer, _roberta_tokenizer

TEXTS = ["this medicine worked wonders and i feel great",
         "Café naïve résumé 😀👍🏽 头痛 日本語 headache, nausea!",
         "zebra xylophone unseen-wordpiece  double  spaces\tand tabs"]


@pytest.fixture(scope="module", params=["wordpiece", "bytelevel-bpe"])
def tokenizer(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    fast = (_bert_tokenizer if request.param == "wordpiece" else _roberta_tokenizer)(folder)
    return fast, Vocabulary.load(folder / "tokenizer.json")


def pipeline_of(fast):
    """A TokenClassificationPipeline with only what its postprocessing reads: the tokenizer and id2label."""
    from transformers import TokenClassificationPipeline

    made = object.__new__(TokenClassificationPipeline)
    made.tokenizer = fast
    made.model = SimpleNamespace(config=SimpleNamespace(id2label=dict(enumerate(TOKEN_LABELS))))
    made.framework = "pt"
    return made


def plain(found: list[dict]) -> list[dict]:
    return [{k: (float(v) if k == "score" else v.item() if hasattr(v, "item") else v) for k, v in e.items()}
            for e in found]


@pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_pipeline_rules_on_random_logits(tokenizer, strategy):
    from transformers.pipelines.token_classification import AggregationStrategy

    fast, vocab = tokenizer
    pipe = pipeline_of(fast)
    rng = np.random.default_rng(0)
    for text in TEXTS:
        enc = fast(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        logits = (rng.normal(size=(len(enc["input_ids"]), len(TOKEN_LABELS))) * 3).astype(np.float32)
        scores = softmax(logits)
        theirs_pre = pipe.gather_pre_entities(text, np.array(enc["input_ids"]), scores, enc["offset_mapping"],
                                              np.array(enc["special_tokens_mask"]), AggregationStrategy(strategy))
        ours_pre = gather_pre_entities(text, enc["input_ids"], scores, enc["offset_mapping"],
                                       enc["special_tokens_mask"], vocab)
        assert [{k: v for k, v in p.items() if k != "scores"} for p in ours_pre] == \
            [{k: v for k, v in p.items() if k != "scores"} for p in theirs_pre]
        expected = plain(pipe.aggregate(theirs_pre, AggregationStrategy(strategy)))
        assert plain(aggregate(ours_pre, strategy, TOKEN_LABELS, vocab)) == expected
        # The whole of one window (ignore_labels default ["O"]).
        window = Window(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], logits)
        kept = [e for e in expected if e.get("entity", e.get("entity_group")) != "O"]
        assert entities(text, [window], strategy, TOKEN_LABELS, vocab) == kept


def test_overlapping_entities_merge_as_the_pipeline():
    pipe = pipeline_of(None)
    found = [{"start": 0, "end": 4, "score": 0.5}, {"start": 2, "end": 9, "score": 0.1},
             {"start": 2, "end": 9, "score": 0.7}, {"start": 9, "end": 12, "score": 0.2},
             {"start": 10, "end": 12, "score": 0.9}, {"start": 20, "end": 22, "score": 0.3}]
    assert merge_overlapping(list(found)) == pipe.aggregate_overlapping_entities(list(found))
    assert merge_overlapping([]) == []


def test_windows_count_token_indices_in_the_whole_text(tokenizer):
    """Strategy none over windows: each window's tokens indexed where they lie in the whole text's tokens."""
    fast, vocab = tokenizer
    text = " ".join(TEXTS * 3)
    whole = fast(text, add_special_tokens=False)["input_ids"]
    encs = fast(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True, max_length=16,
                stride=4, return_overflowing_tokens=True)
    windows = [Window(ids, offsets, special, np.tile(np.float32([0, 5, 0, 0, 0]), (len(ids), 1)))
               for ids, offsets, special in zip(encs["input_ids"], encs["offset_mapping"],
                                                encs["special_tokens_mask"], strict=True)]
    assert len(windows) > 3
    found = entities(text, windows, "none", TOKEN_LABELS, vocab, stride=4)
    assert [e["index"] for e in found] == list(range(1, len(whole) + 1))
    assert {e["entity"] for e in found} == {"B-DRUG"} and entity_groups(found[:1]) == ["DRUG"]


def test_tags_and_strategies():
    assert get_tag("B-DRUG") == ("B", "DRUG") and get_tag("I-COND") == ("I", "COND") and get_tag("PER") == ("I", "PER")
    assert check_strategy(None) == "simple" and check_strategy("FIRST") == "first"
    for bad in ("longest", 3, ["simple"]):
        with pytest.raises(InvalidInput, match="aggregation_strategy must be one of none, simple"):
            check_strategy(bad)  # type: ignore[arg-type]
