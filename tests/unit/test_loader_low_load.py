"""The low-load path on real sessions: a batch that runs alone goes to the wide session (every core), batches under
load to the per-core ones; both answer the same scores. Which path ran is counted by the model, not timed."""

from __future__ import annotations

import asyncio

import numpy as np

from app.batching import Batcher
from app.loader import load_model
from app.settings import Settings
from tests.support.golden import FAST, TEXTS


def test_a_lone_batch_runs_on_all_cores_and_batches_under_load_per_core(golden_model):
    settings = Settings(provider="cpu", engine_sessions=2, intra_op_threads=1, **FAST)
    model = load_model("tiny", 1, golden_model, settings)
    assert [e.threads for e in model.engines] == [1, 1] and model.wide.threads == 2
    assert model.describe()["wide_session_threads"] == 2
    # Its threads spin between its operators and stop as its run returns (onnxruntime's default would keep them
    # spinning on the per-core sessions' cores after it).
    options = model.wide.session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    texts = TEXTS[:8]

    async def scenario():
        batcher = Batcher(model, max_batch_size=1, max_batch_tokens=4096, max_queue_size=64, parallel=2)
        batcher.start()
        try:
            alone = [(await batcher.submit([text]))[0][0] for text in texts]  # one at a time: nothing in flight
            after_alone = dict(batcher.batches)
            crowded = [row for row, _ in await batcher.submit(texts)]  # 8 ready at once, batches of 1: in parallel
            return alone, after_alone, crowded, batcher.batches
        finally:
            await batcher.close()

    alone, after_alone, crowded, batches = asyncio.run(scenario())
    assert after_alone == {"wide": len(texts), "per-core": 0}
    assert batches["per-core"] >= 1  # the first batch cut left 7 ready: not alone
    assert batches["wide"] + batches["per-core"] == 2 * len(texts)
    np.testing.assert_allclose(np.array(crowded), np.array(alone), atol=1e-5)
    sequences = [e.ids for e in model.encode(texts)]
    np.testing.assert_allclose(model.infer(sequences, wide=True), model.infer(sequences), atol=1e-5)


def test_openvino_and_single_session_layouts_have_no_wide_session(golden_model):
    for settings in (Settings(provider="openvino", **FAST), Settings(provider="cpu", engine_sessions=1, **FAST)):
        model = load_model("tiny", 1, golden_model, settings)
        assert model.wide is None and model.describe()["wide_session_threads"] is None
