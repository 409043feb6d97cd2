"""Zero-shot classification, transport-neutral: each text scored against candidate labels by an NLI model, as
transformers' `pipeline("zero-shot-classification")` (ZeroShotClassificationPipeline) does. Every wire shape
(/predict's `parameters.candidate_labels`, KServe V2's `candidate_labels` input over REST and gRPC) parses into
`classify()`'s arguments and shapes its `ZeroShot` (`ranked()`: labels best first).

The rules, in one place, each the pipeline's:
- a label becomes the hypothesis `hypothesis_template.format(label)` (default "This example is {}."); a template
  that formatting leaves unchanged (no `{}`), or cannot format with one label, is a 422;
- candidate labels given as one string are split on commas (blank parts dropped), a list is taken as is; none: 422;
- the model's entailment label is the first of its labels (id2label order) that starts with "entail", case
  insensitive (the pipeline's `entailment_id`); a model without one is a 422 naming the model and its labels;
- `multi_label` false (and more than one label): a softmax of the entailment logits across the labels; true, or a
  single label: per label, a softmax of entailment against "contradiction", which is the model's label 0 — or its
  last label when entailment is label 0 (the pipeline's choice, whatever those labels are named);
- labels best first in the pipeline's order (`reversed(scores.argsort())`); a label given twice is answered twice,
  as the pipeline answers it (and weighs in the softmax twice), but scored once.

Limits: at most BERTSERVE_MAX_CLIENT_BATCH_SIZE texts, and texts × candidate labels (as sent) within
BERTSERVE_MAX_REQUEST_SEQUENCES (never above BERTSERVE_MAX_QUEUE_SIZE); past either: 422. Every (text, hypothesis)
pair scored goes to the version's batcher as one submission (admission, deadline, routing, 429/504 and metrics are
app.inference's, as for /predict). Pairs are cut to the model's max_length longest side first (as /predict cuts
pairs); the pipeline cuts the text only (`only_first`): the same pairs unless a hypothesis is longer than about
half of max_length. Texts are never read in windows here (truncate false: 422)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.errors import InvalidInput
from app.record import current
from app.tokenizer import TextInput

if TYPE_CHECKING:
    from app.served import ServedModel
    from app.service import Service

DEFAULT_TEMPLATE = "This example is {}."
SEQUENCES_SETTING = "BERTSERVE_MAX_REQUEST_SEQUENCES"


@dataclass(frozen=True, slots=True)
class ZeroShot:
    served: ServedModel  # the version that answered
    labels: list[str]  # the candidate labels as asked (split when given as one string; duplicates kept)
    scores: np.ndarray  # [texts, len(labels)], float32, in the order of `labels`


def candidate_labels(labels: str | list[str]) -> list[str]:
    """The labels as the pipeline reads them: a string is comma-separated labels (blank ones dropped)."""
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if not labels:
        raise InvalidInput("no candidate labels: send at least one")
    return list(labels)


def hypotheses(labels: list[str], template: str | None) -> list[str]:
    """Each label's hypothesis. The template must place the label: unchanged by formatting (no `{}`), or not
    formattable with one label (`{0} {1}`, `{name}`, an unmatched brace), it is a 422."""
    template = DEFAULT_TEMPLATE if template is None else template
    try:
        made = [template.format(label) for label in labels]
    except (IndexError, KeyError, ValueError, AttributeError):
        made = None
    if made is None or made[0] == template:
        raise InvalidInput(f"hypothesis_template {template!r} does not place the label: write {{}} where it goes "
                           f"(the default is {DEFAULT_TEMPLATE!r})")
    return made


def entailment_index(labels: list[str] | tuple[str, ...]) -> int | None:
    """The entailment label's index: the first label starting with "entail", case insensitive (None: none)."""
    return next((i for i, label in enumerate(labels) if label.lower().startswith("entail")), None)


def takes_candidate_labels(labels: list[str] | tuple[str, ...]) -> bool:
    """Whether a model with these labels classifies zero-shot: it has an entailment label, and another."""
    return len(labels) > 1 and entailment_index(labels) is not None


def check_model(served: ServedModel) -> int:
    """The version's entailment index; a 422 naming the model and its labels when it has none."""
    labels = served.config.labels
    index = entailment_index(labels)
    if index is None or not takes_candidate_labels(labels):
        raise InvalidInput(
            f"model {served.name} (version {served.version}) cannot classify zero-shot: none of its labels "
            f"({', '.join(labels)}) is an entailment label (one starting with 'entail'); zero-shot classification "
            "needs an NLI model"
        )
    return index


def distinct(values: list[str]) -> tuple[list[str], list[int]]:
    """The distinct values in first-seen order, and for each value its position among them."""
    position: dict[str, int] = {}
    where = [position.setdefault(value, len(position)) for value in values]
    return list(position), where


def _softmax(values: np.ndarray) -> np.ndarray:
    exp = np.exp(values - values.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def combine(logits: np.ndarray, entailment: int, multi_label: bool) -> np.ndarray:
    """Scores [texts, labels] from the NLI logits [texts, labels, classes], by ZeroShotClassificationPipeline's
    postprocess (in a numerically stable form: the same values where its own does not overflow)."""
    logits = np.asarray(logits, dtype=np.float32)
    if multi_label or logits.shape[1] == 1:
        contradiction = -1 if entailment == 0 else 0
        return _softmax(logits[..., [contradiction, entailment]])[..., 1]
    return _softmax(logits[..., entailment])


def ranked(labels: list[str], scores: np.ndarray) -> tuple[list[int], list[str], list[float]]:
    """One text's labels best first, in the pipeline's order: their indices, the labels and their scores."""
    order = [int(i) for i in reversed(np.asarray(scores).argsort())]
    return order, [labels[i] for i in order], [float(scores[i]) for i in order]


def check_sizes(texts: int, labels: int, max_texts: int, max_sequences: int) -> None:
    """At most max_texts texts, and texts × labels within max_sequences (BERTSERVE_MAX_REQUEST_SEQUENCES)."""
    if texts > max_texts:
        raise InvalidInput(f"{texts} inputs in one request; the limit is {max_texts}")
    if texts * labels > max_sequences:
        raise InvalidInput(f"{texts} text(s) × {labels} candidate label(s) = {texts * labels} sequences to score; "
                           f"the limit is {max_sequences} ({SEQUENCES_SETTING})")


async def classify(
    service: Service,
    texts: list[str],
    labels: str | list[str],
    *,
    hypothesis_template: str | None = None,
    multi_label: bool = False,
    model: str | None = None,
    version: int | None = None,
    truncate: bool = True,
    timeout_s: float,
    routing_key: str | None = None,
) -> ZeroShot:
    """Each text's score for each candidate label, in the order asked (rank them with `ranked`)."""
    if not truncate:
        raise InvalidInput("zero-shot classification reads each text up to the model's max length, as the pipeline "
                           "does: truncate false (long texts read in windows) does not apply to candidate labels")
    labels = candidate_labels(labels)
    settings = service.settings
    cap = settings.request_sequences_cap
    check_sizes(len(texts), len(labels), settings.max_client_batch_size, cap)
    unique_labels, label_at = distinct(labels)
    made = hypotheses(unique_labels, hypothesis_template)
    unique_texts, text_at = distinct(texts)

    async def prepare(served: ServedModel, pairs: list[TextInput]) -> list[TextInput]:
        check_model(served)  # before anything is queued
        return pairs

    pairs: list[TextInput] = [(text, hypothesis) for text in unique_texts for hypothesis in made]
    served, logits = await service.classify(
        pairs, model=model, version=version, truncate=True, function="none", timeout_s=timeout_s,
        routing_key=routing_key, max_inputs=cap, prepare=prepare,
    )
    entailment = check_model(served)
    if (record := current.get()) is not None:  # X-Truncated-Texts counts the texts cut, not their pairs
        cut = np.array([timing.truncated for _, timing in record.rows]).reshape(len(unique_texts), len(made))
        record.truncated = int(cut.any(axis=1)[np.asarray(text_at)].sum())
    grid = np.asarray(logits, dtype=np.float32).reshape(len(unique_texts), len(made), -1)
    grid = grid[np.asarray(text_at)][:, np.asarray(label_at)]  # each text and label as asked
    scores = combine(grid, entailment, multi_label)
    if record is not None:  # for the prediction log (app.prediction_log): the texts and candidates, not the pairs
        record.task, record.head = "zero-shot-classification", None
        record.texts, record.labels, record.scores = texts, labels, scores
    return ZeroShot(served, labels, scores)
