"""The INT8 guard: an INT8 artifact's near-ties decided by the fp32 graph, so INT8 serves fp32's decisions at INT8's
speed (issue 34 item 2; docs/int8.md).

INT8 changes a decision only where fp32's top two labels are nearly tied: on the demo, every test review that
SmoothQuant INT8 flipped had an INT8 top-two probability margin of 0.002-0.040, whatever the batch (dynamic INT8
sets its activation scale per batch, so which near-ties flip depends on their batch-mates). So a row of an INT8
batch whose softmax margin (top probability minus the second) is under the artifact's `guard.margin` is run again
on the fp32 graph (`guard.reference`), and that row's logits — decision and scores — are fp32's. On the demo, at
the default 0.02, that is ~2 % of the rows and leaves 0-2 of 379 test decisions flipped at batch 1 to 32. Written by
the export for every single-label (softmax) INT8 artifact (`bertserve export --guard-margin`, 0: none); the export
gate judges the guarded artifact.

One fp32 session per served version (one INT8 session's threads; onnxruntime runs concurrent calls, each on its
caller's thread: it is called from any inference thread), opened beside the INT8 sessions: it costs the fp32
graph's memory (docs/memory.md).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from app.repository import Artifact, ModelConfig, Provider
from app.scores import softmax


class Guard:
    """Re-decides an INT8 batch's near-ties on the fp32 reference session; counts what it did."""

    def __init__(self, margin: float, referee: Any) -> None:
        self.margin = margin
        self.referee = referee  # an app.engine Session on the fp32 graph
        self._lock = threading.Lock()
        self.rows = self.rechecked = self.changed = 0

    def check(self, logits: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
              token_type_ids: np.ndarray | None) -> tuple[np.ndarray, int, int]:
        """The batch's logits with its near-tie rows replaced by fp32's; and how many rows were re-run and how many
        of their decisions fp32 changed."""
        top2 = np.partition(softmax(logits), -2, axis=1)[:, -2:]
        near = np.flatnonzero(top2[:, 1] - top2[:, 0] < self.margin)
        changed = 0
        if near.size:
            width = int(attention_mask[near].sum(axis=1).max())  # the rows' own longest, not the batch's
            fp32 = self.referee.run(input_ids[near, :width], attention_mask[near, :width],
                                    None if token_type_ids is None else token_type_ids[near, :width])
            changed = int((fp32.argmax(axis=1) != logits[near].argmax(axis=1)).sum())
            logits = logits.copy()
            logits[near] = fp32
        with self._lock:
            self.rows += len(logits)
            self.rechecked += int(near.size)
            self.changed += changed
        return logits, int(near.size), changed

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"margin": self.margin, "reference": self.referee.artifact.file, "rows": self.rows,
                    "rechecked": self.rechecked, "changed": self.changed}


def open_guard(model_dir: Path, config: ModelConfig, artifact: Artifact, provider: Provider, threads: int,
               **ort_options: Any) -> Guard | None:
    """The guard `artifact` names, on onnxruntime with `provider` (`threads` intra-op threads); None when it names
    none or runs on OpenVINO (which serves the fp32 graph itself)."""
    from app.engine import Engine

    if artifact.guard is None or provider == "openvino" or config.task != "text-classification" \
            or not config.head.single_label:
        return None
    reference = Artifact(file=artifact.guard.reference, precision="fp32", providers=[provider])
    return Guard(artifact.guard.margin, Engine(model_dir, config, provider, reference, threads, **ort_options))
