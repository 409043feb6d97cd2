"""Every input is bounded by what the model reads: a long text costs about max_length tokens to encode and at most
max_length tokens per sequence to run, for /predict and /explain, and the ids are those of a plain full encode.
Counted on the tiny model's real tokenizer and sessions (wrapped to count), in-process; no timings."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from tokenizers import Tokenizer

from app import batching
from app.batching import Batcher
from app.errors import NotReady
from app.explain import read_part
from app.settings import Settings
from app.tokenizer import CHARS_PER_TOKEN, SLACK, Encoded, TextTokenizer
from tests.support.apps import in_process_with_service
from tests.support.texts import KIB, Counting, awkward_texts, prose
from tests.support.tiny import CORPUS

# Body limit 1 MiB: the JSON around the text takes a few bytes of it.
SIZES = [128 * KIB, 1024 * KIB - 64]


@pytest.mark.parametrize("max_length", [16, 64])
def test_long_texts_encode_to_the_ids_of_a_plain_full_encode(tokenizer_file, max_length):
    plain = Tokenizer.from_file(str(tokenizer_file))
    plain.no_padding()
    plain.enable_truncation(max_length=max_length)
    ours = TextTokenizer(tokenizer_file, max_length)
    texts = awkward_texts() + [s[:n] for s in CORPUS for n in (5, len(s))]
    expected = plain.encode_batch(texts)
    got = ours.encode(texts)
    for text, want, have in zip(texts, expected, got, strict=True):
        assert have.ids == want.ids and have.truncated == bool(want.overflowing), repr(text[:40])
    # What the model reads of each text, cut after its word, encodes to the same ids.
    for text, read, want in zip(texts, ours.read(texts), expected, strict=True):
        assert plain.encode(read_part(text, read)).ids == want.ids, repr(text[:40])
        assert (read < len(text)) == bool(want.overflowing)


@pytest.mark.parametrize("text", [
    " " * (1024 * KIB),
    "y" * (1024 * KIB),
    ("x" * 150 + " ") * 7000,
    " " * (1000 * KIB) + prose(20 * KIB),  # what the model would read lies past max_chars: not read
    "我喜欢这个药它很好用" * 100_000,
], ids=["spaces", "one word", "unk words", "spaces then prose", "cjk"])
def test_texts_that_pack_few_tokens_into_many_characters_cost_at_most_max_chars(tokenizer_file, text):
    ours = TextTokenizer(tokenizer_file, 64)
    counting = ours._tokenizer = Counting(ours._tokenizer)
    (encoded,), (read,) = ours.encode([text]), ours.read([text])
    assert counting.chars <= 2 * 2 * ours.max_chars  # growing prefixes up to max_chars, for each of the two calls
    assert len(encoded.ids) <= 64 and encoded.truncated and read <= ours.max_chars + SLACK
    assert len(read_part(text, read)) <= ours.max_chars + SLACK


@pytest.fixture(scope="module")
def app(tiny_model_repo):
    """(call, the served tiny model): the app in-process, as tests.support.apps.in_process runs it."""
    for call, service in in_process_with_service(Settings(model_repository=tiny_model_repo, poll_interval_s=0,
                                                          batch_autotune=False, log_level="warning")):
        yield call, service.resolve("tiny")


@pytest.fixture
def counted(app):
    """(call, tokenizer counts, lengths of the sequences run, max_length), counting from the test's start."""
    call, served = app
    tokenizer = Counting(served.tokenizer._tokenizer)
    served.tokenizer._tokenizer = tokenizer
    runs: list[int] = []
    infer = served.infer

    def counting_infer(sequences, *args, **kwargs):  # type ids, the low-load path: passed on as given
        runs.extend(len(s) for s in sequences)
        return infer(sequences, *args, **kwargs)

    served.infer = counting_infer  # the batcher calls model.infer on the instance
    yield call, tokenizer, runs, served.max_length
    served.tokenizer._tokenizer = tokenizer.inner
    del served.infer


@pytest.mark.parametrize("size", SIZES)
def test_a_long_prediction_costs_what_max_length_allows(app, counted, size):
    call, tokenizer, runs, max_length = counted
    served = app[1].tokenizer
    text = prose(size)
    r = call("POST", "/predict", json={"inputs": text})
    assert r.status_code == 200, r.text
    assert runs == [max_length]  # one sequence, cut to what the model reads
    assert tokenizer.chars <= CHARS_PER_TOKEN * max_length + 100  # one prefix, cut at the first break past the bound
    assert tokenizer.tokens <= CHARS_PER_TOKEN * max_length
    # Read whole (truncate false) it needs more windows than one request may make: refused, having read no more
    # of it than the cap's windows could cover.
    windowing = served._windowing = Counting(served.window_tokenizer())
    try:
        refused = call("POST", "/predict", json={"inputs": text, "truncate": False})
    finally:
        served._windowing = windowing.inner
    assert refused.status_code == 422 and "BERTSERVE_MAX_REQUEST_SEQUENCES" in refused.json()["error"]
    assert windowing.chars <= CHARS_PER_TOKEN * max_length * Settings().request_sequences_cap + SLACK


@pytest.mark.parametrize("size", SIZES)
def test_a_long_explanation_costs_what_max_length_allows(counted, size):
    call, tokenizer, runs, max_length = counted
    text = prose(size)
    r = call("POST", "/explain", json={"inputs": text, "max_features": 256})
    assert r.status_code == 200, r.text
    body = r.json()
    read = body["read"]
    assert read < 2 * CHARS_PER_TOKEN * max_length and text[read] == " "  # cut after a word
    assert body["features"][-1]["end"] == read and len(body["features"]) == len(text[:read].split())
    # Sequences: the read part and one variant per feature, each at most max_length tokens.
    assert len(runs) == len(body["features"]) + 1 <= max_length + 1 and max(runs) <= max_length
    # Tokens: the one look at where the model stops reading, then each sequence about max_length long.
    assert tokenizer.tokens <= CHARS_PER_TOKEN * max_length + len(runs) * (max_length + 8)
    predicted = call("POST", "/predict", json={"inputs": text}).json()
    assert np.allclose([p["score"] for p in body["prediction"]], [p["score"] for p in predicted], atol=1e-5)
    refused = call("POST", "/explain", json={"inputs": text, "truncate": False})
    assert refused.status_code == 422 and "truncate is false" in refused.json()["error"]


def test_a_short_explanation_reads_the_whole_text(app):
    text = "this medicine worked wonders"
    body = app[0]("POST", "/explain", json={"inputs": text}).json()
    assert body["read"] == len(text) and [f["text"] for f in body["features"]] == text.split()


class SlowTokenizer:
    """A model whose tokenizer is held at a gate: the batcher's tokenize thread is busy while the test acts."""

    max_length = 8

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.encoded: list[str] = []

    def encode(self, texts):
        self.entered.set()
        self.gate.wait(30)
        self.encoded.extend(texts)
        return [Encoded([1, 2], False) for _ in texts]

    def infer(self, sequences):
        return np.zeros((len(sequences), 2))


def test_a_deadline_stops_tokenization_under_way_and_close_is_not_held():
    """Texts taken by the tokenize thread in one round are encoded in chunks: once their callers have gone (the
    deadline), the chunks left are dropped, not encoded; a close while a chunk is encoding answers what is left
    and does not wait for the round to end."""

    async def scenario():
        model = SlowTokenizer()
        batcher = Batcher(model, max_batch_size=8, max_batch_tokens=64, max_queue_size=100)
        batcher.start()
        texts = ["x" * batching.CHUNK_CHARS] * 5  # five chunks, taken by the tokenize thread in one round
        first = asyncio.ensure_future(batcher.submit(texts))
        while not model.entered.is_set():
            await asyncio.sleep(0.01)
        first.cancel()  # the caller leaves (its deadline) while the first chunk is encoding
        while batcher.load:  # its sequences are released at once
            await asyncio.sleep(0.01)
        model.gate.set()
        while not model.encoded:  # the chunk under way is done
            await asyncio.sleep(0.01)
        encoded_first = len(model.encoded)
        # A second round, held in its first chunk while close() runs.
        model.gate.clear()
        model.entered.clear()
        second = asyncio.ensure_future(batcher.submit(texts))
        while not model.entered.is_set():
            await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        while not batcher._closed:
            await asyncio.sleep(0.01)
        model.gate.set()
        await closing
        try:
            async with asyncio.timeout(30):  # a bound for the old code, which never answered them
                await second
        except NotReady as exc:
            return encoded_first, len(model.encoded) - encoded_first, exc

    first_round, second_round, error = asyncio.run(scenario())
    assert first_round == 1  # the chunk under way when the deadline passed; the four after it were dropped
    assert second_round == 1  # close stopped the round after its current chunk
    assert "unloaded" in str(error)
