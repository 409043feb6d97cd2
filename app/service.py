"""The service: what every transport holds. It wires the three rooms of the serving core — the registry
(app.registry: versions, their states, loading, draining, readiness), the router (app.router: which version
answers) and the inference core (app.inference: one classification request) — and offers transports their
operations, each a method that hands over to the room that owns it. Transports never touch a registry slot; the
protocols' own rules (readiness, metadata, versions as KServe V2 states them) are in app.protocol."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.inference import Explanation, Inference, Prepare
from app.registry import Registry, State
from app.repository import ModelServing
from app.router import Router
from app.scores import ScoreFunction, WindowAggregation
from app.served import ServedModel
from app.settings import Settings
from app.tokenizer import TextInput


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(settings.default_model)
        self.registry = Registry(settings, self.router)
        self.inference = Inference(settings, self.registry, self.router)

    # ---- inference (app.inference) ----

    async def classify(
        self, texts: list[TextInput], *, model: str | None = None, version: int | None = None, truncate: bool = True,
        stride: int | None = None, window_aggregation: WindowAggregation = "mean",
        function: ScoreFunction | None = None, timeout_s: float, routing_key: str | None = None,
        max_inputs: int | None = None, prepare: Prepare | None = None,
    ) -> tuple[ServedModel, np.ndarray]:
        """The version that answered and the scores [len(texts), labels] (Inference.classify; truncate false: long
        texts read whole in windows)."""
        return await self.inference.classify(
            texts, model=model, version=version, truncate=truncate, stride=stride,
            window_aggregation=window_aggregation, function=function, timeout_s=timeout_s,
            routing_key=routing_key, max_inputs=max_inputs, prepare=prepare,
        )

    async def explain(self, text: str, **options: Any) -> Explanation:
        """One text's explanation (explain_many's options)."""
        return await self.inference.explain(text, **options)

    async def explain_many(
        self, texts: list[str], *, model: str | None = None, version: int | None = None, truncate: bool = True,
        target: str | None = None, max_features: int, timeout_s: float, routing_key: str | None = None,
    ) -> list[Explanation]:
        """Each text's prediction and word weights, as one batcher submission (Inference.explain_many)."""
        return await self.inference.explain_many(
            texts, model=model, version=version, truncate=truncate, target=target, max_features=max_features,
            timeout_s=timeout_s, routing_key=routing_key,
        )

    def timeout_s(self, asked_ms: float | None) -> float:
        """The request's deadline in seconds: what it asked for (or the default), within the server's bound."""
        return self.inference.timeout_s(asked_ms)

    # ---- routing (app.router) ----

    def resolve(self, name: str | None, version: int | None = None, routing_key: str | None = None) -> ServedModel:
        """The ready version that would answer (ModelNotFound or NotReady when none would)."""
        return self.router.resolve(name, version, routing_key)

    def answers_unnamed(self, name: str) -> bool:
        """Whether requests naming no version of the model are answered: it has a table in force with a ready
        version."""
        return name in self.router.served

    def metric_label(self, name: str | None) -> str:
        """The model label of request metrics: a known model's name or "unknown" (a closed set)."""
        return self.router.metric_label(name)

    # ---- versions, readiness, admin, lifecycle (app.registry) ----

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the server is ready, and each model's state and short cause codes (no paths, no contents)."""
        return self.registry.readiness()

    def list_models(self, full_reasons: bool = True) -> list[dict[str, Any]]:
        """One entry per version, with its state, quality reports and the model's traffic table; the reasons in
        full (paths, file text) or, `full_reasons` False, as fixed wording per cause code."""
        return self.registry.list_models(full_reasons)

    def serving_of(self, name: str) -> ModelServing:
        """The model's per-model settings from its serving.json (the last valid one read; defaults without)."""
        return self.registry.serving_of(name)

    def version_states(self, name: str) -> dict[int, State]:
        """Every version the registry has of a model and its state, or ModelNotFound."""
        return self.registry.version_states(name)

    async def admin_load(self, name: str) -> None:
        """Load (or reload) the model's versions in this worker."""
        await self.registry.admin_load(name)

    async def admin_unload(self, name: str) -> None:
        """Drain and unload the model's versions in this worker."""
        await self.registry.admin_unload(name)

    async def load_all(self) -> None:
        """Load every version the repository asks for (at start)."""
        await self.registry.load_all()

    async def poll(self) -> None:
        """Follow the repository: scan it every BERTSERVE_POLL_INTERVAL_S (runs until cancelled)."""
        await self.registry.poll()

    def stop_admitting(self) -> None:
        """From now on new work is refused (503) and readiness fails."""
        self.registry.stop_admitting()

    async def drain(self, timeout_s: float) -> int:
        """Refuse new work, wait (at most timeout_s) for what was accepted; the sequences still unanswered."""
        return await self.registry.drain(timeout_s)

    async def close(self) -> None:
        """Cancel the shadow comparisons still running, then stop every batcher."""
        await self.inference.close()
        await self.registry.close()

    @property
    def loading(self) -> bool:
        return self.registry.loading

    @property
    def draining(self) -> bool:
        return self.registry.draining
