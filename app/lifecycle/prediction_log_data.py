"""Training examples from the prediction log (BERTSERVE_PREDICTION_LOG_DIR): the logged texts joined with their
feedback, for `bertserve train --from-log`; and every logged text, labelled or not (`log_texts`). No torch here.

The log is JSONL, one record per line, in every file under the folder whose name holds ".jsonl" (each worker writes
its own file, rotated ones end .jsonl.1, ...; a .gz one is read too), recursively; or, with
BERTSERVE_PREDICTION_LOG_FORMAT=parquet, every finished *.parquet file, read back into the same records
(app.prediction_log.parquet_records; a worker's unfinished .parquet.partial is not taken). A "prediction" record
holds the items a request answered (each with its text when the log ran with text mode "full"); a "feedback" record
names a request id and an item index with the true label. Records are put in time order across files, since workers
write side by side; a line that is not a JSON object (a worker killed mid-write) is skipped and counted.

Joining: feedback (id, index) meets the prediction item of the same request id and index for the model being
trained; a request id logged twice (a client reusing X-Request-ID) meets its first logged prediction (of the
feedback's version), as the server's join index keeps the first. Feedback naming no logged prediction is ignored and
counted. Several feedback records for one item: the FIRST one (by time) wins, the later ones are counted. That is
the server's own rule: its join index refuses a second feedback for an item (POST /feedback, across the workers of a
replica), so a second record only appears when the logs of several replicas are read together; live accuracy
(bertserve_feedback_total) counted the first one, and training on the same label keeps the two measuring one truth.

What trains: single-label heads (a class name per item) and one-logit heads (the list of labels that apply, as
POST /feedback takes a sigmoid head's: [] not relevant, [its label] relevant; or 0/1), texts or text pairs, as
`bertserve train` trains them from a table. Multi-label (a list of labels) and regression (a number for a
many-label head) feedback, and token-classification or zero-shot answers, are refused with the reason."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.lifecycle import LifecycleError
from app.tokenizer import TextInput

# Answers whose labels are the version's own head's: what train fits. Token answers carry entities, not a label per
# text; zero-shot answers' labels are the request's candidates, not the head's.
TRAINABLE_TASKS = ("text-classification", "rerank")
BINARY = ("0", "1")  # a one-logit head's labels in training data (app.lifecycle.train.BINARY)
FULL_TEXT_HINT = ('log with text mode "full" (BERTSERVE_PREDICTION_LOG_TEXT=full, or the model\'s serving.json '
                  '"prediction_log": {"text": "full"})')
_EARLIEST = datetime.min.replace(tzinfo=UTC)


@dataclass
class Logged:
    """One record of the log, with where it was read (file:line) and its place in time order."""

    record: dict[str, Any]
    where: str
    time: datetime


def log_files(folder: Path) -> list[Path]:
    """Every file under `folder` whose name holds ".jsonl" or ends ".parquet", recursively, in name order."""
    if not folder.is_dir():
        raise LifecycleError(f"{folder}: not a folder; give the prediction log folder (BERTSERVE_PREDICTION_LOG_DIR)")
    files = sorted(p for p in folder.rglob("*") if (".jsonl" in p.name or p.name.endswith(".parquet"))
                   and p.is_file())
    if not files:
        raise LifecycleError(f"{folder}: no prediction log files (*.jsonl) nor *.parquet in it; give the folder the "
                             "server wrote as BERTSERVE_PREDICTION_LOG_DIR")
    return files


def _time(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return _EARLIEST
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parquet_lines(path: Path) -> list[str]:
    """A Parquet log file's records as JSON lines (BERTSERVE_PREDICTION_LOG_FORMAT=parquet; its unfinished
    .parquet.partial file is unreadable and not taken)."""
    try:
        from app.prediction_log import parquet_records
        return [json.dumps(record) for record in parquet_records(path)]
    except ImportError:
        raise LifecycleError(f"{path}: reading Parquet needs pyarrow: pip install 'bertserve[parquet]'") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors are OSError or ValueError (ArrowInvalid)
        raise LifecycleError(f"{path}: cannot read ({exc})") from None


def _lines(path: Path) -> list[str]:
    if path.name.endswith(".parquet"):
        return _parquet_lines(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise LifecycleError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def item_input(item: dict[str, Any]) -> TextInput | None:
    """The logged text of an item (a (text, text_pair) tuple for a pair), None when it was not logged in full."""
    text, pair = item.get("text"), item.get("text_pair")
    if not isinstance(text, str) or not text:
        return None
    if pair is None:
        return text
    return (text, pair) if isinstance(pair, str) and pair else None


def text_mode(item: dict[str, Any]) -> str:
    """The text mode an item was logged with, read off its fields."""
    return "full" if "text" in item else "hash" if "text_hash" in item else "none"


@dataclass
class LogSet:
    """The labelled examples read from the log for one model, and the counts its one-line summary gives."""

    folder: Path
    model: str
    texts: list[TextInput] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)  # the model's versions that answered logged requests
    logged: int = 0  # items the model answered in the log
    with_text: int = 0  # of those, logged in full
    with_feedback: int = 0  # items given feedback (one per item: the first wins)
    repeated: int = 0  # later feedback records for an item that already had one (ignored)
    unmatched: int = 0  # feedback records for which no logged prediction was found (ignored)
    without_text: int = 0  # items with feedback but no logged text (hash or none mode)
    untrainable: Counter = field(default_factory=Counter)  # items with feedback, by task train does not fit
    files: int = 0
    bad_lines: int = 0
    fingerprint: str = ""  # sha256 of the examples (texts and labels, in order), for the training report

    def per_label(self) -> Counter:
        return Counter(self.labels)

    def summary(self) -> str:
        counts = ", ".join(f"{label} {n}" for label, n in sorted(self.per_label().items()))
        line = (f"prediction log {self.folder} ({self.files} files), model {self.model!r} (versions "
                f"{', '.join(self.versions) or 'none'}): {self.logged} texts logged ({self.with_text} in full), "
                f"{self.with_feedback} with feedback, {len(self.texts)} used ({counts or 'none'})")
        ignored = [f"{n} {what}" for n, what in [
            (self.unmatched, "feedback without a logged prediction"),
            (self.repeated, "repeated feedback for an item (the first counts)"),
            (self.without_text, "with feedback but no logged text"),
            *((n, f"{task} answers") for task, n in sorted(self.untrainable.items())),
            (self.bad_lines, "unreadable lines"),
        ] if n]
        return line + (f"; ignored: {', '.join(ignored)}" if ignored else "")

    def data_record(self) -> dict[str, Any]:
        """What the training report records of the log (as checkpoint.data_record does of a file): its name, never
        its path (no "/": the model card strips folders), the examples used and their sha256."""
        return {"file": f"prediction log {self.folder.name} ({self.files} files)", "rows": len(self.texts),
                "sha256": self.fingerprint}


class PredictionLog:
    """The records of a prediction log folder, in time order."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.files = log_files(self.folder)
        self.bad_lines = 0
        records: list[tuple[datetime, int, Logged]] = []
        for path in self.files:
            for number, line in enumerate(_lines(path), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or record.get("type") not in ("prediction", "feedback"):
                    self.bad_lines += 1
                    continue
                logged = Logged(record, f"{path}:{number}", _time(record.get("time")))
                records.append((logged.time, len(records), logged))
        self.records = [logged for _, _, logged in sorted(records, key=lambda r: (r[0], r[1]))]
        if not any(r.record["type"] == "prediction" for r in self.records):
            raise LifecycleError(f"{self.folder}: no prediction records in its {len(self.files)} log file(s)")

    def models(self) -> dict[str, list[str]]:
        """Each model that answered logged requests, and its versions (ascending)."""
        found: dict[str, set[str]] = defaultdict(set)
        for logged in self.records:
            if logged.record["type"] == "prediction" and isinstance(logged.record.get("model"), str):
                found[logged.record["model"]].add(str(logged.record.get("version")))
        return {m: sorted(v, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
                for m, v in sorted(found.items())}

    def model(self, name: str | None) -> str:
        """`name`, when the log has predictions of it; with no name, the log's only model."""
        models = self.models()
        if name is None:
            if len(models) == 1:
                return next(iter(models))
            raise LifecycleError(f"{self.folder}: the log holds predictions of several models ({', '.join(models)}); "
                                 "name one with --model NAME")
        if name not in models:
            raise LifecycleError(f"{self.folder}: no predictions of model {name!r} in the log; it holds "
                                 f"{', '.join(models) or 'none'}")
        return name

    def items(self, model: str) -> list[tuple[Logged, dict[str, Any]]]:
        """The model's logged items, each with its prediction record, in time order."""
        return [(logged, item) for logged in self.records
                if logged.record["type"] == "prediction" and logged.record.get("model") == model
                for item in logged.record.get("items") or [] if isinstance(item, dict)]

    def texts(self, model: str | None = None) -> list[TextInput]:
        """Every text logged in full (pairs as (text, text_pair)), with or without feedback, in time order; of one
        model, or of all. Refused, naming the text mode, when there is none."""
        models = [model] if model is not None else list(self.models())
        found = [one for m in models for _, item in self.items(m) if (one := item_input(item)) is not None]
        if not found:
            self._no_text(models)
        return found

    def _no_text(self, models: list[str]) -> None:
        modes = Counter(text_mode(item) for m in models for _, item in self.items(m))
        said = ", ".join(f"{n} with text mode {mode!r}" for mode, n in modes.most_common())
        raise LifecycleError(f"{self.folder}: the log holds no text of {', '.join(map(repr, models))} "
                             f"({said or 'no items'}: \"hash\" logs only a keyed hash, \"none\" nothing); training "
                             f"needs the texts: {FULL_TEXT_HINT}")

    def labelled(self, model: str, labels: list[str], one_logit: bool = False) -> LogSet:
        """The model's logged texts with their feedback: inputs and labels (class names; "0"/"1" for a one-logit
        head) for `bertserve train`. `labels`: the head's labels; a feedback label outside them is refused."""
        found = LogSet(self.folder, model, versions=self.models().get(model, []), files=len(self.files),
                       bad_lines=self.bad_lines)
        predictions: dict[tuple[str, int], list[tuple[Logged, dict[str, Any]]]] = defaultdict(list)
        for logged, item in self.items(model):
            found.logged += 1
            found.with_text += item_input(item) is not None
            if isinstance(logged.record.get("id"), str) and type(item.get("index")) is int:
                predictions[(logged.record["id"], item["index"])].append((logged, item))
        # The first feedback per item wins, as in the server's join index (self.records is in time order).
        chosen: dict[tuple[int, int], tuple[Logged, Logged, dict[str, Any]]] = {}
        for feedback in self.records:
            record = feedback.record
            if record["type"] != "feedback" or record.get("model") not in (None, model):
                continue
            candidates = predictions.get((record.get("id"), record.get("index")), [])
            if not candidates:
                found.unmatched += 1
                continue
            same_version = [c for c in candidates if str(c[0].record.get("version")) == str(record.get("version"))]
            prediction, item = (same_version or candidates)[0]
            key = (id(prediction), id(item))
            if key in chosen:
                found.repeated += 1
            else:
                chosen[key] = (feedback, prediction, item)
        found.with_feedback = len(chosen)
        examples = []
        for feedback, prediction, item in sorted(chosen.values(), key=lambda c: c[1].time):
            task = prediction.record.get("task") or "text-classification"
            if task not in TRAINABLE_TASKS:
                found.untrainable[task] += 1
                continue
            text = item_input(item)
            if text is None:
                found.without_text += 1
                continue
            examples.append((text, _label(feedback, labels, one_logit)))
        if not examples:
            self._nothing_to_train(found, model)
        found.texts = [t for t, _ in examples]
        found.labels = [lab for _, lab in examples]
        found.fingerprint = hashlib.sha256(json.dumps(examples, ensure_ascii=False).encode()).hexdigest()
        return found

    def _nothing_to_train(self, found: LogSet, model: str) -> None:
        if found.untrainable and not found.without_text:
            tasks = ", ".join(sorted(found.untrainable))
            raise LifecycleError(f"{self.folder}: the feedback on {model!r} is on {tasks} answers; train --from-log "
                                 "fits text classifiers (single-label or one-logit heads): train a token "
                                 "classifier from a CoNLL/JSONL file (--task token-classification --data)")
        if found.with_text == 0:
            self._no_text([model])
        if found.with_feedback == 0:
            raise LifecycleError(f"{self.folder}: no feedback joins a logged prediction of {model!r} "
                                 f"({found.logged} texts logged, {found.unmatched} feedback records without a logged "
                                 "prediction); send POST /feedback with the X-Request-ID each answer carried")
        raise LifecycleError(f"{self.folder}: none of the {found.with_feedback} items with feedback of {model!r} has "
                             f"its text logged; {FULL_TEXT_HINT}")


def _label(feedback: Logged, labels: list[str], one_logit: bool) -> str:
    """A feedback record's label as train takes it, or a one-line refusal naming the record."""
    label, where = feedback.record.get("label"), feedback.where
    if one_logit and isinstance(label, list):  # POST /feedback's form for a sigmoid head: the labels that apply
        if label == [] or label == labels:
            return BINARY[len(label)]
        raise LifecycleError(f"{where}: label {label!r} for a one-logit head {labels}; its feedback is [] (not "
                             f"relevant) or {labels} (relevant)")
    if isinstance(label, list):
        raise LifecycleError(f"{where}: multi-label feedback ({label!r}); bertserve train fits single-label and "
                             "one-logit heads only: fine-tune a multi-label head with transformers "
                             "(problem_type multi_label_classification)")
    if one_logit:
        if isinstance(label, bool) or str(label) not in BINARY and label not in (0.0, 1.0):
            raise LifecycleError(f"{where}: label {label!r} for a one-logit head {labels}; its feedback is [] or "
                                 f"0 (not relevant), {labels} or 1 (relevant)")
        return str(int(float(label)))
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        raise LifecycleError(f"{where}: label {label!r} is a number (regression feedback); bertserve train fits "
                             f"single-label heads over class names {labels}: fine-tune a regression head with "
                             "transformers (problem_type regression)")
    if not isinstance(label, str) or label not in labels:
        raise LifecycleError(f"{where}: label {label!r} is not one of the model's labels {labels}")
    return label


def log_texts(folder: Path, model: str | None = None) -> list[TextInput]:
    """Every text logged in full under `folder` (of `model`, or of all), with or without feedback, in time order:
    unlabelled texts for distillation."""
    return PredictionLog(Path(folder)).texts(model)
