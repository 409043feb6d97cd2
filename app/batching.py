"""Dynamic batcher: asyncio in front, tokenization and inference each in their own worker thread.

Pipeline, per model:  submit() -> [incoming] -> tokenize thread -> [ready] -> inference thread -> futures.
- Continuous: whenever an engine slot is free and sequences are ready, a batch runs at once; there is no wait
  timer, so a lone request pays no batching delay. With `parallel` > 1 (several single-thread sessions, the
  fastest layout on a small CPU), that many batches run at once, all cut from the one queue.
- A batch is cut around the oldest ready sequence (nobody starves) from the ready sequences sorted by token
  length, taking the nearest lengths first, within max_batch_size and max_batch_tokens (longest x count).
- Tokenization of new arrivals overlaps the running batch.
- Admission is bounded: past max_queue_size queued + running sequences, submit() raises Overloaded at once.
- Sequences whose caller has gone (future cancelled: timeout, disconnect) are skipped before inference.

No web framework here: it is driven and tested with plain asyncio and a fake model.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.errors import BackendError, InvalidInput, NotReady, Overloaded
from app.tokenizer import Encoded

log = logging.getLogger("bertserve.batching")


class BatchModel(Protocol):
    max_length: int

    def encode(self, texts: list[str]) -> list[Encoded]: ...

    def infer(self, sequences: list[list[int]]) -> Any:
        """Run one batch; returns something indexable by row (one row per sequence, in order). Called from up to
        `parallel` threads at once."""


@dataclass(slots=True)
class Timing:
    tokenize_s: float = 0.0
    queue_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0


@dataclass(slots=True, eq=False)
class _Item:
    text: str
    truncate: bool
    future: asyncio.Future
    enqueued: float
    ids: list[int] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)


BatchObserver = Callable[[int, int], None]  # (batch size, padded batch tokens)
LoadObserver = Callable[[int], None]  # queued + running sequences


class Batcher:
    def __init__(
        self,
        model: BatchModel,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue_size: int,
        parallel: int = 1,
        name: str = "model",
        on_batch: BatchObserver | None = None,
        on_load: LoadObserver | None = None,
    ) -> None:
        if max_batch_tokens < model.max_length:
            raise ValueError(
                f"max_batch_tokens ({max_batch_tokens}) is below the max length of model {name} "
                f"({model.max_length}): a full-length input could never be scheduled"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_size = max_queue_size
        self.parallel = parallel  # batches that may run at once (one per engine session)
        self.name = name
        self._on_batch = on_batch or (lambda size, tokens: None)
        self._on_load = on_load or (lambda load: None)
        self._incoming: list[_Item] = []
        self._ready: list[_Item] = []
        self._load = 0
        self._have_incoming = asyncio.Event()
        self._have_ready = asyncio.Event()
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{name}")
        self._infer_pool = ThreadPoolExecutor(parallel, thread_name_prefix=f"infer-{name}")
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._throughput = 100.0  # sequences/s, refreshed per batch; only used for Retry-After

    # ---- public ----

    @property
    def load(self) -> int:
        """Sequences admitted and not finished (queued + running)."""
        return self._load

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._tokenize_loop(), name=f"tokenize-{self.name}"),
            asyncio.create_task(self._infer_loop(), name=f"infer-{self.name}"),
        ]

    async def submit(self, texts: list[str], truncate: bool = True) -> list[tuple[Any, Timing]]:
        """Results (row, timing) in the order of `texts`. Leaving early (error, timeout, cancellation)
        cancels this call's sequences, which the pipeline then drops."""
        if self._closed:
            raise NotReady(f"model {self.name} is shutting down")
        if self._load + len(texts) > self.max_queue_size:
            raise Overloaded(
                f"model {self.name} has {self._load} sequences queued or running (limit {self.max_queue_size})",
                retry_after_s=max(1, math.ceil(self._load / self._throughput)),
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        items = [_Item(text, truncate, loop.create_future(), now) for text in texts]
        for item in items:
            item.future.add_done_callback(self._release)
        self._load += len(items)
        self._on_load(self._load)
        self._incoming.extend(items)
        self._have_incoming.set()
        try:
            return [await item.future for item in items]
        finally:
            for item in items:
                item.future.cancel()  # no-op for finished ones

    async def close(self) -> None:
        """Stop the loops and fail whatever is still waiting; call after draining."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self._incoming + self._ready:
            if not item.future.done():
                item.future.set_exception(NotReady(f"model {self.name} was unloaded"))
        self._incoming.clear()
        self._ready.clear()
        self._tokenize_pool.shutdown(wait=True)
        self._infer_pool.shutdown(wait=True)

    async def drained(self, poll_s: float = 0.01) -> None:
        while self._load:
            await asyncio.sleep(poll_s)

    # ---- pipeline ----

    def _release(self, _future: asyncio.Future) -> None:
        self._load -= 1
        self._on_load(self._load)

    async def _tokenize_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._have_incoming.wait()
            self._have_incoming.clear()
            items = [item for item in self._incoming if not item.future.done()]
            self._incoming.clear()
            if not items:
                continue
            start = time.perf_counter()
            try:
                encoded = await loop.run_in_executor(self._tokenize_pool, self.model.encode, [i.text for i in items])
            except Exception:
                log.exception("tokenization failed for model %s", self.name)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(BackendError("tokenization failed"))
                continue
            elapsed = time.perf_counter() - start
            for item, enc in zip(items, encoded, strict=True):
                if enc.truncated and not item.truncate:
                    if not item.future.done():
                        item.future.set_exception(
                            InvalidInput(
                                f"an input is longer than the {self.model.max_length} tokens model "
                                f"{self.name} accepts and truncate is false"
                            )
                        )
                    continue
                item.ids = enc.ids
                item.timing.tokenize_s = elapsed
                self._ready.append(item)
            self._have_ready.set()

    async def _infer_loop(self) -> None:
        """Dispatch a batch whenever an engine slot is free and sequences are ready."""
        running: set[asyncio.Task] = set()

        def finished(task: asyncio.Task) -> None:
            running.discard(task)
            self._have_ready.set()  # a slot is free: look at the queue again

        try:
            while True:
                await self._have_ready.wait()
                self._have_ready.clear()
                while len(running) < self.parallel and (batch := self._cut()):
                    task = asyncio.create_task(self._run(batch))
                    running.add(task)
                    task.add_done_callback(finished)
        finally:
            for task in running:
                task.cancel()

    async def _run(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            rows = await asyncio.get_running_loop().run_in_executor(
                self._infer_pool, self.model.infer, [i.ids for i in batch]
            )
        except Exception:
            log.exception("inference failed for model %s (batch of %d)", self.name, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BackendError("inference failed"))
            return
        elapsed = time.perf_counter() - start
        rate = self.parallel * len(batch) / max(elapsed, 1e-6)
        self._throughput = 0.8 * self._throughput + 0.2 * rate
        self._on_batch(len(batch), len(batch) * max(len(i.ids) for i in batch))
        for row, item in enumerate(batch):
            if not item.future.done():
                item.timing.queue_s = start - item.enqueued - item.timing.tokenize_s
                item.timing.inference_s = elapsed
                item.timing.batch_size = len(batch)
                item.future.set_result((rows[row], item.timing))

    def _cut(self) -> list[_Item]:
        """Take the next batch out of the ready sequences (see the module docstring)."""
        ready = sorted((i for i in self._ready if not i.future.done()), key=lambda i: len(i.ids))
        if not ready:
            self._ready = []
            return []
        anchor = min(range(len(ready)), key=lambda k: ready[k].enqueued)
        lo, hi = anchor, anchor + 1  # the batch is ready[lo:hi]; its padded width is len(ready[hi - 1].ids)
        base = len(ready[anchor].ids)
        while hi - lo < self.max_batch_size:
            right_fits = hi < len(ready) and len(ready[hi].ids) * (hi - lo + 1) <= self.max_batch_tokens
            left_fits = lo > 0 and len(ready[hi - 1].ids) * (hi - lo + 1) <= self.max_batch_tokens
            if right_fits and (not left_fits or len(ready[hi].ids) - base <= base - len(ready[lo - 1].ids)):
                hi += 1
            elif left_fits:
                lo -= 1
            else:
                break
        batch = ready[lo:hi]
        self._ready = ready[:lo] + ready[hi:]
        return batch

