"""The traffic decision (app.traffic.decide) by a table of cases: serving.json, the version folders, the cap, the
table in force and the versions' states in; the table in force, the refusal, what stays loaded and what is gone
out. Every case the hardening of issue 21 named: the cap, a missing folder, a shadow, a drain, a failed version,
an unreadable serving.json, a first table at start, a table whose versions are still loading. No I/O, no awaits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.repository import ModelServing, Wanted
from app.router import Routing
from app.traffic import decide

UNREADABLE = "/repo/m/serving.json: (root): Invalid JSON"
GATE = "agreement 0.5000 < 0.97"


def version(state: str) -> SimpleNamespace:
    """A version as the registry has it (app.registry.Slot's state, cause and reason)."""
    failed = state == "failed"
    return SimpleNamespace(state=state, cause="golden_gate" if failed else None, reason=GATE if failed else None)


@dataclass(frozen=True)
class Case:
    serving: dict | str | None  # serving.json; a str: why it cannot be used; None: the model is not followed
    folders: tuple[int, ...]
    states: dict[int, str] = field(default_factory=dict)
    in_force: Routing | None = None
    cap: int = 2  # BERTSERVE_MAX_LOADED_VERSIONS (its default)
    # expected
    then_in_force: Routing | None = None
    refused: tuple[str, str] | None = None  # (cause, a part of the details)
    keep: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)

    def wanted(self) -> Wanted | None:
        folders = {v: Path(f"/repo/m/{v}") for v in self.folders}
        if self.serving is None:
            return None
        if isinstance(self.serving, str):
            return Wanted(folders, refused=self.serving)
        return Wanted.select(folders, ModelServing.model_validate(self.serving), self.cap)


CANARY = Routing({1: 80, 2: 20})
CANARY_SHADOW = Routing({1: 80, 2: 20}, shadow=3)
NEW = Routing({2: 50, 3: 50})
DEFAULTS = Routing()

CASES = {
    # -- at start: no table in force yet
    "no serving.json: the empty table is in force at once": Case(
        {}, (1, 2, 3), then_in_force=DEFAULTS, keep={3}),
    "first table at start, its versions still loading": Case(
        {"traffic": {"1": 80, "2": 20}}, (1, 2), {1: "ready", 2: "loading"}, keep={1, 2}),
    "first table at start, before any load": Case(
        {"traffic": {"1": 80, "2": 20}}, (1, 2), keep={1, 2}),
    "first table at start, every version ready": Case(
        {"traffic": {"1": 80, "2": 20}}, (1, 2), {1: "ready", 2: "ready"}, then_in_force=CANARY, keep={1, 2}),
    "first table at start, a version with no folder": Case(
        {"traffic": {"1": 80, "4": 20}}, (1, 2), {1: "ready", 2: "ready"},
        refused=("table_refused", "version 4 has no folder in the repository"), keep={1, 2}),
    "first table at start, a version failed its golden gate": Case(
        {"traffic": {"1": 80, "2": 20}}, (1, 2), {1: "ready", 2: "failed"},
        refused=("table_refused", f"version 2 failed (golden_gate): {GATE}"), keep={1, 2}),
    "first table at start, serving.json unreadable: nothing is loaded": Case(
        UNREADABLE, (1, 2), refused=("bad_serving_json", UNREADABLE)),
    # -- the cap (the versions the policy selects) and the versions a table names, which lift it
    "the cap keeps the highest the policy selects": Case(
        {"version_policy": {"all": True}}, (1, 2, 3, 4), {3: "ready", 4: "ready"}, then_in_force=DEFAULTS,
        keep={3, 4}),
    "named versions lift the cap": Case(
        {"traffic": {"1": 80, "2": 20}, "shadow": 3}, (1, 2, 3, 4), {v: "ready" for v in (1, 2, 3, 4)}, cap=1,
        then_in_force=CANARY_SHADOW, keep={1, 2, 3, 4}),
    "a weight of 0 names no version": Case(
        {"traffic": {"1": 100, "2": 0}}, (1, 2, 3), {1: "ready", 3: "ready"}, cap=1,
        then_in_force=Routing({1: 100, 2: 0}), keep={1, 3}),
    "the table in force keeps its versions beyond the cap while the next one loads": Case(
        {"traffic": {"2": 50, "3": 50}}, (1, 2, 3), {1: "ready", 2: "ready", 3: "loading"}, CANARY, cap=1,
        then_in_force=CANARY, keep={1, 2, 3}),
    # -- the shadow
    "a shadow is named: its readiness is waited for": Case(
        {"traffic": {"1": 80, "2": 20}, "shadow": 3}, (1, 2, 3), {1: "ready", 2: "ready", 3: "loading"},
        keep={1, 2, 3}),
    "a shadow that failed refuses the table": Case(
        {"traffic": {"1": 80, "2": 20}, "shadow": 3}, (1, 2, 3), {1: "ready", 2: "ready", 3: "failed"}, CANARY,
        then_in_force=CANARY, refused=("table_refused", "version 3 failed (golden_gate)"), keep={1, 2, 3}),
    "a shadow never takes the latest's place": Case(
        {"shadow": 3}, (1, 2, 3), {2: "ready", 3: "ready"}, then_in_force=Routing(shadow=3), keep={2, 3}),
    # -- a new table while one is in force
    "a new table whose versions are still loading: the one in force stays": Case(
        {"traffic": {"2": 50, "3": 50}}, (1, 2, 3), {1: "ready", 2: "ready", 3: "loading"}, CANARY,
        then_in_force=CANARY, keep={1, 2, 3}),
    "a new table ready: it takes over and the old versions may go": Case(
        {"traffic": {"2": 50, "3": 50}}, (1, 2, 3), {1: "ready", 2: "ready", 3: "ready"}, CANARY,
        then_in_force=NEW, keep={2, 3}),
    "a new table naming a version with no folder: the one in force stays, its versions loaded": Case(
        {"traffic": {"1": 50, "4": 50}}, (1, 2), {1: "ready", 2: "ready"}, CANARY, then_in_force=CANARY,
        refused=("table_refused", "version 4 has no folder"), keep={1, 2}),
    "a new table with a failed version: the one in force stays": Case(
        {"traffic": {"2": 50, "3": 50}}, (1, 2, 3), {1: "ready", 2: "ready", 3: "failed"}, CANARY,
        then_in_force=CANARY, refused=("table_refused", "version 3 failed"), keep={1, 2, 3}),
    "serving.json turned unreadable: the table in force stays, with what runs": Case(
        UNREADABLE, (1, 2, 3), {1: "ready", 2: "ready", 3: "failed"}, CANARY, then_in_force=CANARY,
        refused=("bad_serving_json", UNREADABLE), keep={1, 2, 3}),
    "serving.json unreadable: a version whose folder is gone drains": Case(
        UNREADABLE, (1,), {1: "ready", 3: "ready"}, Routing({1: 100}), then_in_force=Routing({1: 100}),
        refused=("bad_serving_json", UNREADABLE), keep={1}),
    # -- drain: folders removed
    "a weighted version of the table in force removed: it drains, then no table holds": Case(
        {"traffic": {"1": 80, "2": 20}}, (1,), {1: "ready", 2: "ready"}, CANARY, then_in_force=CANARY,
        refused=("table_refused", "version 2 has no folder"), keep={1}, gone={2}),
    "the shadow of the table in force removed: it drains, the table holds": Case(
        {"traffic": {"1": 80, "2": 20}, "shadow": 3}, (1, 2), {v: "ready" for v in (1, 2, 3)}, CANARY_SHADOW,
        then_in_force=CANARY_SHADOW, refused=("table_refused", "version 3 has no folder"), keep={1, 2}),
    "a version no one wants any more drains": Case(
        {}, (1, 2), {1: "ready", 2: "ready"}, DEFAULTS, then_in_force=DEFAULTS, keep={2}),
    "the model gone from the repository, or unloaded by the admin: everything drains": Case(
        None, (), {1: "ready", 2: "ready"}, CANARY),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_traffic_decision(case: Case):
    versions = {v: version(s) for v, s in case.states.items()}
    decision = decide(case.wanted(), case.in_force, versions)
    assert decision.in_force == case.then_in_force
    if case.refused is None:
        assert decision.refused is None
    else:
        assert decision.refused is not None and decision.refused[0] == case.refused[0]
        assert case.refused[1] in decision.refused[1], decision.refused
    assert decision.keep == case.keep and decision.gone == case.gone


@pytest.mark.parametrize("serving, asked", [
    ({}, DEFAULTS),
    ({"traffic": {"1": 80, "2": 20}, "shadow": 3}, CANARY_SHADOW),
    (UNREADABLE, None),
    (None, None),
])
def test_the_asked_table_is_what_serving_json_says(serving, asked):
    assert decide(Case(serving, (1, 2, 3)).wanted(), CANARY, {}).asked == asked


def test_a_canary_rolls_over_in_two_decisions():
    """As the registry takes it: before loading (what to load: the new versions, the old table's kept), then on
    the outcomes (the new table in force, the old versions free to go)."""
    wanted = Case({"traffic": {"2": 50, "3": 50}}, (1, 2, 3)).wanted()
    ready = {1: version("ready"), 2: version("ready")}
    before = decide(wanted, CANARY, ready)
    after = decide(wanted, before.in_force, ready | {3: version("ready")})
    assert (before.in_force, before.keep) == (CANARY, {1, 2, 3})
    assert (after.in_force, after.refused, after.keep) == (NEW, None, {2, 3})
