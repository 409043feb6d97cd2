"""The router: which loaded version answers a request, and which version shadows it. The version named, else the
model's traffic split (canary weights from serving.json) or its default version; the model named, else the only
one served or BERTSERVE_DEFAULT_MODEL. Its table is rebuilt by the registry on every state change and repository
scan and swapped in whole, so that a request reads dicts (and, for a split, one bisect) instead of scanning.

The routing it is given is each model's table *in force* (app.traffic.decide says which: a table serving.json asks
for takes effect only once every version it weights or names as shadow is ready; until then the previous one
stays). A model the registry gives no table (None: none in force yet) answers no request that names no version
(503, NotReady); a named ready version still answers.

Traffic weights (serving.json `"traffic": {"2": 90, "3": 10}`) apply to requests naming no version. Every
weighted version of a table in force is ready, except while one is draining (its folder removed: at most
BERTSERVE_DRAIN_TIMEOUT_S, after which the registry drops the table); meanwhile the versions still ready share
its weight in proportion to their own. When no weighted version is ready the model answers no request naming no
version (never "the default takes everything": the default is often the canary). When the weights add up to 0
the default version answers. A request with a routing key (the X-Routing-Key header) is placed by a stable hash
of the key (blake2b, not Python's salted hash()) into [0, 1) over the cumulative weights, so the same key and
weights always get the same version; without one, by random.random(). The default version is the highest ready
one that is not the shadow (a shadow takes traffic only when it is given a weight or named).

The shadow (serving.json `"shadow": 3`) is looked up per answering version: every ready version other than the
shadow itself has it, when the shadow is ready."""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from app.errors import InvalidInput, ModelNotFound, NotReady
from app.served import ServedModel

_SPAN = float(1 << 64)


@dataclass(frozen=True, slots=True)
class Routing:
    """What a model's serving.json says about routing (app.repository.ModelServing's routing half)."""

    traffic: Mapping[int, float] | None = None
    shadow: int | None = None

    @property
    def weighted(self) -> set[int]:
        """The versions given a positive weight."""
        return {v for v, w in (self.traffic or {}).items() if w > 0}

    @property
    def named(self) -> set[int]:
        """Every version the table needs served: the weighted ones and the shadow."""
        return self.weighted | ({self.shadow} if self.shadow is not None else set())

    def describe(self) -> dict[str, Any]:
        """For /models: the weights (by version, as strings, as in serving.json) and the shadow."""
        return {"traffic": {str(v): w for v, w in sorted((self.traffic or {}).items())}, "shadow": self.shadow}


@dataclass(frozen=True, slots=True)
class Split:
    """A precomputed traffic split: cumulative shares in (0, 1], ending at 1, and the version each bound picks."""

    bounds: tuple[float, ...]
    models: tuple[Any, ...]
    shares: dict[int, float]  # version -> share of requests naming no version, in percent (for /models)

    def pick(self, key: str | None) -> Any:
        point = random.random() if key is None else key_point(key)
        return self.models[min(bisect_right(self.bounds, point), len(self.models) - 1)]


def key_point(key: str) -> float:
    """A routing key's stable place in [0, 1): the same key, the same place, in every process and run."""
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big") / _SPAN


def make_split(versions: Mapping[int, Any], traffic: Mapping[int, float] | None) -> Split | None:
    """The split over the ready `versions` (version -> model) given the weights; None when no weighted version is
    ready (the default answers). Versions are laid out in ascending order, so a key keeps its version as long as
    the weights stay the same."""
    weights = [(v, float(w)) for v, w in sorted((traffic or {}).items()) if w > 0 and v in versions]
    total = sum(w for _, w in weights)
    if not weights or total <= 0:
        return None
    bounds, running = [], 0.0
    for _, w in weights:
        running += w
        bounds.append(running / total)
    bounds[-1] = 1.0
    return Split(tuple(bounds), tuple(versions[v] for v, _ in weights),
                 {v: round(100 * w / total, 4) for v, w in weights})


class Router:
    def __init__(self, default_model: str | None = None) -> None:
        self.default_model = default_model
        self._ready: dict[str, dict[int, ServedModel]] = {}  # served model -> ready versions
        self._defaults: dict[str, int] = {}  # served model -> default version
        self._splits: dict[str, Split] = {}  # served model -> traffic split (only where weights apply)
        self._shadows: dict[str, ServedModel] = {}  # served model -> its ready shadow version
        self._routing: dict[str, Routing] = {}
        self._known: list[str] = []  # every model the registry has a version of, whatever its state

    def update(self, ready: Mapping[str, Mapping[int, ServedModel]], known: list[str],
               routing: Mapping[str, Routing | None] | None = None) -> None:
        """The registry's new table: the ready versions of each model, every model it knows, and each model's
        routing in force (traffic weights, shadow; None: no table in force, so no version answers requests naming
        none; a model left out: no weights, no shadow). Built aside and swapped in attribute by attribute, with
        no await in between, so a request sees either the old table or the new one."""
        routing = dict(routing or {})
        ready_ = {name: dict(versions) for name, versions in ready.items() if versions}
        defaults, splits, shadows = {}, {}, {}
        for name, versions in ready_.items():
            if name in routing and routing[name] is None:  # no table in force: only named versions answer
                continue
            rule = routing.get(name) or Routing()
            split = make_split(versions, rule.traffic)
            if split is None and rule.weighted:  # weighted versions, none ready (draining): fail closed
                continue
            serving = [v for v in versions if v != rule.shadow] or list(versions)
            defaults[name] = max(serving)
            if split is not None and len(split.models) == 1:  # one weighted version ready: it is the default
                defaults[name] = next(iter(split.shares))
            elif split is not None:
                splits[name] = split
            if rule.shadow is not None and rule.shadow in versions:
                shadows[name] = versions[rule.shadow]
        self._ready, self._defaults, self._splits, self._shadows = ready_, defaults, splits, shadows
        self._routing = routing
        self._known = sorted(known)

    @property
    def served(self) -> set[str]:
        """The models with a ready version."""
        return set(self._defaults)

    def default_version(self, name: str) -> int | None:
        return self._defaults.get(name)

    def traffic(self, name: str) -> dict[int, float]:
        """Share (percent) of the requests naming no version that each version gets now."""
        split = self._splits.get(name)
        if split is not None:
            return dict(split.shares)
        default = self._defaults.get(name)
        return {} if default is None else {default: 100.0}

    def shadow_version(self, name: str) -> int | None:
        """The shadow of the table in force (whether or not it is ready)."""
        rule = self._routing.get(name)
        return rule.shadow if rule else None

    def shadow_of(self, served: ServedModel) -> ServedModel | None:
        """The ready shadow of the model `served` answered for, unless `served` is that shadow."""
        shadow = self._shadows.get(served.name)
        return None if shadow is None or shadow is served else shadow

    def model_name(self, name: str | None) -> str:
        """The model a request is for: the one named, else the only (or default) model."""
        if name is not None:
            return name
        names = list(self._ready)  # models with a ready version (with or without a table in force)
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

    def resolve(self, name: str | None, version: int | None = None, routing_key: str | None = None) -> ServedModel:
        """The model version that serves a request: the named (or only) model; the given version, else the
        model's traffic split (by routing key when given), else its default version."""
        name = self.model_name(name)
        if name not in self._known:
            raise ModelNotFound(f"model {name!r} is not served; served: {self._known}")
        versions = self._ready.get(name, {})
        if version is None:
            split = self._splits.get(name)
            if split is not None:
                return split.pick(routing_key)
            version = self._defaults.get(name)
        if version is None:
            rule = self._routing.get(name)
            if name in self._routing and rule is None:
                raise NotReady(f"model {name!r} has no traffic table in force (see GET /models/{name}); only "
                               f"requests naming a ready version are answered: {sorted(versions)}")
            if rule is not None and rule.weighted:
                raise NotReady(f"model {name!r} has none of its weighted versions ready; ready versions: "
                               f"{sorted(versions)}")
            raise ModelNotFound(f"model {name!r} has no version serving (loading or failed, see GET /models/"
                                f"{name}); ready versions: {sorted(versions)}")
        model = versions.get(version)
        if model is None:
            raise ModelNotFound(f"model {name!r} version {version} is not served; ready versions: {sorted(versions)}")
        return model
