"""The traffic decision, as one pure function (as app.batching.cut_batch is for batching): which traffic table is
in force, why the asked one is refused, and which versions stay loaded. app.registry only carries it out (loads,
unloads, publishes to app.router, logs once per change, metrics).

The rules: the table a model's serving.json asks for (traffic weights and shadow) takes effect only once every
version it weights or names as shadow is ready. Until then, and whenever it cannot be honoured (a named version
with no folder, one that failed to load or its golden gate, a serving.json that cannot be used), the table in
force stays, with the versions it names kept loaded; a model with no table in force yet (at start) answers no
request naming no version. A weighted version of the table in force whose folder is removed drains;
then that table no longer holds, and no other split is made up in its place. Nothing here depends on timing, only
on the files and the versions' states, so every worker decides alike."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from app.repository import Wanted
from app.router import Routing

State = Literal["loading", "ready", "failed", "unloading"]


class Version(Protocol):
    """What the decision reads of a version the registry has (app.registry.Slot)."""

    state: State
    cause: str | None  # why it failed: a short code
    reason: str | None  # and the details


@dataclass(frozen=True)
class Decision:
    """What decide says for one model; app.registry carries it out."""

    asked: Routing | None  # the table serving.json asks for (None: it cannot be used, or the model is not followed)
    in_force: Routing | None  # the table in force (None: none, so requests naming no version are refused)
    refused: tuple[str, str] | None  # why the asked table is not (and will not be) in force: (cause code, details)
    keep: frozenset[int]  # the versions to keep loaded, or load; every other one is drained and unloaded
    gone: frozenset[int]  # weighted versions of `in_force` with no folder: once drained, no table is in force


def decide(wanted: Wanted | None, in_force: Routing | None, versions: Mapping[int, Version]) -> Decision:
    """The decision for one model, from what the repository asks (None: the model is gone from it, or unloaded by
    the admin), the table in force now and the states of the versions loaded (or loading, failed, unloading).
    Taken before loading, to know what to load, and again on the outcomes, to know what is in force."""
    if wanted is None:
        return Decision(None, None, None, frozenset(), frozenset())
    if wanted.serving is None:  # keep what runs, and the table in force
        asked, refused = None, ("bad_serving_json", wanted.refused or "")
        keep = {v for v in versions if v in wanted.folders}
    else:
        asked, keep = Routing(wanted.serving.traffic, wanted.serving.shadow), set(wanted.versions)
        refused = _verdict(asked, wanted, versions)
        if refused is None and all(v in versions and versions[v].state == "ready" for v in asked.named):
            in_force = asked
    folders = set(wanted.folders)
    named, weighted = (in_force.named, in_force.weighted) if in_force else (set(), set())
    return Decision(asked, in_force, refused, frozenset(keep | (named & folders)), frozenset(weighted - folders))


def _verdict(asked: Routing, wanted: Wanted, versions: Mapping[int, Version]) -> tuple[str, str] | None:
    """Why the asked table cannot be honoured, or None (it takes effect once its versions are ready)."""
    problems = []
    for version in sorted(asked.named):
        if version not in wanted.folders:
            problems.append(f"version {version} has no folder in the repository")
        elif version in versions and versions[version].state == "failed":
            problems.append(f"version {version} failed ({versions[version].cause}): {versions[version].reason}")
    return ("table_refused", "; ".join(problems)) if problems else None
