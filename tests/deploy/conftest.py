"""Fixtures of the deploy tier (its helpers: tests/support/deploy.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml

from tests.support.deploy import CHART, NAMESPACE, RELEASE, helm, load_yaml_docs


@pytest.fixture(scope="session")
def render_chart() -> Callable[[dict], list[dict]]:
    """render(values) -> the manifests `helm template demo deploy/helm/bertserve -n ml` would print (cached)."""
    h = helm()
    chart = h.Chart.load(str(CHART))
    cache: dict[str, list[dict]] = {}

    def render(values: dict | None = None) -> list[dict]:
        key = yaml.safe_dump(values or {}, sort_keys=True)
        if key not in cache:
            out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
            cache[key] = [d for path, text in sorted(out.items()) if path.endswith(".yaml")
                          for d in load_yaml_docs(text)]
        return cache[key]

    return render
