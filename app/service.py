"""The service: what every transport holds (KServe's DataPlane). It wires the three rooms of the serving core —
the registry (app.registry: versions, their states, loading, draining, readiness), the router (app.router: which
version answers) and the inference core (app.inference: one classification request) — and offers transports
their operations. Transports never touch a registry slot."""

from __future__ import annotations

from app.inference import Inference
from app.registry import Registry
from app.router import Router
from app.settings import Settings


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.router = Router(settings.default_model)
        self.registry = Registry(settings, self.router)
        self.inference = Inference(settings, self.registry, self.router)
        # The operations transports call, from the room that owns each.
        self.classify = self.inference.classify
        self.explain = self.inference.explain
        self.explain_many = self.inference.explain_many
        self.timeout_s = self.inference.timeout_s
        self.resolve = self.router.resolve
        self.default_version = self.router.default_version
        self.metric_label = self.router.metric_label
        self.readiness = self.registry.readiness
        self.list_models = self.registry.list_models
        self.version_states = self.registry.version_states
        self.admin_load = self.registry.admin_load
        self.admin_unload = self.registry.admin_unload
        self.load_all = self.registry.load_all
        self.poll = self.registry.poll
        self.stop_admitting = self.registry.stop_admitting
        self.drain = self.registry.drain

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
