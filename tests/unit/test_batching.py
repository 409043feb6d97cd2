"""The batcher alone, on plain asyncio with a fake model: no HTTP, no onnxruntime."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.batching import Batcher
from app.errors import InvalidInput, NotReady, Overloaded
from tests.support.batching import FakeModel, make


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


def text(n_words: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n_words))


async def block_engine(model: FakeModel, batcher: Batcher) -> asyncio.Task:
    """Start one request and wait until it is inside the engine, so later ones queue up."""
    first = asyncio.create_task(batcher.submit([text(1, "blocker")]))
    await asyncio.to_thread(model.entered.wait, 5)
    return first


def test_lone_request_runs_at_once_and_gets_its_own_answer():
    async def scenario():
        model = FakeModel()
        batcher = make(model)
        start = time.perf_counter()
        [(row, timing)] = await batcher.submit(["hello there"])
        elapsed = time.perf_counter() - start
        await batcher.close()
        return model, row, timing, elapsed

    model, row, timing, _ = asyncio.run(scenario())
    assert model.batches == [[2]]
    assert row == tuple(hash(w) % 1000 for w in ["hello", "there"])
    assert timing.batch_size == 1


def test_concurrent_requests_form_batches_and_answers_reach_the_right_caller():
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model, max_batch_size=4)
        first = await block_engine(model, batcher)
        texts = [text(3, f"r{i}_") for i in range(10)]
        tasks = [asyncio.create_task(batcher.submit([t])) for t in texts]
        await wait_for(lambda: batcher.load == 11)
        model.gate.set()
        results = await asyncio.gather(*tasks)
        await first
        await batcher.close()
        return model, texts, results

    model, texts, results = asyncio.run(scenario())
    for t, [(row, _timing)] in zip(texts, results):
        assert row == tuple(hash(w) % 1000 for w in t.split())
    sizes = [len(b) for b in model.batches]
    assert sizes[0] == 1 and sum(sizes) == 11
    assert max(sizes) == 4  # capped by max_batch_size, and batched at all
    assert len(model.batches) == 1 + 3  # 10 queued sequences -> 4 + 4 + 2


def test_multi_text_request_keeps_order():
    async def scenario():
        model = FakeModel()
        batcher = make(model, max_batch_size=2)
        texts = [text(n, f"t{n}_") for n in (5, 1, 3, 2, 4)]
        results = await batcher.submit(texts)
        await batcher.close()
        return texts, results

    texts, results = asyncio.run(scenario())
    assert [row for row, _ in results] == [tuple(hash(w) % 1000 for w in t.split()) for t in texts]


def test_batches_group_similar_lengths_and_respect_the_token_budget():
    async def scenario():
        model = FakeModel(gated=True)
        # 4 sequences per batch at most, and at most 16 padded tokens: 4 x 4 fits, 4 x 8 does not.
        batcher = make(model, max_batch_size=4, max_batch_tokens=16)
        first = await block_engine(model, batcher)
        lengths = [8, 1, 8, 2, 7, 1, 2, 8]
        tasks = [asyncio.create_task(batcher.submit([text(n, f"s{i}_")])) for i, n in enumerate(lengths)]
        await wait_for(lambda: batcher.load == 1 + len(lengths))
        model.gate.set()
        await asyncio.gather(first, *tasks)
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    queued_batches = model.batches[1:]
    assert sorted(n for b in queued_batches for n in b) == sorted([8, 1, 8, 2, 7, 1, 2, 8])
    for batch in queued_batches:
        assert max(batch) * len(batch) <= 16
        assert batch == sorted(batch)  # cut from the length-sorted queue
    # The short ones run together and the long ones together, not interleaved in arrival order.
    assert [1, 1, 2, 2] in queued_batches
    assert [7, 8] in queued_batches and [8, 8] in queued_batches


def test_padding_cap_keeps_lengths_apart():
    async def scenario():
        model = FakeModel(gated=True)
        # Room for 4 x 8 tokens, but at most 25 % padding: 8 joins 7 (16 <= 1.25 x 15) and 1 joins 1, never 8 and 1.
        batcher = make(model, max_batch_size=4, max_batch_tokens=64, max_batch_padding=0.25)
        first = await block_engine(model, batcher)
        lengths = [8, 1, 7, 1, 8, 2]
        tasks = [asyncio.create_task(batcher.submit([text(n, f"s{i}_")])) for i, n in enumerate(lengths)]
        await wait_for(lambda: len(batcher._ready) == len(lengths))  # all tokenized, so the cuts see them all
        model.gate.set()
        await asyncio.gather(first, *tasks)
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    queued_batches = model.batches[1:]
    assert sorted(n for b in queued_batches for n in b) == [1, 1, 2, 7, 8, 8]
    for batch in queued_batches:
        assert max(batch) * len(batch) <= 1.25 * sum(batch)
    assert [7, 8, 8] in queued_batches and [1, 1] in queued_batches and [2] in queued_batches


def test_oldest_request_is_in_the_next_batch():
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model, max_batch_size=2, max_batch_tokens=64)
        first = await block_engine(model, batcher)
        long_one = asyncio.create_task(batcher.submit([text(8, "old")]))
        await wait_for(lambda: batcher.load == 2)
        shorts = [asyncio.create_task(batcher.submit([text(1, f"n{i}")])) for i in range(6)]
        await wait_for(lambda: batcher.load == 8)
        model.gate.set()
        await asyncio.gather(first, long_one, *shorts)
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    assert 8 in model.batches[1]  # not starved behind the shorter, later ones


def test_overflow_is_refused_at_once_with_retry_after():
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model, max_queue_size=3)
        first = await block_engine(model, batcher)
        queued = [asyncio.create_task(batcher.submit([text(2, f"q{i}")])) for i in range(2)]
        await wait_for(lambda: batcher.load == 3)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(["one too many"])
        model.gate.set()
        await asyncio.gather(first, *queued)
        answered_after = await batcher.submit(["room again"])
        await batcher.close()
        return refused.value, answered_after

    refused, answered_after = asyncio.run(scenario())
    assert refused.retry_after_s >= 1
    assert len(answered_after) == 1


def test_cancelled_requests_are_dropped_before_inference_and_nothing_gets_stuck():
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model, max_batch_size=4)
        first = await block_engine(model, batcher)
        doomed = [asyncio.create_task(batcher.submit([text(3, f"gone{i}")])) for i in range(20)]
        kept = asyncio.create_task(batcher.submit([text(2, "kept")]))
        await wait_for(lambda: batcher.load == 22)
        for task in doomed:
            task.cancel()
        await asyncio.gather(*doomed, return_exceptions=True)
        load_after_cancel = batcher.load
        model.gate.set()
        await asyncio.gather(first, kept)
        after = await batcher.submit(["still serving"])
        await batcher.close()
        return model, load_after_cancel, after

    model, load_after_cancel, after = asyncio.run(scenario())
    assert load_after_cancel == 2  # the cancelled ones left the queue at once
    ran = sum(len(b) for b in model.batches)
    assert ran == 3  # blocker, kept, still serving: no cancelled sequence reached the engine
    assert len(after) == 1


def test_timeout_while_queued_drops_the_work():
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model)
        first = await block_engine(model, batcher)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await batcher.submit([text(4, "late")])
        model.gate.set()
        await first
        await batcher.submit(["next"])
        await batcher.close()
        return model

    model = asyncio.run(scenario())
    assert 4 not in [n for b in model.batches for n in b]


def test_too_long_input_without_truncation_is_refused_and_with_truncation_served():
    async def scenario():
        model = FakeModel()
        batcher = make(model)
        with pytest.raises(InvalidInput):
            await batcher.submit([text(12, "long")], truncate=False)
        [(row, _)] = await batcher.submit([text(12, "long")], truncate=True)
        await batcher.close()
        return row, batcher.load

    row, load = asyncio.run(scenario())
    assert len(row) == FakeModel.max_length
    assert load == 0


def test_engine_failure_answers_the_batch_and_the_batcher_goes_on():
    class Flaky(FakeModel):
        def infer(self, sequences):
            if any(len(s) == 3 for s in sequences):
                raise RuntimeError("boom")
            return super().infer(sequences)

    async def scenario():
        model = Flaky()
        batcher = make(model)
        with pytest.raises(Exception) as failed:
            await batcher.submit(["a b c"])
        ok = await batcher.submit(["a b"])
        await batcher.close()
        return failed.value, ok

    failed, ok = asyncio.run(scenario())
    assert getattr(failed, "kind", None) == "backend"
    assert len(ok) == 1


def test_closed_batcher_refuses_new_work():
    async def scenario():
        batcher = make(FakeModel())
        await batcher.close()
        with pytest.raises(NotReady):
            await batcher.submit(["x"])

    asyncio.run(scenario())


def test_token_budget_below_max_length_is_refused():
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Batcher(FakeModel(), max_batch_size=4, max_batch_tokens=4, max_queue_size=10)


def test_parallel_slots_run_batches_at_once_from_one_queue():
    class TwoSlotModel(FakeModel):
        """Blocks every call until two are inside at once (or times out), like two sessions side by side."""

        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.most_inside = 0
            self.lock = threading.Lock()
            self.both = threading.Barrier(2, timeout=5)

        def infer(self, sequences):
            with self.lock:
                self.inside += 1
                self.most_inside = max(self.most_inside, self.inside)
            try:
                self.both.wait()
            except threading.BrokenBarrierError:
                pass
            with self.lock:
                self.inside -= 1
            return super().infer(sequences)

    async def scenario():
        model = TwoSlotModel()
        batcher = make(model, max_batch_size=2, parallel=2)
        results = await asyncio.gather(*(batcher.submit([text(3, f"p{i}_")]) for i in range(4)))
        await batcher.close()
        return model, results

    model, results = asyncio.run(scenario())
    assert model.most_inside == 2  # two batches in the engine at the same time
    assert len(results) == 4 and sum(len(b) for b in model.batches) == 4


INF = float("inf")


@pytest.mark.parametrize(
    ("lengths", "anchor", "caps", "expected"),
    [
        # (sorted token lengths, index of the oldest, (max_size, max_tokens, max_padding), [lo, hi))
        ([10], 0, (8, 512, INF), (0, 1)),  # a lone sequence runs alone
        ([10, 10, 10, 10], 0, (8, 512, INF), (0, 4)),  # equal lengths: all of them
        ([10, 10, 10, 10], 2, (2, 512, INF), (2, 4)),  # max_size; ties grow to the right first
        ([10, 10, 10, 10], 3, (2, 512, INF), (2, 4)),  # at the right end it grows left
        ([10, 20, 30, 40], 1, (8, 512, INF), (0, 4)),  # uncapped padding takes every one
        ([10, 20, 30, 40], 1, (8, 60, INF), (1, 3)),  # max_tokens: a third would make 3 x 30 = 90 > 60
        ([5, 9, 10, 11, 30], 2, (3, 512, INF), (1, 4)),  # nearest lengths around the anchor
        ([10, 10, 11, 40], 0, (8, 512, 0.05), (0, 2)),  # padding cap: 11 pads 2 of 33 tokens (6 %)
        ([20, 20, 21, 40], 0, (8, 512, 0.05), (0, 3)),  # ... while 21 pads 2 of 63 (3 %)
        ([10, 40], 1, (8, 512, 0.05), (1, 2)),  # the oldest runs even when nothing fits beside it
        ([100], 0, (8, 50, INF), (0, 1)),  # one sequence longer than the budget still runs (the batcher
                                           # refuses a model whose max length exceeds max_tokens)
    ],
)
def test_cut_batch_table(lengths, anchor, caps, expected):
    from app.batching import cut_batch

    assert cut_batch(lengths, anchor, *caps) == expected


def test_admission_admits_within_its_bound_and_says_when_to_retry():
    from app.batching import Admission
    from app.errors import NotReady, Overloaded

    sizes: list[int] = []
    admission = Admission("m", limit=10, on_size=sizes.append)
    admission.admit(6)
    admission.admit(4)  # exactly full
    assert admission.load == admission.limit and sizes == [6, 10]
    admission.throughput = 4.0  # sequences/s: 10 held -> retry after 3 s
    with pytest.raises(Overloaded) as refused:
        admission.admit(1)
    assert refused.value.retry_after_s == 3 and admission.load == 10  # a refusal holds nothing
    admission.load -= 10
    admission.closed = True
    with pytest.raises(NotReady):
        admission.admit(1)


def test_a_submission_over_the_queue_bound_is_invalid_not_overloaded():
    """It could never be admitted, even by an empty queue: 422 for every caller, not 429 (a retry never helps)."""
    from app.batching import Admission
    from app.errors import InvalidInput

    admission = Admission("m", limit=10, on_size=lambda size: None)
    admission.admit(3)
    with pytest.raises(InvalidInput, match="needs 11 sequences, over the queue limit of 10 of model m"):
        admission.admit(11)
    assert admission.load == 3


def test_a_request_arriving_behind_a_large_submission_is_not_kept_waiting_for_all_of_it():
    """Batches take from concurrent submissions in turn, so one text sent while an explanation (or a full client
    batch, a rerank) of 40 sequences runs is in the next batch but one, not after the large submission's 10
    batches, whatever the measured throughput. Oldest first it would run last; and so it did when a large
    submission's sequences fell due at the throughput measured on short ones (the issue: 0.3-2.9 s behind a
    512-document rerank)."""
    class Recording(FakeModel):
        def infer(self, sequences):
            rows = super().infer(sequences)
            self.seen.append(rows)
            return rows

    async def scenario():
        model = Recording(gated=True)
        model.seen = []
        batcher = make(model, max_batch_size=4)
        first = await block_engine(model, batcher)
        batcher.admission.throughput = 1e9  # measured on short sequences: a pace-based schedule had all 40 due now
        large = asyncio.create_task(batcher.submit([text(3, f"big{k}-") for k in range(40)]))
        await wait_for(lambda: batcher.admission.load == 41)
        small = asyncio.create_task(batcher.submit([text(3, "small")]))
        await wait_for(lambda: len(batcher._ready) == 41)  # all tokenized, waiting behind the running batch
        model.gate.set()
        await asyncio.gather(first, large, small)
        await batcher.close()
        return model.seen

    seen = asyncio.run(scenario())
    small_row = FakeModel().encode([text(3, "small")])[0].ids
    where = [k for k, rows in enumerate(seen) if tuple(small_row) in rows]
    assert len(seen) == 1 + 11 and where == [2], (len(seen), where)  # the blocker, one batch of the large, then it


def test_concurrent_large_submissions_take_batches_in_turn():
    """Two large submissions at once (lengths 3 and 6, never batched together with no padding allowed): their
    batches alternate, A B A B..., rather than all of the earlier one first."""
    async def scenario():
        model = FakeModel(gated=True)
        batcher = make(model, max_batch_size=4, max_batch_padding=0.0)
        first = await block_engine(model, batcher)
        batcher.admission.throughput = 1e9  # however fast the engine seemed: turns, not a pace-based schedule
        a = asyncio.create_task(batcher.submit([text(3, f"a{k}-") for k in range(12)]))
        await wait_for(lambda: batcher.load == 13)
        b = asyncio.create_task(batcher.submit([text(6, f"b{k}-") for k in range(12)]))
        await wait_for(lambda: len(batcher._ready) == 24)
        model.gate.set()
        await asyncio.gather(first, a, b)
        await batcher.close()
        return model.batches

    batches = asyncio.run(scenario())
    assert batches[1:] == [[3] * 4, [6] * 4] * 3


def test_an_arrival_is_tokenized_before_the_rest_of_a_large_submission():
    """The tokenize thread encodes a large submission in chunks; a request arriving meanwhile is encoded in the
    next chunk, not after all of the large one's texts."""
    from app import batching

    class GatedTokenizer(FakeModel):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[list[str]] = []
            self.entered_encode = threading.Event()
            self.release = threading.Event()

        def encode(self, texts):
            self.calls.append(list(texts))
            self.entered_encode.set()
            self.release.wait(5)
            return super().encode(texts)

    async def scenario():
        model = GatedTokenizer()
        batcher = make(model, max_queue_size=10)
        large = asyncio.create_task(batcher.submit([f"big{k}" + "x" * batching.CHUNK_CHARS for k in range(5)]))
        await asyncio.to_thread(model.entered_encode.wait, 5)  # its first chunk is encoding
        small = asyncio.create_task(batcher.submit(["small"]))
        await wait_for(lambda: batcher._incoming)
        model.release.set()
        await asyncio.gather(large, small)
        await batcher.close()
        return model.calls

    calls = asyncio.run(scenario())
    assert calls[1][0] == "small", [c[0][:5] for c in calls]  # the next chunk: it, then what fits beside it
    assert sorted(t[:4] for c in calls for t in c) == ["big0", "big1", "big2", "big3", "big4", "smal"]


class ThreadNamingModel(FakeModel):
    """Records which thread encoded each submission."""

    def __init__(self, gated: bool = False) -> None:
        super().__init__(gated)
        self.encoded_on: list[str] = []

    def encode(self, texts):
        self.encoded_on.append(threading.current_thread().name)
        return super().encode(texts)


def test_a_lone_small_request_is_encoded_on_the_loop_and_anything_else_on_the_tokenize_thread():
    """The low-load shortcut (app.batching.INLINE_CHARS): alone and small, encoded in submit() (one thread
    wake-up less); behind a running batch, or too long, through the tokenize thread, so the loop never encodes
    under load."""
    from app import batching

    async def scenario():
        model = ThreadNamingModel(gated=True)
        batcher = make(model)
        loop_thread = threading.current_thread().name
        first = await block_engine(model, batcher)  # alone: inline
        behind = asyncio.create_task(batcher.submit(["queued behind it"]))  # the engine is busy: the thread
        await wait_for(lambda: len(model.encoded_on) == 2)
        model.gate.set()
        await first, await behind
        long = "word " * (batching.INLINE_CHARS // 5 + 1)  # alone but long: the thread
        [(row, _)] = await batcher.submit([long])
        [(again, _)] = await batcher.submit(["alone again"])  # alone and small: inline
        await batcher.close()
        return loop_thread, model.encoded_on, row, again

    loop_thread, encoded_on, row, again = asyncio.run(scenario())
    assert encoded_on[0] == loop_thread and encoded_on[3] == loop_thread
    assert encoded_on[1].startswith("tokenize-") and encoded_on[2].startswith("tokenize-")
    assert len(row) == FakeModel.max_length and again == tuple(hash(w) % 1000 for w in ["alone", "again"])
