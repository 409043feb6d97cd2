"""The router: which loaded version answers a request. The version named, else the model's default (its highest
ready version); the model named, else the only one served or BERTSERVE_DEFAULT_MODEL. Canary weights and shadow
versions belong here next. Its table is rebuilt by the registry on every state change, so that a request reads
dicts instead of scanning versions."""

from __future__ import annotations

from collections.abc import Mapping

from app.errors import InvalidInput, ModelNotFound, NotReady
from app.served import ServedModel


class Router:
    def __init__(self, default_model: str | None = None) -> None:
        self.default_model = default_model
        self._ready: dict[str, dict[int, ServedModel]] = {}  # served model -> ready versions
        self._defaults: dict[str, int] = {}  # served model -> default version
        self._known: list[str] = []  # every model the registry has a version of, whatever its state

    def update(self, ready: Mapping[str, Mapping[int, ServedModel]], known: list[str]) -> None:
        """The registry's new table: the ready versions of each model, and every model it knows."""
        self._ready = {name: dict(versions) for name, versions in ready.items() if versions}
        self._defaults = {name: max(versions) for name, versions in self._ready.items()}
        self._known = sorted(known)

    @property
    def served(self) -> set[str]:
        """The models with a ready version."""
        return set(self._defaults)

    def default_version(self, name: str) -> int | None:
        return self._defaults.get(name)

    def ready_versions(self, name: str) -> list[int]:
        return sorted(self._ready.get(name, {}))

    def model_name(self, name: str | None) -> str:
        """The model a request is for: the one named, else the only (or default) model."""
        if name is not None:
            return name
        names = list(self._defaults)
        if len(names) == 1:
            return names[0]
        if self.default_model:
            return self.default_model
        if not names:
            raise NotReady("no model is being served; see /health/ready")
        raise InvalidInput(f"several models are served, name one in 'model': {sorted(names)}")

    def metric_label(self, name: str | None) -> str:
        """The model label of request metrics: a known model's name or "unknown", so labels stay a closed set."""
        try:
            name = self.model_name(name)
        except (NotReady, InvalidInput):
            return "unknown"
        return name if name in self._known else "unknown"

    def resolve(self, name: str | None, version: int | None = None) -> ServedModel:
        """The model version that serves a request: the named (or only) model, the given or default version."""
        name = self.model_name(name)
        if name not in self._known:
            raise ModelNotFound(f"model {name!r} is not served; served: {self._known}")
        versions = self._ready.get(name, {})
        version = self._defaults.get(name) if version is None else version
        model = versions.get(version) if version is not None else None
        if model is None:
            raise ModelNotFound(f"model {name!r} version {version} is not served; ready versions: {sorted(versions)}")
        return model
