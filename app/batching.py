"""Dynamic batcher: asyncio in front; tokenization and inference in their own threads, which feed themselves.

Pipeline, per model:  submit() -> [incoming] -> tokenize thread -> [ready] -> `parallel` inference threads -> futures.
- The worker threads take their next work straight from the shared queues (under one lock) instead of waiting
  for the event loop to hand it over: an engine session never idles while the loop is busy with HTTP. The loop
  is touched twice per batch: submit() and one call_soon_threadsafe() that answers the whole batch.
- Continuous: whenever an inference thread is free and sequences are ready, a batch runs at once; there is no
  wait timer, so a lone request pays no batching delay. With `parallel` > 1 (several single-thread sessions, the
  fastest layout on a small CPU under load), that many batches run at once, all cut from the one queue.
- Low load on all cores: a batch that would run alone (no other batch running, nothing else ready) runs on the
  model's wide session (every core, `model.wide`) when it has one, and no other batch starts until it is done;
  otherwise the per-core sessions run. Decided from what is in flight, never by a timer.
- Fair between submissions (round-robin): each batch is cut around an anchor, the earliest ready sequence of the
  submission whose turn it is — the one served longest ago, a new one taking its place in the round on arrival —
  and that submission then goes to the back of the round. So a request arriving while a large one (an
  explanation, a rerank of 512 documents, a full client batch) runs waits about one batch, not for all of it,
  whatever the throughput; and nobody starves. The batch grows around the anchor from the ready sequences (of
  every submission) sorted by token length, taking the nearest lengths first, within max_batch_size and
  max_batch_tokens (longest x count), and only while the padding stays within max_batch_padding of the batch's
  real tokens (cut_batch, pure).
- A lone small request skips the tokenize thread: when nothing is queued, tokenizing or running, a submission of at
  most INLINE_CHARS characters is encoded right in submit() (on the event loop, ~0.2 ms for a review) and handed
  straight to an inference thread: one thread wake-up instead of two, and no wait for the GIL against the loop's
  own work for that request (measured at concurrency 1: benchmarks/latency.py). Anything else, or anything while
  the pipeline is busy, goes through the tokenize thread as below, so the loop never encodes under load.
- Tokenization of new arrivals overlaps the running batches (the tokenizer and onnxruntime release the GIL), and
  goes before what is left of earlier arrivals' texts (at the next chunk, see below): a small request is not kept
  behind a large one's tokenization either.
- Admission is bounded (Admission): past max_queue_size queued + running sequences, submit() raises Overloaded
  at once, with a Retry-After from the measured throughput; a submission larger than max_queue_size itself could
  never be admitted, and is refused as InvalidInput (every caller: predict, explain, rerank).
- Sequences whose caller has gone (future cancelled: timeout, disconnect) are skipped before inference, and
  before tokenization: the tokenize thread encodes what it took in chunks (CHUNK_CHARS of text) and looks again
  between chunks, so a deadline or a close stops a long round of tokenization part-way.

No web framework here: it is driven and tested with plain asyncio and a fake model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import BackendError, InvalidInput, NotReady, Overloaded
from app.logs import exception_summary
from app.tokenizer import Encoded, TextInput

log = logging.getLogger("bertserve.batching")

CHUNK_CHARS = 1 << 16  # text encoded between two looks at which callers are still waiting (and at close)
INLINE_CHARS = 4096  # a lone submission up to this many characters is encoded on the event loop (see above)
JOIN_S = 5.0  # at close, how long to wait for the worker threads to finish their step (a batch, a chunk)


def too_long(max_length: int, name: str) -> InvalidInput:
    return InvalidInput(f"an input is longer than the {max_length} tokens model {name} accepts and truncate is false")


class BatchModel(Protocol):
    max_length: int

    def encode(self, texts: list[TextInput]) -> list[Encoded]: ...

    def infer(self, sequences: list[list[int]]) -> Any:
        """Run one batch; returns something indexable by row (one row per sequence, in order). Called from up to
        `parallel` threads at once. A batch holding a sequence with type ids (a pair) is passed them as well:
        infer(sequences, type_ids), None for a row whose type ids are all zero. A model with a `wide` session (not
        None) is passed wide=True for a batch that runs alone (see the module docstring)."""


@dataclass(slots=True)
class Timing:
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    # For the request's trace (app.tracing): when its batch began (perf_counter), its own and the batch's
    # (padded) tokens
    started: float = 0.0
    tokens: int = 0
    batch_tokens: int = 0
    truncated: bool = False  # the model read only part of the text (cut to max_length, or a window read in part)


@dataclass(slots=True, eq=False)
class _Turn:
    """One submission's place in the round (see the module docstring): the number it drew on arrival, and again
    each time a batch was cut around it; the lowest number's turn is next. Under Batcher._lock."""

    number: int = 0


@dataclass(slots=True, eq=False)
class _Item:
    text: TextInput | Encoded  # a text or a pair (only the tokenizer looks inside), or one already encoded
    truncate: bool
    future: asyncio.Future
    enqueued: float
    turn: _Turn  # its submission's, shared by all its sequences
    index: int  # its place in its submission: a submission's sequences are anchors in this order
    ids: list[int] = field(default_factory=list)
    type_ids: list[int] | None = None
    timing: Timing = field(default_factory=Timing)


BatchObserver = Callable[[int, int], None]  # (batch size, padded batch tokens); called from inference threads
QueueSizeObserver = Callable[[int], None]  # queued + running sequences


class Admission:
    """What a batcher holds (sequences queued or running) and its bound: the one place that admits work or refuses
    it, and says when to retry. Event-loop thread only, except `throughput`, which the inference threads refresh."""

    def __init__(self, name: str, limit: int, on_size: QueueSizeObserver) -> None:
        self.name = name
        self.limit = limit
        self.load = 0
        self.closed = False
        self.throughput = 100.0  # sequences/s, refreshed per batch; only used for Retry-After
        self.on_size = on_size

    def admit(self, count: int) -> None:
        if self.closed:
            raise NotReady(f"model {self.name} is shutting down")
        if count > self.limit:  # refused for ever, not just now: invalid (422), never a retry (429)
            raise InvalidInput(f"the request needs {count} sequences, over the queue limit of {self.limit} of model "
                               f"{self.name} (BERTSERVE_MAX_QUEUE_SIZE): it could never be queued; send fewer texts "
                               "(an explanation also counts one sequence per feature)")
        if self.load + count > self.limit:
            raise Overloaded(
                f"model {self.name} has {self.load} sequences queued or running (limit {self.limit})",
                retry_after_s=max(1, math.ceil(self.load / self.throughput)),
            )
        self.load += count
        self.on_size(self.load)


class Batcher:
    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_size: int,
        max_batch_padding: float | None = None,
        parallel: int = 1,
        name: str = "model",
        on_batch: BatchObserver | None = None,
        on_queue_size: QueueSizeObserver | None = None,
    ) -> None:
        if max_batch_tokens < model.max_length:
            raise ValueError(
                f"max_batch_tokens ({max_batch_tokens}) is below the max length of model {name} "
                f"({model.max_length}): a full-length input could never be scheduled"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_padding = math.inf if max_batch_padding is None else max_batch_padding
        self.parallel = parallel  # batches that may run at once (one per engine session)
        self.name = name
        self._on_batch = on_batch or (lambda size, tokens: None)
        self._on_queue_size = on_queue_size or (lambda size: None)
        self.admission = Admission(name, max_queue_size, self._on_queue_size)
        # Shared with the worker threads, under _lock:
        self._lock = threading.Lock()
        self._have_incoming = threading.Condition(self._lock)
        self._have_ready = threading.Condition(self._lock)
        self._incoming: list[_Item] = []
        self._ready: list[_Item] = []
        self._running = 0  # batches on an engine now
        self._tokenizing = False  # the tokenize thread holds items it has taken from _incoming
        self._widened = False  # the running batch is on the wide session: nothing else starts
        self._can_widen = getattr(model, "wide", None) is not None and parallel > 1
        self.batches = {"wide": 0, "per-core": 0}  # batches run on each path (/models)
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turns = 0  # the last number drawn for the round (under _lock)

    # ---- public ----

    @property
    def load(self) -> int:
        """Sequences admitted and not finished (queued + running)."""
        return self.admission.load

    @property
    def max_queue_size(self) -> int:
        return self.admission.limit

    def start(self) -> None:
        """Start the worker threads; call from the event loop that will submit()."""
        self._loop = asyncio.get_running_loop()
        targets = [(self._tokenize_worker, "tokenize")] + [(self._infer_worker, f"infer{k}") for k in range(self.parallel)]
        self._threads = [threading.Thread(target=t, name=f"{n}-{self.name}", daemon=True) for t, n in targets]
        for thread in self._threads:
            thread.start()

    async def submit(self, texts: list[TextInput | Encoded], truncate: bool = True) -> list[tuple[Any, Timing]]:
        """Results (row, timing) in the order of `texts`. Leaving early (error, timeout, cancellation)
        cancels this call's sequences, which the pipeline then drops."""
        self.admission.admit(len(texts))
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        turn = _Turn()  # its place in the round: batches take from concurrent submissions in turn
        items = [_Item(text, truncate, loop.create_future(), now, turn, k) for k, text in enumerate(texts)]
        for item in items:
            item.future.add_done_callback(self._release)
        with self._lock:
            self._turns += 1
            turn.number = self._turns  # at the back of the round
            # Alone and small: encoded here, straight to the inference threads (see the module docstring).
            inline = not (self._incoming or self._ready or self._running or self._tokenizing or self._closed) \
                and sum(_chars(item.text) for item in items) <= INLINE_CHARS
            if not inline:
                self._incoming.extend(items)
                self._have_incoming.notify()
        if inline:
            self._tokenize(items)
        try:
            return [await item.future for item in items]
        finally:
            for item in items:
                item.future.cancel()  # no-op for finished ones

    async def close(self) -> None:
        """Stop the worker threads (a running batch finishes) and fail whatever is still waiting; call after
        draining."""
        with self._lock:
            self._closed = self.admission.closed = True
            self._have_incoming.notify_all()
            self._have_ready.notify_all()
            left = self._incoming + self._ready
            self._incoming, self._ready = [], []
        await asyncio.to_thread(self._join)
        for item in left:
            if not item.future.done():
                item.future.set_exception(NotReady(f"model {self.name} was unloaded"))
        self._on_queue_size(0)

    def _join(self) -> None:
        """Wait for the worker threads, all within JOIN_S: they stop after their current step (a batch, a chunk),
        and a stuck one never holds a shutdown (they are daemon threads)."""
        deadline = time.monotonic() + JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("model %s: thread %s still busy at close; not waiting for it", self.name, thread.name)

    async def drained(self, poll_s: float = 0.01) -> None:
        while self.admission.load:
            await asyncio.sleep(poll_s)

    # ---- event-loop side ----

    def _release(self, future: asyncio.Future) -> None:
        self.admission.load -= 1
        if future.cancelled():  # answered ones are reported once per batch, in _settle
            self._on_queue_size(self.admission.load)

    def _settle(self, outcomes: list[tuple[_Item, Any, BaseException | None]]) -> None:
        """Answer futures (in the event loop): a result, or an exception where one is given. The load gauge is
        written once here, not per sequence (their done-callbacks, which lower the load, run right after this)."""
        answered = 0
        for item, result, error in outcomes:
            if item.future.done():
                continue
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)
            answered += 1
        self._on_queue_size(self.admission.load - answered)

    def _answer(self, outcomes: list[tuple[_Item, Any, BaseException | None]]) -> None:
        """Hand outcomes from a worker thread to the event loop, in one wake-up."""
        try:
            self._loop.call_soon_threadsafe(self._settle, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # ---- worker threads ----

    def _tokenize_worker(self) -> None:
        items: list[_Item] = []  # taken from _incoming and not encoded yet
        while True:
            with self._lock:
                while not (self._incoming or items or self._closed):
                    self._have_incoming.wait()
                # Arrivals go before what is left of earlier ones: a small request waits one chunk at most.
                items, self._incoming = self._incoming + items, []
                closed = self._closed
                self._tokenizing = bool(items) and not closed
            if closed:  # what close() could not see (taken from _incoming) is answered here
                if items:
                    self._unloaded(items)
                return
            last = _chunk_end(items, CHUNK_CHARS)
            # A plain attribute read outside the event loop, as in _cut: at worst one more text is encoded.
            chunk = [item for item in items[:last] if not item.future.done()]
            items = items[last:]
            if chunk:
                self._tokenize(chunk)
            if not items:
                with self._lock:
                    self._tokenizing = False  # it holds nothing now (read by submit)

    def _tokenize(self, items: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            # Sequences submitted already encoded (a long text's windows: app.tokenizer.windows) pass through.
            texts = [i.text for i in items if not isinstance(i.text, Encoded)]
            fresh = iter(self.model.encode(texts) if texts else [])
            encoded = [i.text if isinstance(i.text, Encoded) else next(fresh) for i in items]
        except Exception as exc:  # logged without its message: it may quote the texts
            log.error("tokenization failed for model %s (%d texts): %s", self.name, len(items),
                      exception_summary(exc))
            self._answer([(item, None, BackendError("tokenization failed")) for item in items])
            return
        elapsed = time.perf_counter() - start
        refused = []
        with self._lock:
            closed = self._closed  # then close() has answered what it found; these it could not see
            for item, enc in zip(items, encoded, strict=True):
                if closed or (enc.truncated and not item.truncate):
                    refused.append((item, None, NotReady(f"model {self.name} was unloaded") if closed
                                    else too_long(self.model.max_length, self.name)))
                    continue
                item.ids, item.type_ids = enc.ids, enc.type_ids
                item.timing.tokenize_s, item.timing.truncated = elapsed, enc.truncated
                self._ready.append(item)
            self._have_ready.notify(self.parallel)
        if refused:
            self._answer(refused)

    def _unloaded(self, items: list[_Item]) -> None:
        error = NotReady(f"model {self.name} was unloaded")
        self._answer([(item, None, error) for item in items])

    def _infer_worker(self) -> None:
        """Take the next batch as soon as this thread's session is free, run it, answer it."""
        while True:
            with self._lock:
                while not (batch := [] if self._widened else self._cut()) and not self._closed:
                    self._have_ready.wait()
                if not batch:
                    return
                # Alone (nothing else running or ready): the wide session, all cores on this one batch.
                wide = self._can_widen and self._running == 0 and not self._ready
                self._running += 1
                self._widened = wide
                self.batches["wide" if wide else "per-core"] += 1
            start = time.perf_counter()
            try:
                rows = self._run(batch, wide)
            except Exception as exc:  # logged without its message: it may quote the inputs
                log.error("inference failed for model %s (batch of %d, longest %d tokens): %s", self.name, len(batch),
                          max(len(i.ids) for i in batch), exception_summary(exc))
                self._answer([(item, None, BackendError("inference failed")) for item in batch])
                continue
            finally:
                with self._lock:
                    self._running -= 1
                    if wide:
                        self._widened = False
                        self._have_ready.notify_all()
            elapsed = time.perf_counter() - start
            padded = len(batch) * max(len(i.ids) for i in batch)
            for item in batch:
                timing = item.timing
                timing.queue_s = start - item.enqueued - timing.tokenize_s
                timing.inference_s, timing.started = elapsed, start
                timing.batch_size, timing.tokens, timing.batch_tokens = len(batch), len(item.ids), padded
            self._answer([(item, (rows[row], item.timing), None) for row, item in enumerate(batch)])
            # Bookkeeping after the answer is on its way, not before it.
            admission = self.admission
            sessions = 1 if wide else self.parallel  # the machine's rate: a wide batch had every core
            admission.throughput = 0.8 * admission.throughput + 0.2 * sessions * len(batch) / max(elapsed, 1e-6)
            self._on_batch(len(batch), padded)

    def _run(self, batch: list[_Item], wide: bool) -> Any:
        sequences = [i.ids for i in batch]
        typed = any(i.type_ids is not None for i in batch)
        # Only a batch holding a pair passes type ids, only a wide one says so: models that never see either keep
        # infer(sequences).
        args = (sequences, [i.type_ids for i in batch]) if typed else (sequences,)
        return self.model.infer(*args, wide=True) if wide else self.model.infer(*args)

    def _cut(self) -> list[_Item]:
        """Take the next batch out of the ready sequences (see cut_batch). Caller holds _lock."""
        # future.done() is read outside the event loop: a plain attribute read; at worst a sequence cancelled
        # this instant still runs, and its answer is dropped.
        ready = sorted((i for i in self._ready if not i.future.done()), key=lambda i: len(i.ids))
        if not ready:
            self._ready = []
            return []
        # The anchor: the earliest ready sequence of the submission whose turn it is; that one goes to the back.
        anchor = min(range(len(ready)), key=lambda k: (ready[k].turn.number, ready[k].index))
        self._turns += 1
        ready[anchor].turn.number = self._turns
        lo, hi = cut_batch([len(i.ids) for i in ready], anchor, self.max_batch_size, self.max_batch_tokens,
                           self.max_batch_padding)
        batch = ready[lo:hi]
        self._ready = ready[:lo] + ready[hi:]
        return batch


def _chars(text: TextInput | Encoded) -> int:
    """Characters of a text, or of both texts of a pair (an encoded sequence: none left to encode)."""
    if isinstance(text, Encoded):
        return 0
    return len(text) if type(text) is str else len(text[0]) + len(text[1])


def _chunk_end(items: list[_Item], max_chars: int) -> int:
    """How many of `items`, from the first, make about max_chars characters of text (at least one)."""
    total = 0
    for k, item in enumerate(items):
        total += _chars(item.text)
        if total >= max_chars:
            return k + 1
    return len(items)


def cut_batch(lengths: list[int], anchor: int, max_size: int, max_tokens: int, max_padding: float) -> tuple[int, int]:
    """The batch rule, pure: given token lengths sorted ascending and the index of the anchor (whose turn it is), the
    slice [lo, hi) to run next. It grows around the anchor, nearest length first, while the batch stays within max_size
    sequences, max_tokens padded tokens (longest x count) and max_padding padded tokens per real token."""
    lo, hi = anchor, anchor + 1  # the batch is lengths[lo:hi]; its padded width is lengths[hi - 1]
    base = real = lengths[anchor]  # real: the batch's unpadded tokens

    def fits(width: int, joining: int) -> bool:
        padded = width * (hi - lo + 1)
        return padded <= max_tokens and padded <= (1 + max_padding) * (real + joining)

    while hi - lo < max_size:
        right_fits = hi < len(lengths) and fits(lengths[hi], lengths[hi])
        left_fits = lo > 0 and fits(lengths[hi - 1], lengths[lo - 1])
        if right_fits and (not left_fits or lengths[hi] - base <= base - lengths[lo - 1]):
            real += lengths[hi]
            hi += 1
        elif left_fits:
            real += lengths[lo - 1]
            lo -= 1
        else:
            break
    return lo, hi

