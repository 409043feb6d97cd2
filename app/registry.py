"""The registry: the versions the repository asks for and the state of each (loading, ready, failed, unloading).
It follows the repository (scan at start, then polling), loads new versions through app.loader and gives each a
batcher, drains and unloads removed ones, takes the admin's load / unload, drains everything at shutdown, and
answers readiness and the model listing. It owns the slots; every state change republishes the routing table
(app.router), which is all a request reads."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app import metrics
from app.batching import Batcher
from app.errors import ModelLoadError, ModelNotFound
from app.loader import load_model
from app.repository import CONFIG_FILE, ModelServing, wanted_versions
from app.router import Router, Routing
from app.served import ServedModel
from app.settings import Settings

log = logging.getLogger("bertserve.registry")

State = Literal["loading", "ready", "failed", "unloading"]


@dataclass(eq=False)
class Slot:
    """A version the repository asks for, whatever its state."""

    name: str
    version: int
    path: Path
    state: State = "loading"
    reason: str | None = None
    model: ServedModel | None = None
    config_mtime: float = 0.0  # a failed version is retried when its bertserve.json changes


class Registry:
    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.slots: dict[str, dict[int, Slot]] = {}
        self.broken: dict[str, str] = {}  # model name -> why its versions cannot even be listed
        self.routing: dict[str, Routing] = {}  # model name -> traffic weights and shadow from its serving.json
        self.unloaded_by_admin: set[str] = set()
        self.loading = True
        self.draining = False
        self._loaded = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    # ---- following the repository ----

    async def load_all(self) -> None:
        try:
            await self.sync()
            if not self.slots and not self.broken:
                log.error("no model found in %s", self.settings.model_repository.resolve())
        finally:
            self.loading = False
            self._loaded.set()

    async def loaded(self) -> None:
        """Returns once the first repository scan has loaded what it found."""
        await self._loaded.wait()

    async def poll(self) -> None:
        """Follow the repository: new versions are loaded and warmed, removed ones drained and unloaded."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.sync()
            except Exception:  # keep polling; the next scan may succeed
                log.exception("repository scan failed")

    async def sync(self, only: str | None = None) -> None:
        """Make the loaded versions match the repository (for one model, or all)."""
        async with self._sync_lock:
            serving: dict[str, ModelServing] = {}
            wanted = await asyncio.to_thread(
                wanted_versions, self.settings.model_repository, self.settings.max_loaded_versions, serving
            )
            names = [only] if only else sorted(set(wanted) | set(self.slots))
            for name in names:
                versions = wanted.get(name, [])
                if isinstance(versions, str):  # broken serving.json: keep what runs, say why
                    self.broken[name] = versions
                    continue
                self.broken.pop(name, None)
                policy = serving.get(name)
                self.routing[name] = Routing(policy.traffic, policy.shadow) if policy else Routing()
                if name in self.unloaded_by_admin:
                    versions = []
                await self._sync_model(name, dict(versions))

    async def _sync_model(self, name: str, wanted: dict[int, Path]) -> None:
        slots = self.slots.setdefault(name, {})
        for version, path in sorted(wanted.items()):  # load new versions first, so traffic can move over
            slot = slots.get(version)
            mtime = _mtime(path / CONFIG_FILE)
            if slot is None or (slot.state == "failed" and slot.config_mtime != mtime):
                slot = slots[version] = Slot(name, version, path, config_mtime=mtime)
                await self._load(slot)
        for version in [v for v in slots if v not in wanted]:
            await self._unload(slots[version])
        if not slots:
            del self.slots[name]
        self._publish()

    async def _load(self, slot: Slot) -> None:
        try:
            model = await asyncio.to_thread(load_model, slot.name, slot.version, slot.path, self.settings)
        except Exception as exc:  # one bad version must not stop the others; its reason is shown
            slot.state = "failed"
            slot.reason = str(exc) if isinstance(exc, ModelLoadError) else f"{slot.path}: {type(exc).__name__}: {exc}"
            log.error("model %s version %d not served: %s", slot.name, slot.version, slot.reason)
            return
        model.batcher = Batcher(
            model,
            max_batch_size=model.batch_choice["max_batch_size"],
            max_batch_tokens=model.batch_choice["max_batch_tokens"],
            max_batch_padding=model.batch_choice["max_batch_padding"],
            max_queue_size=self.settings.max_queue_size,
            parallel=len(model.engines),
            name=f"{slot.name}:{slot.version}",
            on_batch=_batch_observer(slot.name),
            on_queue_size=metrics.QUEUE_SIZE.labels(slot.name, str(slot.version)).set,
        )
        model.batcher.start()
        slot.model, slot.state = model, "ready"
        self._publish()
        _model_info(model, 1)
        log.info(
            "model %s version %d ready: %s x %d session(s), %s, batching %s",
            slot.name, slot.version, model.engine, len(model.engines),
            _chosen_over(model), model.batch_choice,
        )

    async def _unload(self, slot: Slot) -> None:
        """Stop routing to the version, let its queue drain, then free it."""
        slot.state = "unloading"
        self._publish()
        if slot.model and slot.model.batcher:
            try:
                async with asyncio.timeout(self.settings.drain_timeout_s):
                    await slot.model.batcher.drained()
            except TimeoutError:
                log.warning("model %s version %d: unloading with work still queued", slot.name, slot.version)
            await slot.model.batcher.close()
            _model_info(slot.model, 0)
        del self.slots[slot.name][slot.version]
        self._publish()
        log.info("model %s version %d unloaded", slot.name, slot.version)

    def _publish(self) -> None:
        """Hand the router the ready versions: called on every state change."""
        ready = {
            name: {v: s.model for v, s in slots.items() if s.state == "ready" and s.model}
            for name, slots in self.slots.items()
        }
        self.router.update(ready, known=list(self.slots), routing=self.routing)

    # ---- admin ----

    async def admin_load(self, name: str) -> None:
        self.unloaded_by_admin.discard(name)
        await self.sync(only=name)
        if not any(s.state == "ready" for s in self.slots.get(name, {}).values()):
            raise ModelNotFound(f"model {name!r} has no servable version in {self.settings.model_repository}")

    async def admin_unload(self, name: str) -> None:
        if name not in self.slots:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.unloaded_by_admin.add(name)
        await self.sync(only=name)

    # ---- shutdown ----

    def stop_admitting(self) -> None:
        """From now on new work is refused (503), readiness fails and every answer closes its connection."""
        self.draining = True

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, then wait (at most timeout_s) until every accepted sequence is answered."""
        self.stop_admitting()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(m.batcher.drained() for m in self._ready_models() if m.batcher))
        except TimeoutError:
            log.warning("drain timeout (%.1f s) reached with work still queued", timeout_s)

    async def close(self) -> None:
        """Stop every batcher; anything still queued is answered 503."""
        self.stop_admitting()
        for slots in self.slots.values():
            for slot in slots.values():
                if slot.model and slot.model.batcher:
                    await slot.model.batcher.close()

    # ---- queries ----

    def _ready_models(self) -> list[ServedModel]:
        return [s.model for slots in self.slots.values() for s in slots.values() if s.state == "ready" and s.model]

    def version_states(self, name: str) -> dict[int, State]:
        """Every version the registry has of a model and its state, or ModelNotFound."""
        slots = self.slots.get(name)
        if not slots:
            raise ModelNotFound(f"model {name!r} is not served; served: {sorted(self.slots)}")
        return {version: slot.state for version, slot in sorted(slots.items())}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when loaded, not draining, and every model has a version serving. A failed new version
        next to a serving one is reported but keeps the replica ready: traffic is still answered."""
        models: dict[str, Any] = {}
        for name, slots in self.slots.items():
            models[name] = {str(v): s.state if s.state != "failed" else f"failed: {s.reason}" for v, s in slots.items()}
        for name, reason in self.broken.items():
            models[name] = f"failed: {reason}"
        serving = self.router.served
        ready = not self.loading and not self.draining and bool(serving) and serving == set(models)
        status = "draining" if self.draining else "loading" if self.loading else "ready" if ready else "not ready"
        return ready, {"status": status, "models": models}

    def list_models(self) -> list[dict[str, Any]]:
        listed = []
        for name, slots in sorted(self.slots.items()):
            default = self.router.default_version(name)
            traffic, shadow = self.router.traffic(name), self.router.shadow_version(name)
            for version, slot in sorted(slots.items()):
                entry = {"name": name, "version": version, "state": slot.state, "default": version == default,
                         "traffic": traffic.get(version, 0.0), "shadow": version == shadow}
                if version == shadow and slot.model:
                    entry["shadow_agreement"] = slot.model.shadow_record.summary()
                if slot.model:
                    entry |= slot.model.describe()
                if slot.reason:
                    entry["reason"] = slot.reason
                listed.append(entry)
        listed += [{"name": n, "state": "failed", "reason": r} for n, r in sorted(self.broken.items())]
        return listed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _model_info(model: ServedModel, value: int) -> None:
    engine = model.engine
    labels = (model.name, str(model.version), engine.provider, engine.artifact.numerics, engine.artifact.file,
              engine.precision)
    metrics.MODEL_INFO.labels(*labels).set(value)


def _chosen_over(model: ServedModel) -> str:
    """The other candidates and why they lost, for the ready log line."""
    others = [
        f"{t['provider']} on {t['artifact']}: " + (f"{t['sequences_per_s']} seq/s" if t["passed"] else t["why"])
        for t in model.engine_choice.get("candidates", []) if not t.get("chosen")
    ]
    others += [f"{s['provider']}: {s['why']}" for s in model.engine_choice.get("skipped", [])]
    chosen = next((t for t in model.engine_choice.get("candidates", []) if t.get("chosen")), {})
    return f"{chosen.get('sequences_per_s')} seq/s measured, chosen over [{'; '.join(others) or 'none'}]"


def _batch_observer(name: str):
    size_hist, tokens_hist = metrics.BATCH_SIZE.labels(name), metrics.BATCH_TOKENS.labels(name)

    def observe(size: int, tokens: int) -> None:
        size_hist.observe(size)
        tokens_hist.observe(tokens)

    return observe
