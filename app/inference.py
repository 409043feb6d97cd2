"""The inference core: one classification (or explanation) request from texts to scores. Admission (draining,
inputs per request), the deadline, the version the router picks, its batcher, the score function, and the
per-request metrics; then, when the model has a shadow version, the shadow comparison (after the answer, only
while the shadow has room)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.batching import too_long
from app.errors import DeadlineExceeded, InvalidInput, NotReady, ShuttingDown
from app.explain import Feature, features, occluded, read_part, weights
from app.logs import exception_summary
from app.record import current
from app.registry import Registry
from app.router import Router
from app.scores import Head, ScoreFunction, WindowAggregation, aggregate
from app.served import ServedModel
from app.settings import Settings
from app.tokenizer import TextInput

if TYPE_CHECKING:
    from app.tokens import Window

log = logging.getLogger("bertserve.inference")

# The one hook of a request into the version chosen for it, called before anything is queued: given that version
# and the request's texts, the sequences to submit (an explanation: each text and its variants). It may refuse the
# version (InvalidInput: a reranker's head, an explanation's target label).
Prepare = Callable[[ServedModel, list[TextInput]], Awaitable[list[TextInput]]]

# Per text, how many windows it was read in (truncate false); filled by the windowing hook, once per request.
Windows = list[int]


@dataclass(frozen=True, slots=True)
class Explanation:
    served: ServedModel
    probabilities: np.ndarray  # the whole text's scores (the head's function), in label order
    label: int  # the explained label's index
    features: list[Feature]
    weights: list[float]  # per feature: the label's score lost without it
    read: int  # characters of the text explained: what the model reads (all of a text within max_length)


class Inference:
    def __init__(self, settings: Settings, registry: Registry, router: Router) -> None:
        self.settings = settings
        self.registry = registry
        self.router = router
        self._shadows: set[asyncio.Task] = set()  # running shadow comparisons (strong references until done)

    def timeout_s(self, asked_ms: float | None) -> float:
        """The request's deadline: what it asked for (or the default), within the server's bound."""
        return min(asked_ms or self.settings.request_timeout_ms, self.settings.max_request_timeout_ms) / 1000

    async def classify(
        self,
        texts: list[TextInput],
        *,
        model: str | None = None,
        version: int | None = None,
        truncate: bool = True,
        stride: int | None = None,
        window_aggregation: WindowAggregation = "mean",
        function: ScoreFunction | None = None,
        timeout_s: float,
        routing_key: str | None = None,
        max_inputs: int | None = None,
        prepare: Prepare | None = None,
    ) -> tuple[ServedModel, np.ndarray]:
        """Scores [len(texts), labels] in label order (each input a text or a pair: only the tokenizer looks
        inside), from the model version the router picks (the one named,
        else by the model's traffic weights, placed by `routing_key` when given): its head's function (app.scores,
        the text-classification pipeline's rule), or `function` when asked. Metrics and the shadow comparison
        always use the head's own scores. `max_inputs` replaces BERTSERVE_MAX_CLIENT_BATCH_SIZE for a caller with
        its own limit (reranking); `prepare` (see Prepare) may refuse the chosen version before anything is
        queued (reranking: a head that ranks nothing), and returns `texts` as they are: those are scored.
        `truncate` False reads a text longer than the model's max length whole, in overlapping windows
        (app.tokenizer: `stride` tokens shared, default a quarter of max_length; a pair's second text is
        windowed), all of the request's windows one submission within BERTSERVE_MAX_REQUEST_SEQUENCES, and
        answers the `window_aggregation` of their scores. The texts the model read only in part are counted on
        the request's record (X-Truncated-Texts) and in bertserve_truncated_texts."""
        limit = max_inputs or self.settings.max_client_batch_size
        if len(texts) > limit:
            raise InvalidInput(f"{len(texts)} inputs in one request; the limit is {limit}")

        windows: Windows = []
        if not truncate:
            prepare = self._windowed(prepare, stride, windows)
        # truncate false: the windows read every text whole, each within max_length (or the request is refused).
        served, rows = await self._run(texts, model, version, True, timeout_s, routing_key, prepare)
        record = current.get()  # the request's record (app.record), for its metrics, trace and answer
        if record is not None:
            record.text_count, record.rows = len(texts), rows
        logits = np.stack([row for row, _ in rows])
        head = served.head
        scores = head.scores(logits)
        asked = scores if function in (None, head.function) else head.scores(logits, function)
        timings = [timing for _, timing in rows]
        windowed = any(count > 1 for count in windows)
        if windowed:
            firsts = np.cumsum([0, *windows[:-1]]).tolist()
            scores, asked = (aggregate(s, windows, window_aggregation) for s in (scores, asked))
            cut = [any(t.truncated for t in timings[a:a + n]) for a, n in zip(firsts, windows, strict=True)]
            timings = [timings[a] for a in firsts]
            long = [n for n in windows if n > 1]
            served.metrics.windowed_texts.inc(len(long))
            served.metrics.windows.inc(sum(long))
        else:
            cut = [t.truncated for t in timings]
        truncated = sum(cut)
        if truncated:
            served.metrics.truncated.inc(truncated)
        if record is not None:
            record.truncated = truncated
            # For the prediction log (app.prediction_log): the answer by reference; zero-shot overwrites these
            record.task, record.head, record.texts = served.config.task, head, texts
            record.labels, record.scores = served.config.labels, scores
        served.metrics.observe(scores, timings)
        if (shadow := self.router.shadow_of(served)) is not None:
            if not windowed:
                self._shadow(shadow, texts, scores, head)
            else:  # windows: the shadow's sequences would differ from the ones scored here
                shadow.shadow_record.drop("windows", len(texts))
        return served, asked

    def _windowed(self, inner: Prepare | None, stride: int | None, windows: Windows) -> Prepare:
        """The hook that reads each text whole (after `inner`, when given): its windows, encoded here (in a
        worker thread) for the chosen version's tokenizer, within BERTSERVE_MAX_REQUEST_SEQUENCES."""
        async def prepare(served: ServedModel, texts: list[TextInput]) -> list[TextInput]:
            if inner is not None:
                texts = await inner(served, texts)
            step = served.tokenizer.default_stride() if stride is None else stride
            found = await asyncio.to_thread(served.tokenizer.windows, texts, step,
                                            self.settings.request_sequences_cap)
            windows[:] = [len(w) for w in found]
            return [window for text in found for window in text]  # type: ignore[misc]  # Encoded pass through
        return prepare

    async def task_of(self, model: str | None, version: int | None, routing_key: str | None,
                      timeout_s: float) -> str | None:
        """The task of the version the router would pick for this request (for a transport to dispatch on), once
        loading is done; None when none can be picked now (the request's own path then says why)."""
        if self.registry.loading:  # (no timeout scope when nothing is loading: the common case costs nothing)
            try:
                async with asyncio.timeout(timeout_s):
                    await self.registry.loaded()
            except TimeoutError:
                raise DeadlineExceeded(f"no answer within {timeout_s:.3f} s; the request was dropped") from None
        try:
            return self.router.resolve(model, version, routing_key).config.task
        except Exception:  # noqa: BLE001 - unknown model, none loaded: answered by the request's own path
            return None

    async def label_tokens(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        version: int | None = None,
        truncate: bool = False,
        stride: int | None = None,
        timeout_s: float,
        routing_key: str | None = None,
    ) -> tuple[ServedModel, list[list[Window]], int]:
        """A token-classification model's logits per token of each text (app.tokens: the rules): the version the
        router picks, which must label tokens (else 422 naming it and its task); each text encoded with its
        offsets in a worker thread — whole, in overlapping windows (truncate false: `stride` tokens shared,
        default a quarter of max_length, all the request's windows within BERTSERVE_MAX_REQUEST_SEQUENCES) or cut
        to max_length — and every sequence one submission to its batcher. Returns the version, per text its
        windows (one when it fits), and the stride used."""
        from app.tokens import check_model, windows_of

        if len(texts) > self.settings.max_client_batch_size:
            raise InvalidInput(f"{len(texts)} inputs in one request; the limit is {self.settings.max_client_batch_size}")
        encoded: list[list] = []
        used = [0]

        async def prepare(served: ServedModel, inputs: list[TextInput]) -> list[TextInput]:
            check_model(served)
            tokenizer = served.tokenizer
            if truncate:
                found = [[e] for e in await asyncio.to_thread(tokenizer.encode_tokens, inputs)]  # type: ignore
            else:
                used[0] = tokenizer.default_stride() if stride is None else stride
                found = await asyncio.to_thread(tokenizer.windows, inputs, used[0],
                                                self.settings.request_sequences_cap, True)
            for k, windows in enumerate(found):
                if all(all(w.special) for w in windows):  # nothing but special tokens: nothing to label
                    raise InvalidInput(f"inputs[{k}] holds no token to label (empty or only whitespace)")
            encoded[:] = found
            return [window for text in found for window in text]  # type: ignore[misc]  # Encoded pass through

        served, rows = await self._run(texts, model, version, True, timeout_s, routing_key, prepare,  # type: ignore
                                       tokens=True)
        record = current.get()
        if record is not None:
            record.text_count, record.rows = len(texts), rows
        counts = [len(windows) for windows in encoded]
        firsts = np.cumsum([0, *counts[:-1]]).tolist()
        timings = [timing for _, timing in rows]
        cut = sum(any(t.truncated for t in timings[a:a + n]) for a, n in zip(firsts, counts, strict=True))
        if cut:
            served.metrics.truncated.inc(cut)
        if record is not None:
            record.truncated = cut
        long = [n for n in counts if n > 1]
        if long:
            served.metrics.windowed_texts.inc(len(long))
            served.metrics.windows.inc(sum(long))
        served.metrics.observe_windows(sum(counts))
        served.metrics.observe_timings([timings[a] for a in firsts])
        if (shadow := self.router.shadow_of(served)) is not None:  # token answers are not compared (yet)
            shadow.shadow_record.drop("labels", len(texts))
        answers = [windows_of(windows, [row for row, _ in rows[a:a + n]])
                   for windows, a, n in zip(encoded, firsts, counts, strict=True)]
        return served, answers, used[0]

    async def explain(self, text: str, **options) -> Explanation:
        """One text's explanation (explain_many's options)."""
        return (await self.explain_many([text], **options))[0]

    async def explain_many(
        self,
        texts: list[str],
        *,
        model: str | None = None,
        version: int | None = None,
        truncate: bool = True,
        target: str | None = None,
        max_features: int,
        timeout_s: float,
        routing_key: str | None = None,
    ) -> list[Explanation]:
        """Each text's prediction and, for `target` (default: its top label), each feature's weight by occlusion
        (app.explain), over the part of the text the model reads (tokenized once, in a worker thread, to find
        it). Every text and all its occluded variants go to the version's batcher as one submission:
        sequences of at most max_length tokens, packed like any traffic, held to the same queue bound and
        deadline."""
        parts: list[tuple[int, list[Feature]]] = []  # per text: characters read, features

        async def variants(served: ServedModel, texts: list[TextInput]) -> list[TextInput]:
            if target is not None and target not in served.config.labels:
                raise InvalidInput(f"target is not a label of model {served.name}: {served.config.labels}")
            sequences: list[str] = []
            for text, read in zip(texts, await asyncio.to_thread(served.tokenizer.read, texts), strict=True):
                if read < len(text) and not truncate:
                    raise too_long(served.max_length, served.name)
                part = read_part(text, read)
                found = features(part, max_features)
                parts.append((len(part), found))
                sequences += [part] + [occluded(part, f) for f in found]
            return sequences

        # truncate=True: each variant is already within max_length (or the text was refused above).
        served, rows = await self._run(texts, model, version, True, timeout_s, routing_key, variants)
        if (record := current.get()) is not None:  # the request's record (app.record), for its metrics and trace
            record.text_count, record.rows = len(texts), rows
            record.truncated = sum(read < len(text) for text, (read, _) in zip(texts, parts, strict=True))
        probabilities = served.head.scores(np.stack([row for row, _ in rows]))
        answers, first = [], 0
        for read, found in parts:
            own = probabilities[first:first + len(found) + 1]
            served.metrics.observe(own[:1], [rows[first][1]])  # the prediction itself, not its variants
            label = served.config.labels.index(target) if target is not None else int(own[0].argmax())
            answers.append(Explanation(served, own[0], label, found, weights(own[0], own[1:], label), read))
            first += len(found) + 1
        return answers

    async def _run(self, texts: list[TextInput], model: str | None, version: int | None, truncate: bool,
                   timeout_s: float, routing_key: str | None,
                   prepare: Prepare | None = None, tokens: bool = False) -> tuple[ServedModel, list]:
        """Admission (draining), the deadline, the version the router picks, and one submission to its batcher
        (which refuses one that could never fit its queue: 422, not 429): the (row, timing) of each text (of the
        texts `prepare` makes for the version, when given)."""
        if self.registry.draining:
            raise ShuttingDown("the server is shutting down; retry on another replica")
        try:
            async with asyncio.timeout(timeout_s):
                if self.registry.loading:  # e.g. a worker replacing a dead one already gets connections: wait
                    await self.registry.loaded()
                # No await between choosing the version and entering its queue, so an unload that starts
                # afterwards finds this request in the queue and waits for it.
                served = self.router.resolve(model, version, routing_key)
                if served.token_model and not tokens:  # its engine answers per token: none of the sequence tasks
                    raise InvalidInput(f"model {served.name} (version {served.version}) is a token-classification "
                                       "model: it answers entities (POST /predict, KServe V2 infer), not this "
                                       "request's sequence scores")
                if prepare is not None:
                    texts = await prepare(served, texts)
                    # It awaited: the version may have started unloading meanwhile; ask for it again.
                    served = self.router.resolve(served.name, served.version)
                if (record := current.get()) is not None:
                    record.version = str(served.version)  # counted under it, however the request ends
                assert served.batcher is not None
                return served, await served.batcher.submit(texts, truncate)
        except TimeoutError:
            raise DeadlineExceeded(f"no answer within {timeout_s:.3f} s; the request was dropped") from None

    # ---- shadow ----

    def _shadow(self, shadow: ServedModel, texts: list[TextInput], answer: np.ndarray, head: Head) -> None:
        """Compare the answer with the shadow version's, after the answer: the task made here first runs when the
        request's task next yields, which is once its response has been written. Shadow work never waits: it is
        dropped unless the shadow's queue has room for it now (one round of batches: max_batch_size sequences
        per engine session, and within BERTSERVE_MAX_QUEUE_SIZE), so under load it goes first and real
        requests to that version are not refused because of it."""
        task = asyncio.create_task(self._compare(shadow, texts, answer, head),
                                   name=f"shadow-{shadow.name}:{shadow.version}")
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _compare(self, shadow: ServedModel, texts: list[TextInput], answer: np.ndarray, head: Head) -> None:
        """The shadow's scores against the answer's, decided by the answering version's head (app.scores.Head)."""
        record = shadow.shadow_record
        batcher = shadow.batcher
        labels = list(head.labels)
        # Other labels, or another score function: nothing to compare decisions by.
        if sorted(shadow.config.labels) != sorted(labels) or shadow.head.function != head.function:
            record.drop("labels", len(texts))
            return
        if self.registry.draining or batcher is None:
            record.drop("shutdown", len(texts))
            return
        room = min(batcher.max_queue_size, batcher.max_batch_size * batcher.parallel)
        if batcher.load + len(texts) > room:  # checked and entered with no await between
            record.drop("queue_full", len(texts))
            return
        try:
            async with asyncio.timeout(self.settings.request_timeout_ms / 1000):
                rows = await batcher.submit(texts, True)
            scores = shadow.head.scores(np.stack([row for row, _ in rows]))
            if shadow.config.labels != labels:  # the same labels in another order: the answer's order
                scores = scores[:, [shadow.config.labels.index(label) for label in labels]]
            agreed, differences = head.decisions(answer, scores)
        except asyncio.CancelledError:
            record.drop("shutdown", len(texts))
            raise
        except NotReady:  # unloaded or closing meanwhile
            record.drop("shutdown", len(texts))
            return
        except Exception as exc:  # never reaches an answer; logged without its message (it may quote the texts)
            log.error("shadow version %s:%d failed on %d text(s): %s", shadow.name, shadow.version, len(texts),
                      exception_summary(exc))
            record.drop("error", len(texts))
            return
        record.compared(agreed.tolist(), differences.tolist())

    async def idle(self) -> None:
        """Returns once no shadow comparison is running (tests and shutdown wait on it)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)

    async def close(self) -> None:
        """Cancel the shadow comparisons still running (counted as dropped: shutdown)."""
        for task in list(self._shadows):
            task.cancel()
        await self.idle()
