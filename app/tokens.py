"""Token classification (NER, PII), transport-neutral: each text's tokens labelled by a `*ForTokenClassification`
model and grouped into entities exactly as transformers' `pipeline("token-classification")`
(TokenClassificationPipeline) does. Every wire shape (/predict's `parameters.aggregation_strategy`, KServe V2)
parses into `label_tokens()`'s arguments and shapes its `Entities`.

The rules, in one place, each the pipeline's (its `gather_pre_entities`, `aggregate`, `aggregate_words`,
`group_entities` and `aggregate_overlapping_entities`, mirrored function by function below):
- per token a softmax over the labels; special tokens ([CLS], [SEP], <s>, padding) are skipped;
- `word` is the token (`convert_ids_to_tokens`), or the text under its offsets for the unknown token; a token is
  a subword by the tokenizer's continuing-subword prefix (WordPiece's "##") where it has one, else by the
  pipeline's fallback heuristic (no space right before it);
- strategies: `none` (per token: entity, score, index, word, start, end), `simple` (adjacent tokens of one tag
  grouped, B- starting a new group), `first`, `average`, `max` (each word's label from its first token, its
  tokens' mean scores, or its most confident token; then grouped as `simple`);
- `ignore_labels` (default ["O"]) dropped after aggregation; `start`/`end` are character offsets into the text
  as sent (Python string indices);
- a text longer than the model's max length (truncate false, bertserve's default for token models) is read in
  overlapping windows of max_length tokens sharing `stride` tokens (default: a quarter of max_length), each
  window's entities found on their own and merged by the pipeline's overlap rule (the longer entity wins, then
  the higher score) — what the pipeline does with `stride`. The pipeline refuses `stride` with strategy `none`;
  bertserve reads the windows anyway (entities past max_length never vanish silently) and answers each token
  once — of a token two windows read, the more confident answer, as the overlap rule keeps the more confident of
  two entities of one length — its `index` counted in the whole text's tokens (the pipeline's own index where a
  text fits in one window). truncate true cuts the text at max_length, as the pipeline without `stride`.

Limits: at most BERTSERVE_MAX_CLIENT_BATCH_SIZE texts, and all their windows within BERTSERVE_MAX_REQUEST_SEQUENCES
(found before a text is tokenized further than that: app.tokenizer.windows); a text with no token to label
(only whitespace) is a 422, pairs are a 422. Every window of the request goes to the version's batcher as one
submission (app.inference.Inference.label_tokens). No text, word or offset ever reaches a log line, a metric label
or an error here: entities are personal data by design (PII models)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from tokenizers import Tokenizer

from app.errors import InvalidInput
from app.record import current

if TYPE_CHECKING:
    from app.served import ServedModel
    from app.service import Service
    from app.tokenizer import Encoded

TASK = "token-classification"
Strategy = Literal["none", "simple", "first", "average", "max"]
STRATEGIES: tuple[str, ...] = ("none", "simple", "first", "average", "max")
DEFAULT_STRATEGY: Strategy = "simple"  # the Hugging Face Inference API's default (the pipeline's own is none)
DEFAULT_IGNORE = ("O",)
WORD_STRATEGIES = ("first", "average", "max")


# ---- what the pipeline reads of its tokenizer ----

@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer's parts the pipeline reads: id -> token, tokens -> string (its decoder, else joined by
    spaces: PreTrainedTokenizerFast.convert_tokens_to_string), the unknown token's id and whether the model marks
    subwords (a continuing-subword prefix)."""

    tokenizer: Tokenizer
    unk_id: int | None
    word_aware: bool

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        tokenizer = Tokenizer.from_file(str(path))
        unk = _unk_token(path.parent) or getattr(tokenizer.model, "unk_token", None)
        unk_id = tokenizer.token_to_id(unk) if isinstance(unk, str) else None
        return cls(tokenizer, unk_id, bool(getattr(tokenizer.model, "continuing_subword_prefix", None)))

    def token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(token_id)

    def join(self, tokens: list[str]) -> str:
        decoder = self.tokenizer.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def _unk_token(folder: Path) -> str | None:
    """The unknown token as transformers reads it (tokenizer_config.json, else special_tokens_map.json)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            found = json.loads((folder / name).read_text()).get("unk_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(found, dict):
            found = found.get("content")
        if isinstance(found, str):
            return found
    return None


# ---- the pipeline's rules, pure ----

def softmax(logits: np.ndarray) -> np.ndarray:
    """The pipeline's own softmax (float32 in, float32 out)."""
    maxes = np.max(logits, axis=-1, keepdims=True)
    shifted = np.exp(logits - maxes)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def gather_pre_entities(text: str, ids: list[int], scores: np.ndarray, offsets: list[tuple[int, int]],
                        special: list[int], vocab: Vocabulary, first_index: int = 0) -> list[dict[str, Any]]:
    """TokenClassificationPipeline.gather_pre_entities: per token that is not special, its word, scores,
    offsets, index (plus `first_index`: where this window starts in the whole text's tokens) and whether it is a
    subword."""
    pre = []
    for idx, token_scores in enumerate(scores):
        if special[idx]:
            continue
        word = vocab.token(int(ids[idx]))
        start, end = offsets[idx]
        word_ref = text[start:end]
        if vocab.word_aware:
            is_subword = len(word) != len(word_ref)
        else:  # the pipeline's fallback heuristic
            is_subword = start > 0 and " " not in text[start - 1:start + 1]
        if vocab.unk_id is not None and int(ids[idx]) == vocab.unk_id:
            word, is_subword = word_ref, False
        pre.append({"word": word, "scores": token_scores, "start": start, "end": end,
                    "index": first_index + idx, "is_subword": is_subword})
    return pre


def aggregate(pre: list[dict[str, Any]], strategy: Strategy, labels: list[str],
              vocab: Vocabulary) -> list[dict[str, Any]]:
    """TokenClassificationPipeline.aggregate."""
    if strategy in ("none", "simple"):
        entities = []
        for one in pre:
            idx = int(one["scores"].argmax())
            entities.append({"entity": labels[idx], "score": one["scores"][idx], "index": one["index"],
                             "word": one["word"], "start": one["start"], "end": one["end"]})
    else:
        entities = aggregate_words(pre, strategy, labels, vocab)
    if strategy == "none":
        return entities
    return group_entities(entities, vocab)


def aggregate_word(tokens: list[dict[str, Any]], strategy: Strategy, labels: list[str],
                   vocab: Vocabulary) -> dict[str, Any]:
    """TokenClassificationPipeline.aggregate_word: one word's label and score from its tokens."""
    word = vocab.join([t["word"] for t in tokens])
    if strategy == "first":
        scores = tokens[0]["scores"]
        idx = int(scores.argmax())
        score = scores[idx]
    elif strategy == "max":
        scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        idx = int(scores.argmax())
        score = scores[idx]
    elif strategy == "average":
        average = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        idx = int(average.argmax())
        score = average[idx]
    else:
        raise ValueError(f"no word aggregation for strategy {strategy!r}")
    return {"entity": labels[idx], "score": score, "word": word, "start": tokens[0]["start"],
            "end": tokens[-1]["end"]}


def aggregate_words(pre: list[dict[str, Any]], strategy: Strategy, labels: list[str],
                    vocab: Vocabulary) -> list[dict[str, Any]]:
    """TokenClassificationPipeline.aggregate_words: tokens fused into words (a subword joins the word before)."""
    words, group = [], None
    for one in pre:
        if group is None:
            group = [one]
        elif one["is_subword"]:
            group.append(one)
        else:
            words.append(aggregate_word(group, strategy, labels, vocab))
            group = [one]
    if group is not None:
        words.append(aggregate_word(group, strategy, labels, vocab))
    return words


def get_tag(name: str) -> tuple[str, str]:
    """TokenClassificationPipeline.get_tag: (B or I, the tag); a label without B-/I- continues (I)."""
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def group_sub_entities(entities: list[dict[str, Any]], vocab: Vocabulary) -> dict[str, Any]:
    """TokenClassificationPipeline.group_sub_entities: one group's tag, mean score, words and span."""
    return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([e["score"] for e in entities])),
            "word": vocab.join([e["word"] for e in entities]),
            "start": entities[0]["start"], "end": entities[-1]["end"]}


def group_entities(entities: list[dict[str, Any]], vocab: Vocabulary) -> list[dict[str, Any]]:
    """TokenClassificationPipeline.group_entities: adjacent entities of one tag grouped (a B- starts anew)."""
    groups: list[dict[str, Any]] = []
    current: list[dict[str, Any]] = []
    for entity in entities:
        if not current:
            current.append(entity)
            continue
        bi, tag = get_tag(entity["entity"])
        _, last_tag = get_tag(current[-1]["entity"])
        if tag == last_tag and bi != "B":
            current.append(entity)
        else:
            groups.append(group_sub_entities(current, vocab))
            current = [entity]
    if current:
        groups.append(group_sub_entities(current, vocab))
    return groups


def merge_overlapping(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TokenClassificationPipeline.aggregate_overlapping_entities: the windows' entities by start; of two that
    overlap, the longer, then the more confident, is kept."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged = []
    previous = entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or length == previous_length and entity["score"] > previous["score"]:
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


def merge_tokens(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strategy none over windows (which the pipeline refuses): each token of the text once, by its index in the
    whole text's tokens; of a token read in two windows, the more confident answer (the earlier on a tie: the
    pipeline's overlap rule for two entities of one length). Not merge_overlapping: tokens sharing one span (the
    bytes of one emoji, for a byte-level BPE) would be dropped as overlaps."""
    kept: dict[int, dict[str, Any]] = {}
    for entity in found:
        held = kept.get(entity["index"])
        if held is None or entity["score"] > held["score"]:
            kept[entity["index"]] = entity
    return [kept[index] for index in sorted(kept)]


@dataclass(frozen=True, slots=True)
class Window:
    """One sequence the model read: its tokens, their offsets into the text and special-token mask, and the
    model's logits per token ([tokens, labels], padding sliced off)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[int]
    logits: np.ndarray


def entities(text: str, windows: list[Window], strategy: Strategy, labels: list[str], vocab: Vocabulary,
             stride: int = 0, ignore_labels: tuple[str, ...] | list[str] = DEFAULT_IGNORE) -> list[dict[str, Any]]:
    """One text's entities from its windows (one when it fits), as TokenClassificationPipeline.postprocess: each
    window gathered, aggregated and filtered, then, with more than one window, merged. Scores are Python floats.
    `stride`: the tokens consecutive windows share (to count `index` in the whole text's tokens)."""
    found: list[dict[str, Any]] = []
    first = 0  # where the window's first content token lies among the text's content tokens
    for window in windows:
        pre = gather_pre_entities(text, window.ids, softmax(window.logits), window.offsets, window.special, vocab,
                                  first)
        found += [e for e in aggregate(pre, strategy, labels, vocab)
                  if e.get("entity") not in ignore_labels and e.get("entity_group") not in ignore_labels]
        content = len(window.special) - sum(window.special)
        first += content - stride
    if len(windows) > 1:
        found = merge_tokens(found) if strategy == "none" else merge_overlapping(found)
    return [{**e, "score": float(e["score"])} for e in found]


def entity_groups(found: list[dict[str, Any]]) -> list[str]:
    """Each entity's group (grouped strategies) or label (none), B-/I- taken off: what the metrics count."""
    return [e["entity_group"] if "entity_group" in e else get_tag(e["entity"])[1] for e in found]


# ---- requests ----

def check_strategy(strategy: str | None) -> Strategy:
    """The strategy asked (default simple), a 422 naming the known ones otherwise."""
    if strategy is None:
        return DEFAULT_STRATEGY
    if not isinstance(strategy, str) or strategy.lower() not in STRATEGIES:
        raise InvalidInput(f"aggregation_strategy must be one of {', '.join(STRATEGIES)} (default "
                           f"{DEFAULT_STRATEGY})")
    return strategy.lower()  # type: ignore[return-value]


def is_token_model(served: ServedModel) -> bool:
    return served.config.task == TASK


def check_model(served: ServedModel) -> None:
    """A 422 naming the model and its task unless it labels tokens."""
    if not is_token_model(served):
        raise InvalidInput(f"model {served.name} (version {served.version}) is a {served.config.task} model: "
                           "token classification (aggregation_strategy, ignore_labels) needs a token-classification "
                           "model")


@dataclass(frozen=True, slots=True)
class Entities:
    served: ServedModel  # the version that answered
    entities: list[list[dict[str, Any]]]  # per text, in the order sent
    stride: int  # the stride used (windows), for the record


async def label_tokens(
    service: Service,
    texts: list[str],
    *,
    aggregation_strategy: str | None = None,
    ignore_labels: list[str] | None = None,
    stride: int | None = None,
    truncate: bool | None = None,
    model: str | None = None,
    version: int | None = None,
    timeout_s: float,
    routing_key: str | None = None,
) -> Entities:
    """Each text's entities (see the module docstring). truncate None: false (windows)."""
    strategy = check_strategy(aggregation_strategy)
    if any(type(text) is not str for text in texts):
        raise InvalidInput("inputs: a token-classification model labels texts, not pairs")
    truncate = bool(truncate)
    if truncate and stride is not None:
        raise InvalidInput("stride applies to windows (truncate false, the default for token models): with "
                           "truncate true the text is cut at the model's max length, as the pipeline without stride")
    ignore = DEFAULT_IGNORE if ignore_labels is None else tuple(ignore_labels)
    served, found, used = await service.inference.label_tokens(
        texts, model=model, version=version, truncate=truncate, stride=stride, timeout_s=timeout_s,
        routing_key=routing_key)
    vocab = served.vocabulary
    labels = served.config.labels
    answers = []
    for text, windows in zip(texts, found, strict=True):
        answers.append(entities(text, windows, strategy, labels, vocab, used, ignore))
    served.metrics.count_entities(entity_groups([e for one in answers for e in one]))
    if (record := current.get()) is not None:  # for the prediction log (app.prediction_log), by reference
        record.task, record.texts, record.labels, record.entities = served.config.task, texts, labels, answers
    return Entities(served, answers, used)


def windows_of(encoded: list[Encoded], rows: list[np.ndarray]) -> list[Window]:
    return [Window(e.ids, e.offsets or [], e.special or [], row) for e, row in zip(encoded, rows, strict=True)]


def score_token_texts(model: ServedModel, texts: list[str], batch_size: int,
                      on_batch: Any = None) -> tuple[np.ndarray, float]:
    """The loader's (and the export's) pass for a token model: each text cut to max_length, length-sorted batches
    on all the model's sessions, the softmax of every token (special ones too), one row per token, texts in
    order; and the seconds spent."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    encoded = model.tokenizer.encode_tokens(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i].ids))
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    rows: list[np.ndarray | None] = [None] * len(texts)

    def run(batch: list[int]) -> None:
        for i, logits in zip(batch, model.infer([encoded[i].ids for i in batch]), strict=True):
            rows[i] = softmax(np.asarray(logits, dtype=np.float32))
        if on_batch:
            on_batch()

    with ThreadPoolExecutor(len(model.engines)) as pool:
        list(pool.map(run, batches))
    return np.concatenate(rows), time.perf_counter() - started  # type: ignore[arg-type]


def per_text(flat: np.ndarray, texts: list[str], tokenizer) -> list[np.ndarray]:
    """score_token_texts' rows split back per text (as many as each text's tokens within max_length)."""
    counts = [len(e.ids) for e in tokenizer.encode_tokens(texts)]
    return np.split(flat, np.cumsum(counts)[:-1])
