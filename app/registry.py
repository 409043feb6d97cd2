"""The registry: the versions the repository asks for and the state of each (loading, ready, failed, unloading).
It follows the repository (scan at start, then polling), loads new versions through app.loader and gives each a
batcher, drains and unloads removed ones, takes the admin's load / unload, drains everything at shutdown, and
answers readiness and the model listing. It owns the slots and each model's traffic table; every state change
republishes the routing table (app.router), which is all a request reads.

Which traffic table is in force, why the asked one is refused and which versions stay loaded is decided by
app.traffic.decide (a pure function: its docstring states the rules); the registry carries the decision out. A
refusal is logged once per change (error level), shown in /models (table asked, table in force, why), as a cause
code in /health/ready, in bertserve_routing_table_refused and in the audit log (app.audit: each worker records
every version it loaded, failed or unloaded and every table it accepted or refused; never waited on); a model with
no table in force yet (at start) is not ready and answers no request naming no version."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import audit, metrics
from app.batching import Batcher
from app.errors import ModelLoadError, ModelNotFound
from app.loader import load_model
from app.repository import CONFIG_FILE, ModelServing, Wanted, wanted_versions
from app.router import Router, Routing
from app.served import ServedModel
from app.settings import Settings
from app.traffic import Decision, State, decide

log = logging.getLogger("bertserve.registry")


@dataclass(eq=False)
class Slot:
    """A version the repository asks for, whatever its state."""

    name: str
    version: int
    path: Path
    state: State = "loading"
    reason: str | None = None
    cause: str | None = None  # a short code for open routes (ModelLoadError.cause)
    model: ServedModel | None = None
    config_mtime: float = 0.0  # a failed version is retried when its bertserve.json changes


@dataclass
class Table:
    """A model's traffic table: the one its serving.json asks for (None: unreadable), the one in force (None:
    none yet, so no request naming no version is answered), and why the asked one is not in force."""

    asked: Routing | None = None
    in_force: Routing | None = None
    refused: tuple[str, str] | None = None  # (cause code, details for the log and /models)
    # The last serving.json read that was valid: its per-model settings beside routing (a broken file keeps them)
    serving: ModelServing = field(default_factory=ModelServing)


class Registry:
    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.slots: dict[str, dict[int, Slot]] = {}
        self.tables: dict[str, Table] = {}  # every model of the repository (not unloaded by the admin)
        self.unloaded_by_admin: set[str] = set()  # only names of the repository's models
        self.default_model_missing = False  # BERTSERVE_DEFAULT_MODEL names no model of the repository
        self.loading = True
        self.draining = False
        self._loaded = asyncio.Event()
        self._sync_lock = asyncio.Lock()

    # ---- following the repository ----

    async def load_all(self) -> None:
        try:
            await self.sync()
            if not self.slots and not self.tables:
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
        """Make the loaded versions and traffic tables match the repository (for one model, or all)."""
        async with self._sync_lock:
            settings = self.settings
            wanted = await asyncio.to_thread(wanted_versions, settings.model_repository, settings.max_loaded_versions)
            self.unloaded_by_admin &= set(wanted)  # a model gone from the repository is forgotten
            if only is None:
                self._check_default_model(set(wanted))
            names = [only] if only else sorted(set(wanted) | set(self.slots) | set(self.tables))
            for name in names:
                unloaded = name in self.unloaded_by_admin  # by the admin: followed as if gone from the repository
                await self._sync_model(name, None if unloaded else wanted.get(name))

    def _check_default_model(self, names: set[str]) -> None:
        missing = bool(self.settings.default_model) and self.settings.default_model not in names
        if missing and not self.default_model_missing:
            log.warning("BERTSERVE_DEFAULT_MODEL=%r names no model of the repository %s (models: %s): requests "
                        "naming no model cannot be answered; the replica is not ready", self.settings.default_model,
                        self.settings.model_repository, sorted(names))
        self.default_model_missing = missing

    async def _sync_model(self, name: str, wanted: Wanted | None) -> None:
        """Carry out the traffic decision (app.traffic.decide) for one model (wanted None: gone from the
        repository, or unloaded by the admin): load what it keeps, decide again on the outcomes, put that in
        force, then drain and unload the rest. The table is registered before any load, so that a version ready
        early never answers as a default meanwhile."""
        table = self.tables.get(name) if wanted is None else self.tables.setdefault(name, Table())
        slots = self.slots.setdefault(name, {})
        decision = decide(wanted, table.in_force if table else None, slots)
        if table is not None:
            table.asked = decision.asked
            if wanted is not None and wanted.serving is not None:
                table.serving = wanted.serving
        folders = wanted.folders if wanted else {}
        for version in sorted(decision.keep):  # load new versions first, so traffic can move over
            slot, path = slots.get(version), folders[version]
            mtime = _mtime(path / CONFIG_FILE)
            if slot is None or (slot.state == "failed" and slot.config_mtime != mtime):
                slot = slots[version] = Slot(name, version, path, config_mtime=mtime)
                await self._load(slot)
        decision = decide(wanted, table.in_force if table else None, slots)
        if table is not None:
            self._apply(name, table, decision)
        self._publish()
        for version in [v for v in slots if v not in decision.keep]:
            await self._unload(slots[version])
        if table is not None and decision.gone:  # drained now: the table no longer holds, no other split is made up
            log.error("model %s: version(s) %s of the traffic table in force are gone; requests naming no version "
                      "are refused until serving.json names versions that can be served", name, sorted(decision.gone))
            table.in_force = None
        if wanted is None and self.tables.pop(name, None) is not None:  # no longer followed
            metrics.ROUTING_TABLE_REFUSED.labels(name).set(0)
        if not slots:
            del self.slots[name]
        self._publish()

    def _apply(self, name: str, table: Table, decision: Decision) -> None:
        """Take the decided table in force and refusal: each change logged once, and the metric follows."""
        if decision.in_force is not None and decision.in_force != table.in_force:
            log.info("model %s: traffic table in force: %s", name, decision.in_force.describe())
            audit.event("table", "accepted", model=name, table=decision.in_force.describe())
        refused = decision.refused
        if refused is not None and refused != table.refused:
            audit.event("table", "refused", model=name, cause=refused[0], reason=refused[1],
                        table=decision.asked.describe() if decision.asked else None)
            log.error("model %s: the traffic table of serving.json is not in force (%s: %s); %s", name, refused[0],
                      refused[1], "the previous table stays in force" if decision.in_force is not None else
                      "no table is in force, so requests naming no version are refused and the replica is not ready")
        table.in_force, table.refused = decision.in_force, refused
        metrics.ROUTING_TABLE_REFUSED.labels(name).set(0 if refused is None else 1)

    async def _load(self, slot: Slot) -> None:
        try:
            model = await asyncio.to_thread(load_model, slot.name, slot.version, slot.path, self.settings)
        except Exception as exc:  # one bad version must not stop the others; its reason is shown
            slot.state = "failed"
            slot.reason = str(exc) if isinstance(exc, ModelLoadError) else f"{slot.path}: {type(exc).__name__}: {exc}"
            slot.cause = exc.cause if isinstance(exc, ModelLoadError) else "load_failed"
            log.error("model %s version %d not served: %s", slot.name, slot.version, slot.reason)
            audit.event("version", "failed", model=slot.name, version=slot.version, cause=slot.cause,
                        reason=slot.reason)
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
        audit.event("version", "loaded", model=slot.name, version=slot.version, artifact=model.engine.artifact.file,
                    sha256=await audit.sha256_of(slot.path / model.engine.artifact.file),
                    provider=model.engine.provider)
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
        audit.event("version", "unloaded", model=slot.name, version=slot.version)

    def _publish(self) -> None:
        """Hand the router the ready versions: called on every state change."""
        ready = {
            name: {v: s.model for v, s in slots.items() if s.state == "ready" and s.model}
            for name, slots in self.slots.items()
        }
        routing = {name: table.in_force for name, table in self.tables.items()}
        self.router.update(ready, known=list(self.slots), routing=routing)

    # ---- admin ----

    async def admin_load(self, name: str) -> None:
        """Load the model's versions in this worker (an unknown name retains nothing: sync forgets it)."""
        self.unloaded_by_admin.discard(name)
        await self.sync(only=name)
        if not any(s.state == "ready" for s in self.slots.get(name, {}).values()):
            table = self.tables.get(name)
            why = f" ({table.refused[0]}: see GET /models/{name})" if table and table.refused else ""
            raise ModelNotFound(f"model {name!r} has no servable version in the repository{why}")

    async def admin_unload(self, name: str) -> None:
        """Drain and unload the model in this worker only (others follow the repository, not this call)."""
        if name not in self.slots and name not in self.tables:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.unloaded_by_admin.add(name)
        await self.sync(only=name)

    # ---- shutdown ----

    def stop_admitting(self) -> None:
        """From now on new work is refused (503), readiness fails and every answer closes its connection."""
        self.draining = True

    async def drain(self, timeout_s: float) -> int:
        """Refuse new work, then wait (at most timeout_s) until every accepted sequence is answered: the number of
        sequences still queued or running then (the caller says so, with the bound it was given)."""
        self.stop_admitting()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(m.batcher.drained() for m in self._ready_models() if m.batcher))
        except TimeoutError:
            pass
        return sum(m.batcher.load for m in self._ready_models() if m.batcher)

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

    def serving_of(self, name: str) -> ModelServing:
        """The model's per-model settings from its serving.json (the last valid read; defaults without one)."""
        table = self.tables.get(name)
        return table.serving if table is not None else ModelServing()

    def version_states(self, name: str) -> dict[int, State]:
        """Every version the registry has of a model and its state, or ModelNotFound."""
        slots = self.slots.get(name)
        if not slots:
            raise ModelNotFound(f"model {name!r} is not served; served: {sorted(self.slots)}")
        return {version: slot.state for version, slot in sorted(slots.items())}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when loaded, not draining, every model has a version serving under a table in force, and
        BERTSERVE_DEFAULT_MODEL (when set) names a model of the repository. A failed new version next to a
        serving one, or a refused new table while the previous one serves, is reported but keeps the replica
        ready: traffic is still answered as before. The body is open to anyone: states and short cause codes
        only (no paths, nothing read from a file); the details are in the log and the authenticated /models."""
        models: dict[str, Any] = {}
        causes: dict[str, str] = {}
        for name, slots in self.slots.items():
            models[name] = {str(v): s.state if s.state != "failed" else f"failed: {s.cause}" for v, s in slots.items()}
        for name, table in self.tables.items():
            models.setdefault(name, {})
            if table.refused is not None:
                causes[name] = table.refused[0]
        serving = self.router.served
        for name in sorted(set(models) - serving - set(causes)):
            states = {s.state: s.cause for s in self.slots.get(name, {}).values()}
            table = self.tables.get(name)
            causes[name] = ("loading" if "loading" in states else states["failed"] or "load_failed"
                            if "failed" in states else "no_table_in_force" if table and table.in_force is None
                            else "not_serving")
        if self.default_model_missing:
            causes[str(self.settings.default_model)] = "unknown_default_model"
        ready = (not self.loading and not self.draining and bool(serving) and serving == set(models)
                 and not self.default_model_missing)
        status = "draining" if self.draining else "loading" if self.loading else "ready" if ready else "not ready"
        detail: dict[str, Any] = {"status": status, "models": models}
        if causes:
            detail["causes"] = dict(sorted(causes.items()))
        return ready, detail

    def list_models(self, full_reasons: bool = True) -> list[dict[str, Any]]:
        """One entry per version (a model with none loaded: one entry, state failed, with why), each with the
        model's traffic table: asked by serving.json, in force, and why the asked one is not in force.
        `full_reasons` False (a client key): each reason is its cause's fixed wording (redacted()), since the full
        one names paths and quotes repository files."""
        listed = []
        for name in sorted(set(self.slots) | set(self.tables)):
            slots = self.slots.get(name, {})
            default = self.router.default_version(name)
            traffic, shadow = self.router.traffic(name), self.router.shadow_version(name)
            routing = self._routing_info(name, full_reasons)
            for version, slot in sorted(slots.items()):
                entry = {"name": name, "version": version, "state": slot.state, "default": version == default,
                         "traffic": traffic.get(version, 0.0), "shadow": version == shadow}
                if version == shadow and slot.model:
                    entry["shadow_agreement"] = slot.model.shadow_record.summary()
                if slot.model:
                    entry |= slot.model.describe()
                    if not full_reasons and entry.get("engine"):
                        entry["engine"] = _redacted_engine(entry["engine"])
                if slot.reason:
                    entry |= {"reason": slot.reason if full_reasons else redacted(slot.cause), "cause": slot.cause}
                listed.append(entry | {"routing": routing})
            if not slots:
                refused = routing["refused"] or {"cause": "not_serving", "reason": "no version loaded"}
                listed.append({"name": name, "state": "failed", "reason": refused["reason"],
                               "cause": refused["cause"], "routing": routing})
        if self.default_model_missing:
            listed.append({"name": self.settings.default_model, "state": "failed", "cause": "unknown_default_model",
                           "reason": "BERTSERVE_DEFAULT_MODEL names no model of the repository"})
        return listed

    def _routing_info(self, name: str, full_reasons: bool = True) -> dict[str, Any]:
        table = self.tables.get(name)
        if table is None:
            return {"asked": None, "in_force": None, "refused": None}
        refused = None
        if table.refused:
            cause, reason = table.refused
            refused = {"cause": cause, "reason": reason if full_reasons else redacted(cause)}
        return {
            "asked": table.asked.describe() if table.asked else None,
            "in_force": table.in_force.describe() if table.in_force else None,
            "refused": refused,
        }


# What a client key is told of each cause (the full reason, with paths and text quoted from repository files, goes
# to admin keys and the log only).
_REDACTED = {
    "load_failed": "the version could not be loaded",
    "golden_gate": "no engine reproduced the version's golden outputs",
    "missing_files": "a file the version needs is missing",
    "invalid_config": "a file of the version is not valid",
    "unreadable": "a file of the version cannot be read",
    "outside_repository": "a file is a link leading outside the model repository (refused)",
    "bad_serving_json": "the model's serving.json cannot be used",
    "table_refused": "serving.json's traffic table names versions that cannot be served",
}


def redacted(cause: str | None) -> str:
    """A cause's fixed reason for client keys: no path, nothing read from a file."""
    return _REDACTED.get(cause or "", "not serving") + " (details in the server log)"


def _redacted_engine(choice: dict[str, Any]) -> dict[str, Any]:
    """The engine choice for client keys: a candidate that could not even be opened says so without its error
    (which names the artifact's path); gate figures (a candidate that ran) are kept."""
    candidates = [t if t.get("passed") or "agreement" in t else t | {"why": "could not be opened (details in the "
                  "server log)"} for t in choice.get("candidates", [])]
    return choice | {"candidates": candidates} if "candidates" in choice else choice


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
    model.metrics.publish(model.gate_accuracy, bool(value))  # drift reference, gated accuracy (app.drift)


def _chosen_over(model: ServedModel) -> str:
    """The other candidates and why they lost, for the ready log line."""
    others = [
        f"{t['provider']} on {t['artifact']}: " + (f"{t['sequences_per_s']} seq/s" if t["passed"] else t["why"])
        for t in model.engine_choice.get("candidates", []) if not t.get("chosen")
    ]
    others += [f"{s['provider']}: {s['why']}" for s in model.engine_choice.get("skipped", [])]
    chosen = next((t for t in model.engine_choice.get("candidates", []) if t.get("chosen")), {})
    rule = model.engine_choice.get("rule", "fastest")  # app.loader.pick: fastest, or most faithful within the margin
    return f"{chosen.get('sequences_per_s')} seq/s measured, chosen as {rule} over [{'; '.join(others) or 'none'}]"


def _batch_observer(name: str):
    size_hist, tokens_hist = metrics.BATCH_SIZE.labels(name), metrics.BATCH_TOKENS.labels(name)

    def observe(size: int, tokens: int) -> None:
        size_hist.observe(size)
        tokens_hist.observe(tokens)

    return observe
