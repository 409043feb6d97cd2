"""Prediction drift: a version's reference distributions, recorded at export, and the population stability index
(PSI) of what it has served since against them.

The reference (drift.json beside bertserve.json, optional: a version without it has no PSI) is what the published
artifact made of the export gate's texts, in three features:
  label       the labels the head chooses (bertserve_predictions_total's rule: the top one; each over 0.5 for a
              sigmoid head), one bin per label;
  confidence  the top score (not for a regression head), bins of CONFIDENCE_EDGES;
  tokens      the token count of the sequence the model read (special tokens included, after truncation to
              max_length; a text read in windows: its first window), bins of TOKEN_EDGES.
Bins are named by their upper edge and hold the values in (previous edge, edge] (the first: up to its edge), as
Prometheus's `le`; a value above the last edge counts in the last bin. The edges are written into drift.json and
served versions count their traffic in the reference's own bins (app.served.ModelMetrics).

PSI = sum over bins of (a - e) * ln(a / e), a and e the served and the reference share of a bin, each at least
EPSILON (an empty bin would make the log infinite). The same formula runs in Prometheus over the summed counters
(deploy/prometheus/rules: bertserve:prediction_psi:1h) and here, with numpy, over this replica's own counters (GET
/models/{name}, `drift`). Rule of thumb: under 0.1 stable, 0.1-0.2 moderate, over 0.2 a shift worth a look.
"""

from __future__ import annotations

import json
import logging
import math
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.scores import Head

log = logging.getLogger(__name__)

DRIFT_FILE = "drift.json"
EPSILON = 1e-4  # the least share a bin counts with, on either side (empty bins)
CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
TOKEN_EDGES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 8192)
FEATURES = ("label", "confidence", "tokens")


def bin_name(edge: float) -> str:
    """A bin's name: its upper edge as Prometheus writes a number (0.95, 1, 128)."""
    return f"{edge:g}"


def bin_index(edges: Sequence[float], value: float) -> int:
    """The bin of `value`: (edges[i-1], edges[i]]; above the last edge, the last bin."""
    return min(bisect_left(edges, value), len(edges) - 1)


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * len(edges)
    for value in values:
        counts[bin_index(edges, value)] += 1
    return counts


def psi(expected: Sequence[float], actual: Sequence[float], epsilon: float = EPSILON) -> float | None:
    """The PSI of `actual` (counts or shares per bin) against `expected` (shares per bin, the same bins); None when
    nothing was counted."""
    counts = np.asarray(actual, dtype=np.float64)
    if counts.sum() <= 0:
        return None
    a = np.maximum(counts / counts.sum(), epsilon)
    e = np.maximum(np.asarray(expected, dtype=np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def build_reference(scores: np.ndarray, tokens: Sequence[int], head: Head, source: str = "",
                    artifact: str = "") -> dict[str, Any]:
    """The reference of a version: `scores` its head's scores on the gate texts (rows in text order), `tokens`
    each text's sequence length as served. Counts, shares and edges per feature (drift.json)."""
    rows = np.asarray(scores).tolist()
    labels = [0] * len(head.labels)
    for row in rows:
        for label in head.chosen(row):
            labels[label] += 1
    features: dict[str, dict[str, Any]] = {"label": _feature(list(head.labels), labels)}
    if head.function != "none":
        features["confidence"] = _feature([bin_name(e) for e in CONFIDENCE_EDGES],
                                          histogram([max(row) for row in rows], CONFIDENCE_EDGES), CONFIDENCE_EDGES)
    features["tokens"] = _feature([bin_name(e) for e in TOKEN_EDGES], histogram(tokens, TOKEN_EDGES), TOKEN_EDGES)
    return {"texts": len(rows), "source": source, "artifact": artifact, "epsilon": EPSILON,
            "binning": "bins named by their upper edge hold (previous edge, edge]; above the last edge: the last bin",
            "features": features}


def _feature(bins: list[str], counts: list[int], edges: Sequence[float] | None = None) -> dict[str, Any]:
    total = sum(counts)
    feature: dict[str, Any] = {"bins": bins, "counts": counts,
                               "fractions": [round(c / total, 6) if total else 0.0 for c in counts]}
    if edges is not None:
        feature["edges"] = list(edges)
    return feature


def sequence_lengths(tokenizer, texts: Sequence[Any]) -> list[int]:
    """Each text's token count as the served model reads it (app.tokenizer, truncated to its max_length)."""
    return [len(encoded.ids) for encoded in tokenizer.encode(list(texts))]


def write_reference(folder: Path, scores: np.ndarray, texts: Sequence[Any], head: Head, tokenizer,
                    source: str = "", artifact: str = "") -> dict[str, Any]:
    """Write drift.json into a version folder; returns its summary for the export report."""
    reference = build_reference(scores, sequence_lengths(tokenizer, texts), head, source, artifact)
    (folder / DRIFT_FILE).write_text(json.dumps(reference, indent=1) + "\n")
    return {"file": DRIFT_FILE, "texts": reference["texts"], "features": list(reference["features"])}


def measure_reference(folder: Path, texts: Sequence[Any], source: str = "") -> dict[str, Any]:
    """The reference of a published version from its first artifact (the one a CPU serves), run through the serving
    code on `texts`, as the export records it (used by benchmarks/drift.py on a version exported before drift.json
    was written)."""
    from app.lifecycle.runner import open_artifact, probabilities
    from app.repository import read_config

    config = read_config(folder)
    model = open_artifact(folder, config, config.artifacts[0])
    scores, _ = probabilities(model, list(texts))
    return build_reference(scores, sequence_lengths(model.tokenizer, texts), config.head, source,
                           config.artifacts[0].file)


def read_reference(folder: Path, labels: Sequence[str]) -> dict[str, Any] | None:
    """A served version's reference, or None: no drift.json, or one that cannot be used (logged: drift is optional,
    the version serves without it). Only files inside the model repository are read."""
    from app.errors import ModelLoadError
    from app.repository import inside

    path = folder / DRIFT_FILE
    if not path.is_file():
        return None
    try:
        inside(folder.parent.parent, path)
        reference = json.loads(path.read_text())
        features = reference["features"]
        for name, feature in features.items():
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r}")
            if len(feature["bins"]) != len(feature["fractions"]) or not feature["bins"]:
                raise ValueError(f"feature {name}: bins and fractions differ in length")
            if name != "label" and (len(feature["edges"]) != len(feature["bins"])
                                    or list(feature["edges"]) != sorted(feature["edges"])):
                raise ValueError(f"feature {name}: edges do not match its bins")
            if not all(isinstance(f, (int, float)) and math.isfinite(f) and f >= 0 for f in feature["fractions"]):
                raise ValueError(f"feature {name}: fractions must be numbers >= 0")
        if "label" in features and list(features["label"]["bins"]) != list(labels):
            raise ValueError(f"its labels {features['label']['bins']} are not the model's {list(labels)}")
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: not used, this version has no drift reference (%s)", path, exc)
        return None
    return reference


def live_drift(reference: dict[str, Any] | None, counts: dict[str, list[float]]) -> dict[str, Any] | None:
    """The `drift` of a version in /models: PSI per feature of `counts` (per feature, per reference bin, this
    replica's counters) against the reference, and the texts counted (the tokens feature: one per text)."""
    if reference is None:
        return None
    figures = {name: psi(feature["fractions"], counts.get(name, [0.0] * len(feature["bins"])))
               for name, feature in reference["features"].items()}
    return {"psi": {k: None if v is None else round(v, 6) for k, v in figures.items()},
            "count": int(sum(counts.get("tokens", []))), "reference_texts": reference.get("texts")}
