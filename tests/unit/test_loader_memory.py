"""What the loader gives back once the engine is chosen (docs/memory.md): every candidate that does not serve is
released with its sessions, and a worker serving onnxruntime alone never loads OpenVINO's libraries. Real sessions
on the tiny model, real OpenVINO where the candidates include it."""

from __future__ import annotations

import builtins
import weakref

import pytest

import app.engine
import app.loader
from app.loader import load_model
from app.settings import Settings
from tests.support.golden import FAST


def test_the_candidates_that_do_not_serve_are_released_with_their_sessions(golden_model, monkeypatch):
    opened: list[tuple[weakref.ref, list[weakref.ref]]] = []
    real_open = app.loader.open_candidate

    def recording(*args, **kwargs):
        model = real_open(*args, **kwargs)
        opened.append((weakref.ref(model), [weakref.ref(engine) for engine in model.engines]))
        return model

    monkeypatch.setattr(app.loader, "open_candidate", recording)
    model = load_model("tiny", 1, golden_model, Settings(**FAST))  # an empty engine cache: every candidate measured
    providers = {t["provider"] for t in model.describe()["engine"]["candidates"]}
    assert len(opened) == len(providers) >= 2  # onnxruntime CPU and OpenVINO were both opened and proven
    served = [(ref, engines) for ref, engines in opened if ref() is model]
    assert len(served) == 1 and all(engine() is not None for engine in served[0][1])
    # No gc.collect() here: the loader's own release step leaves nothing of the others alive.
    released = [(ref, engines) for ref, engines in opened if ref() is not model]
    assert all(ref() is None and all(engine() is None for engine in engines) for ref, engines in released)


@pytest.mark.parametrize(("settings", "cold_loads_openvino"), [
    ({"provider": "cpu"}, False),  # OpenVINO is no candidate: never loaded
    # auto: OpenVINO is measured on the cold start; the most faithful (onnxruntime on the reference's own graph) serves
    # with margin 1, and the warm start, told so by the engine cache, does not load OpenVINO at all
    ({"provider": "auto", "fidelity_margin": 1}, True),
])
def test_a_worker_serving_onnxruntime_does_not_load_openvino(golden_model, monkeypatch, settings, cold_loads_openvino):
    # OpenVINO may be loaded in this process already (other tests): every `import openvino` statement and every call
    # for its runtime are what counts
    loads: list[str] = []
    real_import, real_core = builtins.__import__, app.engine.openvino_core

    def spying_import(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            loads.append(f"import {name}")
        return real_import(name, *args, **kwargs)

    def spying_core():
        loads.append("openvino_core()")
        return real_core()

    monkeypatch.setattr(builtins, "__import__", spying_import)
    monkeypatch.setattr(app.engine, "openvino_core", spying_core)
    for source, loaded in (("measured now", cold_loads_openvino), ("engine cache", False)):
        loads.clear()
        model = load_model("tiny", 1, golden_model, Settings(**FAST, **settings))
        assert (model.engine.provider, model.engine_choice["cache"]["source"]) == ("cpu", source)
        assert bool(loads) == loaded, loads
