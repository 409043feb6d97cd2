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
    assert router.default_version("a") == 2 and router.ready_versions("a") == [1, 2] and router.served == {"a"}


@pytest.mark.parametrize(("ready", "known", "name", "version", "error", "message"), [
    ({}, [], None, None, NotReady, "no model is being served"),
    ({"a": {1: A1}, "b": {3: B3}}, ["a", "b"], None, None, InvalidInput, "several models are served"),
    ({"a": {1: A1}}, ["a"], "zzz", None, ModelNotFound, "'zzz' is not served; served: ['a']"),
    ({"a": {1: A1}}, ["a"], "a", 7, ModelNotFound, "version 7 is not served; ready versions: [1]"),
    ({}, ["a"], "a", None, ModelNotFound, "version None is not served; ready versions: []"),  # loading or failed
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
