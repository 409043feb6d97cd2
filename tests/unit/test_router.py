"""The router on its own: a table in, the version that answers out. ServedModel stand-ins are plain objects: the
router only hands them back."""

from __future__ import annotations

import pytest

from app.errors import InvalidInput, ModelNotFound, NotReady
from app.router import Router

A1, A2, B3 = object(), object(), object()


def test_default_is_the_highest_ready_version_and_a_named_one_wins():
    router = Router()
    router.update({"a": {1: A1, 2: A2}}, known=["a"])
    assert router.resolve(None) is A2 and router.resolve("a") is A2 and router.resolve("a", 1) is A1
    assert router.default_version("a") == 2 and router.served == {"a"}


@pytest.mark.parametrize(("ready", "known", "name", "version", "error", "message"), [
    ({}, [], None, None, NotReady, "no model is being served"),
    ({"a": {1: A1}, "b": {3: B3}}, ["a", "b"], None, None, InvalidInput, "several models are served"),
    ({"a": {1: A1}}, ["a"], "zzz", None, ModelNotFound, "'zzz' is not served; served: ['a']"),
    ({"a": {1: A1}}, ["a"], "a", 7, ModelNotFound, "version 7 is not served; ready versions: [1]"),
    ({}, ["a"], "a", None, ModelNotFound, "'a' has no version serving"),  # not "version None"
])
def test_what_cannot_be_answered_says_why(ready, known, name, version, error, message):
    router = Router()
    router.update(ready, known=known)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        router.resolve(name, version)


def test_default_model_setting_and_metric_labels_stay_a_closed_set():
    router = Router(default_model="b")
    router.update({"a": {1: A1}, "b": {3: B3}}, known=["a", "b", "c"])
    assert router.resolve(None) is B3
    assert [router.metric_label(n) for n in ("a", "c", "anything", None)] == ["a", "c", "unknown", "b"]
    router.update({}, known=[])  # everything unloaded: the table follows
    assert router.metric_label("a") == "unknown" and router.served == set()


# ---- canary weights and shadow (serving.json "traffic" and "shadow") ----

from collections import Counter  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from app.router import Routing, key_point, make_split  # noqa: E402

V = {v: SimpleNamespace(name="a", version=v) for v in range(1, 6)}  # stand-ins: handed back as they are


@pytest.mark.parametrize(("ready", "traffic", "shares"), [
    ({2, 3}, {2: 90, 3: 10}, {2: 90.0, 3: 10.0}),
    ({2, 3}, {2: 1, 3: 3}, {2: 25.0, 3: 75.0}),                    # weights need not add up to 100
    ({2, 3}, {2: 90, 3: 10, 4: 50}, {2: 90.0, 3: 10.0}),           # 4 not ready: left out, the rest renormalised
    ({2}, {2: 90, 3: 10}, {2: 100.0}),                             # only one weighted version ready
    ({1, 2, 3}, {1: 0, 2: 50, 3: 50}, {2: 50.0, 3: 50.0}),         # weight 0: no traffic
    ({1}, {2: 90, 3: 10}, None),                                   # none ready: the default answers
    ({2, 3}, {2: 0, 3: 0}, None),
    ({2, 3}, None, None),
])
def test_split_renormalises_over_ready_versions(ready, traffic, shares):
    split = make_split({v: V[v] for v in ready}, traffic)
    assert (split.shares if split else None) == shares
    if split:
        assert split.bounds[-1] == 1.0 and list(split.bounds) == sorted(split.bounds)


@pytest.mark.parametrize(("ready", "routing", "default", "traffic", "shadow"), [
    ({1, 2}, Routing(), 2, {2: 100.0}, None),
    ({2, 3}, Routing({2: 90, 3: 10}), 3, {2: 90.0, 3: 10.0}, None),
    ({2, 3}, Routing(shadow=3), 2, {2: 100.0}, 3),                 # a shadow takes no traffic by default
    ({3}, Routing(shadow=3), 3, {3: 100.0}, 3),                    # ... unless it is all there is
    ({2, 3}, Routing({3: 10}, shadow=3), 3, {3: 100.0}, 3),        # ... or it is given a weight
    ({2}, Routing(shadow=3), 2, {2: 100.0}, None),                 # the shadow not ready: no shadow work
    ({1, 2, 3}, Routing({1: 1}), 1, {1: 100.0}, None),             # one weighted version ready: the default
])
def test_routing_table(ready, routing, default, traffic, shadow):
    router = Router()
    router.update({"a": {v: V[v] for v in ready}}, known=["a"], routing={"a": routing})
    assert router.default_version("a") == default and router.traffic("a") == traffic
    served = [router.resolve("a", v) for v in sorted(ready)]  # a named version always wins
    assert served == [V[v] for v in sorted(ready)]
    shadows = [router.shadow_of(m) for m in served]  # the shadow has no shadow of its own
    assert shadows == [None if shadow in (None, m.version) else V[shadow] for m in served]


def test_weighted_split_stickiness_and_weight_changes():
    router = Router()
    router.update({"a": {2: V[2], 3: V[3]}}, known=["a"], routing={"a": Routing({2: 90, 3: 10})})
    counts = Counter(router.resolve("a").version for _ in range(20_000))  # random, no key
    assert abs(counts[3] / 20_000 - 0.10) < 0.01
    keyed = {f"user-{k}": router.resolve("a", routing_key=f"user-{k}") for k in range(2_000)}
    assert abs(sum(m == V[3] for m in keyed.values()) / 2_000 - 0.10) < 0.025  # keys spread like the weights
    assert all(router.resolve("a", routing_key=k) is m for k, m in keyed.items() for _ in range(3))  # sticky
    assert router.resolve("a", 2, routing_key="user-1") is V[2]  # a named version wins over the key
    # a new table (the next scan): same weights, same places; more canary weight moves keys only towards 3
    router.update({"a": {2: V[2], 3: V[3]}}, known=["a"], routing={"a": Routing({2: 90, 3: 10})})
    assert all(router.resolve("a", routing_key=k) is m for k, m in keyed.items())
    router.update({"a": {2: V[2], 3: V[3]}}, known=["a"], routing={"a": Routing({2: 50, 3: 50})})
    moved = {k: router.resolve("a", routing_key=k) for k in keyed}
    assert all(moved[k] is V[3] for k, m in keyed.items() if m is V[3])
    assert abs(sum(m == V[3] for m in moved.values()) / 2_000 - 0.5) < 0.04


def test_key_point_is_stable_and_unsalted():
    """The same key lands on the same place in any process (no PYTHONHASHSEED dependence): fixed values."""
    assert key_point("user-42") == key_point("user-42")
    assert 0 <= key_point("") < 1 and 0 <= key_point("ü-☃-\udcff") < 1
    import subprocess
    import sys
    here = subprocess.run([sys.executable, "-c", "from app.router import key_point; print(key_point('user-42'))"],
                          capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert float(here) == key_point("user-42")


def test_no_table_in_force_answers_only_named_versions():
    """A model the registry gives no table (None: the one serving.json asks for cannot be served yet) answers no
    request naming no version (503), never "the default takes everything"; a named ready version still answers."""
    router = Router()
    router.update({"a": {2: V[2], 3: V[3]}}, known=["a"], routing={"a": None})
    with pytest.raises(NotReady, match="'a' has no traffic table in force"):
        router.resolve("a")
    assert router.resolve("a", 2) is V[2] and router.served == set() and router.default_version("a") is None


def test_weighted_versions_none_ready_fail_closed():
    """Every weighted version draining: the unweighted (often the canary-to-be) version does not take over."""
    router = Router()
    router.update({"a": {2: V[2]}}, known=["a"], routing={"a": Routing({1: 80, 3: 20})})
    with pytest.raises(NotReady, match="none of its weighted versions ready"):
        router.resolve("a")
    assert router.resolve("a", 2) is V[2] and router.traffic("a") == {}
