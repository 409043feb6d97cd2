"""Stand-ins around onnxruntime sessions: simulated CUDA (no GPU exists here: the only mock in the suite, for
hardware that cannot exist on this machine) and a real session held until released (as a long batch holds it)."""

from __future__ import annotations

import threading

import onnxruntime as ort

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class FakeGpuSessions:
    """Stands in for onnxruntime on a CUDA machine: records what was opened; a CUDA request either 'works'
    or silently falls back to CPU, as onnxruntime-gpu does when the CUDA libraries fail to load."""

    def __init__(self, cuda_works: bool) -> None:
        self.cuda_works = cuda_works
        self.opened: list[tuple[str, list[str]]] = []

    def __call__(self, path, sess_options=None, providers=()):
        self.opened.append((path.rsplit("/", 1)[-1], list(providers)))
        if CUDA not in providers:  # CPU and OpenVINO sessions are real
            return ort.InferenceSession(path, sess_options=sess_options, **({"providers": providers} if providers else {}))
        real = ort.InferenceSession(path, sess_options=sess_options, providers=[CPU])
        in_use = [CUDA, CPU] if (CUDA in providers and self.cuda_works) else [CPU]
        real_get_providers = real.get_providers
        real.get_providers = lambda: in_use if in_use[0] == CUDA else real_get_providers()
        return real


class HeldUntil:
    """A session whose runs wait for `released` (as a long batch would hold it)."""

    def __init__(self, session, released: threading.Event) -> None:
        self.session, self.released = session, released

    def run(self, *args):
        assert self.released.wait(60)
        return self.session.run(*args)
