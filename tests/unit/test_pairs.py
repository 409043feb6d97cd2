"""Text pairs below HTTP: the tokenizer encodes a pair as the `tokenizers` full encode does (the model's own pair
template, type ids, longest_first truncation) at a bounded cost, and /predict, /explain and KServe V2 parse pairs
or refuse them plainly."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from tokenizers import Tokenizer

from app import batching
from app.api.explain.codec import parse as parse_explain
from app.api.explain.schemas import ExplainRequest, V1ExplainRequest
from app.api.predict.codec import parse_predict
from app.api.v2.codec import parse_infer
from app.errors import InvalidInput
from app.tokenizer import CHARS_PER_TOKEN, SLACK, Encoded, TextTokenizer
from tests.support.batching import FakeModel, make
from tests.support.texts import KIB, Counting, awkward_texts, prose
from tests.support.tiny import CORPUS
from tests.support.v2 import v2_body


def full_encode(path, max_length: int) -> Tokenizer:
    """The plain `tokenizers` encode transformers' fast tokenizer makes with truncation=True."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


def pairs() -> list[tuple[str, str]]:
    long = " ".join(CORPUS) * 3
    return [(CORPUS[0], CORPUS[1]), (CORPUS[2], CORPUS[3]), (long, CORPUS[4]), (CORPUS[5], long), (long, long),
            ("! " * 300, long + "!!" * 200)]


@pytest.mark.parametrize("max_length", [16, 64])
def test_pairs_encode_as_the_full_encode_with_their_type_ids(tokenizer_file, max_length):
    ours, full = TextTokenizer(tokenizer_file, max_length), full_encode(tokenizer_file, max_length)
    inputs = [CORPUS[0], *pairs(), CORPUS[1]]  # texts and pairs in one batch
    for one, got in zip(inputs, ours.encode(inputs), strict=True):
        expected = full.encode(one) if isinstance(one, str) else full.encode(*one)
        assert got.ids == expected.ids
        assert (got.type_ids or [0] * len(got.ids)) == expected.type_ids
        assert got.truncated == bool(expected.overflowing)
        if isinstance(one, str):
            assert got.type_ids is None  # a text carries none: the engine feeds zeros
    bert = tokenizer_file.parent.name.startswith("bert")
    # BERT's template gives the second text type id 1; RoBERTa's gives none (its graph takes no token_type_ids).
    assert (ours.encode([pairs()[0]])[0].type_ids is not None) == bert


def test_a_long_pair_is_encoded_from_prefixes_at_a_bounded_cost(tokenizer_file):
    max_length = 64
    ours = TextTokenizer(tokenizer_file, max_length)
    counting = Counting(ours._tokenizer)
    ours._tokenizer = counting
    for premise, hypothesis in [(prose(100 * KIB), prose(100 * KIB)), (prose(100 * KIB), CORPUS[0]),
                                (CORPUS[0], prose(100 * KIB))]:
        counting.tokens = 0
        [got] = ours.encode([(premise, hypothesis)])
        assert got.truncated
        # Two sides of about prefix_chars each, encoded alone and then as a pair: not the 100 KiB sides.
        assert counting.tokens <= 4 * (max_length * CHARS_PER_TOKEN + SLACK)
        # The reference on the sides' first 4 KiB (the same tokens; on 100 KiB sides it makes every pair of
        # overflowing chunks, millions).
        expected = full_encode(tokenizer_file, max_length).encode(premise[:4 * KIB], hypothesis[:4 * KIB])
        assert (got.ids, got.type_ids or [0] * len(got.ids)) == (expected.ids, expected.type_ids)


def test_awkward_long_sides_keep_a_full_encodes_tokens(tokenizer_file):
    """Sides that are long, spaced out, CJK or one enormous word: the pair's ids are the full encode's."""
    max_length = 16
    ours, full = TextTokenizer(tokenizer_file, max_length), full_encode(tokenizer_file, max_length)
    for text in awkward_texts()[:8]:
        short = text[:6 * KIB]  # the reference encode of two long sides makes every pair of overflowing chunks
        [got] = ours.encode([(short, CORPUS[0])])
        expected = full.encode(short, CORPUS[0])
        assert got.ids == expected.ids and got.truncated


@pytest.mark.parametrize(("body", "inputs"), [
    ({"inputs": [["a", "b"]]}, [("a", "b")]),
    ({"inputs": ["a", "b"]}, ["a", "b"]),  # a flat list of two strings stays two texts
    ({"inputs": {"text": "a", "text_pair": "b"}}, ("a", "b")),
    ({"inputs": [{"text": "a", "text_pair": "b"}, "c", ["d", "e"]]}, [("a", "b"), "c", ("d", "e")]),
])
def test_predict_takes_pairs_in_both_forms(body, inputs):
    assert parse_predict(orjson.dumps(body)).inputs == inputs


@pytest.mark.parametrize(("inputs", "message"), [
    ([["a", "b", "c"]], "inputs[0]: a pair is a list of exactly two texts"),
    ([["a"]], "inputs[0]: a pair is a list of exactly two texts"),
    ([["a", 1]], "inputs[0][1]: Input should be a valid string"),
    ([["a", ""]], "inputs[0][1]: String should have at least 1 character"),
    ([], "inputs: List should have at least 1 item"),
    ({"text": "a"}, "inputs.text_pair: Field required"),
    ([{"text": "a", "text_pair": "b", "label": 1}], "inputs[0]: a field that is not part of the API was sent"),
    ([3], "inputs[0]: each input is a text, a pair"),
    (None, "inputs: each input is a text, a pair"),
])
def test_predict_says_what_is_wrong_with_a_pair(inputs, message):
    with pytest.raises(InvalidInput) as caught:
        parse_predict(orjson.dumps({"inputs": inputs}))
    assert caught.value.message.startswith(message), caught.value.message


@pytest.mark.parametrize(("schema", "body", "where"), [
    (ExplainRequest, {"inputs": {"text": "a", "text_pair": "b"}}, "inputs"),
    (ExplainRequest, {"inputs": ["a", "b"]}, "inputs"),
    (V1ExplainRequest, {"instances": ["ok", ["a", "b"]]}, "instances[1]"),
])
def test_explanations_refuse_pairs_plainly(schema, body, where):
    with pytest.raises(InvalidInput) as caught:
        parse_explain(schema, orjson.dumps(body))
    assert caught.value.message == f"{where}: explanations take single texts; text pairs are not explained"


@pytest.mark.parametrize("binary", [False, True])
def test_v2_text_pair_makes_pairs(binary):
    parsed = parse_infer(*v2_body(("text", ["a", "c"]), ("text_pair", ["b", "é"]), binary=binary), "m")
    assert parsed.texts == [("a", "b"), ("c", "é")]
    swapped = parse_infer(*v2_body(("text_pair", ["b"]), ("text", ["a"]), binary=binary), "m")
    assert swapped.texts == [("a", "b")]


@pytest.mark.parametrize(("inputs", "message"), [
    ((("text", ["a", "c"]), ("text_pair", ["b"])), "input 'text_pair' has 1 elements and 'text' 2"),
    ((("text_pair", ["b"]),), "input 'text' is missing"),
    ((("text", ["a"]), ("text", ["b"])), "input 'text' is given twice"),
    ((("text", ["a"]), ("text_pair", [""])), "input 'text_pair' element 0 is an empty text"),
    ((("text", ["a"]), ("pair", ["b"])), "unexpected input 'pair' for model 'm'"),
])
def test_v2_bad_pairs_say_what_is_wrong(inputs, message):
    with pytest.raises(InvalidInput) as caught:
        parse_infer(*v2_body(*inputs), "m")
    assert message in caught.value.message


class PairModel(FakeModel):
    """Tokens = words; a pair's second text gets type id 1. infer records what the batcher passed."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, list | None]] = []  # (sequences, type_ids or None when not passed)

    def encode(self, texts):
        out = []
        for one in texts:
            first, second = (one, "") if isinstance(one, str) else one
            a, b = first.split(), second.split()
            out.append(Encoded([1] * (len(a) + len(b)), False, [0] * len(a) + [1] * len(b) if b else None))
        return out

    def infer(self, sequences, type_ids=None):
        self.calls.append((len(sequences), type_ids))
        return super().infer(sequences)


def test_the_batcher_carries_pairs_and_their_type_ids_to_the_model():
    """Texts-only batches call infer(sequences) as before; a batch with a pair gets every row's type ids."""
    async def scenario():
        model = PairModel()
        batcher = make(model, max_batch_size=8)
        await batcher.submit(["one two", "three"])
        await batcher.submit([("a b", "c"), "d e f"])
        await batcher.close()
        return model.calls

    texts_only, with_pair = asyncio.run(scenario())
    assert texts_only == (2, None)
    assert sorted(with_pair[1], key=lambda t: t is None) == [[0, 0, 1], None] and with_pair[0] == 2


def test_chunks_count_both_texts_of_a_pair():
    assert batching._chars("abc") == 3 and batching._chars(("ab", "cde")) == 5
