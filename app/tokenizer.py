"""Fast (Rust) tokenizer: batch encoding with explicit truncation, and padding into engine arrays.

A text is never encoded far past what the model can read: a long text is encoded from a prefix (see
TextTokenizer._encode), so the cost of a request is bounded by max_length, not by the bytes sent.

An input is a text or a pair of texts (TextInput): a pair is encoded with the model's own pair template (the
tokenizer.json post-processor: [CLS] a [SEP] b [SEP], <s> a </s></s> b </s>, ...) and its type ids, truncated
longest_first as transformers does; everything past the tokenizer only carries the value."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from app.errors import InvalidInput

# Where a text may be cut with the words before the cut tokenized as in the whole text: the whitespace every
# BERT-family pre-tokenizer splits on (not Python's \s, which takes in control characters that BERT's normalizer
# deletes, joining the words around them).
BREAK = re.compile(r"[ \t\n\r]")
CHARS_PER_TOKEN = 16  # the first prefix tried: max_length x this many characters (English runs ~4-5 per token)
GROWTH = 4  # a prefix that does not fill max_length is tried again this many times longer...
MAX_CHARS_PER_TOKEN = 512  # ...up to max_length x this many characters: past them nothing more is read
SLACK = 256  # a prefix ends at a word break within this many characters of its bound, else at the bound itself


# One text, or a pair (premise and hypothesis, query and passage) encoded together as the model was trained on.
TextInput = str | tuple[str, str]


@dataclass(slots=True)
class Encoded:
    ids: list[int]
    truncated: bool
    type_ids: list[int] | None = None  # None: all zero (every single text of the usual templates)
    # Token models only (app.tokens): each token's character offsets into the text and its special-token mask.
    offsets: list[tuple[int, int]] | None = None
    special: list[int] | None = None


class TextTokenizer:
    def __init__(self, path: Path, max_length: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        # tokenizer.json files saved by transformers carry stale padding/truncation settings: set both here.
        self._tokenizer.no_padding()
        # longest_first: a pair loses tokens from its longer side first (transformers' truncation=True).
        self._tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        self.max_length = max_length
        self.prefix_chars = max_length * CHARS_PER_TOKEN
        self.max_chars = max_length * MAX_CHARS_PER_TOKEN
        self.pad_id = self._tokenizer.padding["pad_id"] if self._tokenizer.padding else self._find_pad_id()
        # A template that gives single texts type ids other than 0 (rare): then they are carried for texts too.
        self._typed_texts = any(self._tokenizer.encode("a").type_ids)
        # Windows (truncate false) need per-request truncation settings (the stride): their own tokenizer, one
        # request at a time, so the batcher's is never reconfigured under it.
        self._path = path
        self.path = path
        self._windowing: Tokenizer | None = None
        self._window_lock = threading.Lock()

    def default_stride(self) -> int:
        """The overlap between a long text's windows when a request names none: a quarter of max_length."""
        return self.max_length // 4

    def windows(self, inputs: list[TextInput], stride: int, budget: int, offsets: bool = False
                ) -> list[list[Encoded]]:
        """Each input as the overlapping windows of at most max_length tokens that read all of it (one window when
        it fits): consecutive windows share `stride` tokens, as transformers' `return_overflowing_tokens` with
        `stride` makes them. A pair keeps its first text whole in every window and windows the second (as
        question answering does). Together at most `budget` windows: past it InvalidInput naming
        BERTSERVE_MAX_REQUEST_SEQUENCES, found before a text is read further than the budget's windows could
        cover (a prefix, as _encode reads one). `offsets`: each window carries its tokens' character offsets and
        special-token mask (token models). Blocking: call it in a worker thread."""
        with self._window_lock:
            self.window_tokenizer()
            out: list[list[Encoded]] = []
            left = budget
            for one in inputs:
                out.append(self._windows_of(one, stride, left, budget, offsets))
                left -= len(out[-1])
            return out

    def window_tokenizer(self) -> Tokenizer:
        """The windows' own tokenizer, made on first use (most models never window)."""
        if self._windowing is None:
            self._windowing = Tokenizer.from_file(str(self._path))
            self._windowing.no_padding()
        return self._windowing

    def _windows_of(self, one: TextInput, stride: int, left: int, budget: int, offsets: bool = False
                    ) -> list[Encoded]:
        tokenizer = self._windowing
        assert tokenizer is not None
        pair = type(one) is not str
        first, long = (one[0], one[1]) if pair else (None, one)  # type: ignore[index]
        room = self.max_length - tokenizer.num_special_tokens_to_add(pair)
        if pair:
            room -= len(tokenizer.encode(first, add_special_tokens=False).ids)
        if room <= stride:
            whose = "the room the first text of a pair leaves" if pair else "the tokens a window holds"
            raise InvalidInput(f"stride {stride} must be below {whose} ({max(room, 0)} of the model's "
                               f"{self.max_length}); send a smaller stride" + (" or a shorter first text" if pair
                                                                                else ""))
        tokenizer.enable_truncation(max_length=self.max_length, stride=stride,
                                    strategy="only_second" if pair else "longest_first")
        covered = room + max(left - 1, 0) * (room - stride)  # tokens of the long side `left` windows can read
        limit, last_limit = covered * CHARS_PER_TOKEN, covered * MAX_CHARS_PER_TOKEN
        while True:
            cut, _ = _prefix(long, limit)
            encoding = tokenizer.encode(first, cut) if pair else tokenizer.encode(cut)
            found = [encoding, *encoding.overflowing]
            if len(found) > left:
                raise InvalidInput(f"a text needs more windows than the {budget} sequences one request may make the "
                                   "model score (BERTSERVE_MAX_REQUEST_SEQUENCES): send shorter texts, fewer texts, "
                                   "a smaller stride, or truncate true")
            whole = len(cut) == len(long)
            if whole or limit >= last_limit:
                windows = [_with_offsets(e, False) if offsets else _typed(e, False) for e in found]
                windows[-1].truncated = not whole  # read from its first characters only: counted as cut
                return windows
            limit = min(limit * GROWTH, last_limit)

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def encode(self, inputs: list[TextInput]) -> list[Encoded]:
        """Tokenize a batch in parallel (the Rust side releases the GIL). Truncates to max_length."""
        if not self._typed_texts and all(type(text) is str for text in inputs):  # texts only: as ever
            texts: list[str] = inputs  # type: ignore[assignment]
            if all(len(text) <= self.prefix_chars for text in texts):  # the usual case: one plain call
                return [Encoded(e.ids, bool(e.overflowing)) for e in self._tokenizer.encode_batch(texts)]
            return [Encoded(e.ids, bool(e.overflowing) or read < len(text))
                    for text, (e, read) in zip(texts, self._encode(texts), strict=True)]
        out: list[Encoded | None] = [None] * len(inputs)
        singles = [k for k, one in enumerate(inputs) if type(one) is str]
        for k, (e, read) in zip(singles, self._encode([inputs[k] for k in singles]), strict=True):  # type: ignore
            out[k] = _typed(e, bool(e.overflowing) or read < len(inputs[k]))
        pairs = [k for k, one in enumerate(inputs) if type(one) is not str]
        cut = self._shorten([inputs[k] for k in pairs])  # type: ignore[misc]
        for k, pair, e in zip(pairs, cut, self._tokenizer.encode_batch(cut), strict=True):
            out[k] = _typed(e, bool(e.overflowing) or pair != inputs[k])
        return out  # type: ignore[return-value]

    def encode_tokens(self, texts: list[str]) -> list[Encoded]:
        """Texts cut to max_length (as `encode`), each carrying its tokens' offsets and special-token mask (token
        models, truncate true). Blocking: call it in a worker thread."""
        return [_with_offsets(e, bool(e.overflowing) or read < len(text))
                for text, (e, read) in zip(texts, self._encode(texts), strict=True)]

    def _shorten(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Each side cut to about what a pair may keep of it: a side with more tokens than max_length as a text
        alone (encoded from a prefix, as _encode does) ends at the first word break past its first max_length
        tokens (within SLACK characters, else where _encode's prefix ends). The tokens are a full encode's:
        longest_first keeps of a side no more than it alone keeps (a pair template adds as many special tokens
        or more) and depends on a side's length only up to that; those lie in words before the cut, which
        tokenize as in the whole side. So a pair costs about two long texts however long its sides are, and the
        tokenizer's pair truncation (which pairs every overflowing chunk of one side with every chunk of the
        other) has little to cut. A side read from its first max_chars
        characters only, as a long text can be, makes the pair count as truncated."""
        sides = [side for pair in pairs for side in pair]
        for k, (encoding, read) in enumerate(self._encode(sides)):
            if encoding.overflowing:
                end = _read(encoding)
                found = BREAK.search(sides[k], end, end + SLACK)
                read = min(read, found.start()) if found else read
            sides[k] = sides[k][:read]
        return list(zip(sides[::2], sides[1::2], strict=True))

    def read(self, texts: list[str]) -> list[int]:
        """Per text, how many of its characters the model reads: all, or up to the end of the last token that
        fits in max_length."""
        return [_read(e) if e.overflowing else read for e, read in self._encode(texts)]

    def _encode(self, texts: list[str]) -> list[tuple[Encoding, int]]:
        """The encodings of the texts, truncated to max_length, and the length of the prefix each was computed
        from. A text longer than prefix_chars is cut at the first word break past that bound (or at the bound
        when none comes within SLACK characters: CJK, long runs without spaces) and the prefix encoded. If the
        prefix already overflows max_length, the tokens kept are those of the whole text — the words before a
        break tokenize the same whatever follows, and a cut elsewhere is accepted only when the tokens kept end
        SLACK characters before it — else a prefix GROWTH times longer is tried, up to max_chars. So a text
        costs about max_length tokens however long it is, and the ids are a full encode's whenever what the model
        reads lies in the first max_chars characters (a text that packs fewer than max_length tokens into them —
        runs of spaces, words of hundreds of letters — is read from those characters only, and counts as
        truncated)."""
        limit = self.prefix_chars
        out: list[tuple[Encoding, int] | None] = [None] * len(texts)
        todo = list(range(len(texts)))
        while todo:
            last = limit >= self.max_chars
            cuts = [_prefix(texts[k], limit) for k in todo]
            left = []
            for k, (cut, forced), encoding in zip(todo, cuts, self._tokenizer.encode_batch([c for c, _ in cuts]),
                                                  strict=True):
                whole = len(cut) == len(texts[k])
                if last or whole or (encoding.overflowing and (not forced or _read(encoding) <= len(cut) - SLACK)):
                    out[k] = encoding, len(cut)
                else:
                    left.append(k)
            todo, limit = left, min(limit * GROWTH, self.max_chars)
        return out


def _typed(encoding: Encoding, truncated: bool) -> Encoded:
    types = encoding.type_ids
    return Encoded(encoding.ids, truncated, types if any(types) else None)


def _with_offsets(encoding: Encoding, truncated: bool) -> Encoded:
    """A token model's sequence: ids, offsets and special-token mask (texts only: no type ids)."""
    types = encoding.type_ids
    return Encoded(encoding.ids, truncated, types if any(types) else None, encoding.offsets,
                   encoding.special_tokens_mask)


def _read(encoding: Encoding) -> int:
    """Where the tokens an encoding keeps end in its text (characters)."""
    return max(end for _, end in encoding.offsets)


def _prefix(text: str, limit: int) -> tuple[str, bool]:
    """The text up to its first word break at or past `limit` characters, else up to `limit` (forced: True) when
    no break comes within SLACK; all of it when it is that short."""
    if len(text) <= limit:
        return text, False
    found = BREAK.search(text, limit, limit + SLACK)
    return (text[:found.start()], False) if found else (text[:limit], True)


def pad(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest sequence: (input_ids, attention_mask) as int64 arrays."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max())
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
    attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return input_ids, attention_mask


def pad_types(type_ids: list[list[int] | None], width: int) -> np.ndarray:
    """token_type_ids for a padded batch: each row's type ids (None: all zero), zero-padded to `width`."""
    token_type_ids = np.zeros((len(type_ids), width), dtype=np.int64)
    for row, types in enumerate(type_ids):
        if types is not None:
            token_type_ids[row, : len(types)] = types
    return token_type_ids
