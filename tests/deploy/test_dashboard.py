"""Grafana dashboard and provisioning, checked structurally (no Grafana server can be installed here: its
PromQL runs against a real Prometheus in test_live_metrics.py)."""

from __future__ import annotations

import pytest
import yaml

from tests.support.deploy import (
    COUNTERS,
    DASHBOARD,
    DEPLOY,
    EXPORTED,
    GAUGES,
    HISTOGRAMS,
    dashboard,
    metric_names,
    recorded,
)

pytestmark = pytest.mark.deploy


def panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_only_metrics_the_service_exports():
    used = set().union(*(metric_names(e) for e in exprs()))
    assert used <= EXPORTED | recorded(), f"not exported by bertserve nor recorded by its rules: " \
        f"{used - EXPORTED - recorded()}"


def test_covers_what_the_issue_asks_for():
    text = " ".join(exprs())
    titles = " ".join(p["title"].lower() for p in panels())
    for family in COUNTERS | HISTOGRAMS | GAUGES:
        assert family in text, f"{family} is on no panel"
    assert "by (model, status)" in text and 'status=~"5.."' in text          # rate and errors by model/status
    assert all(f"histogram_quantile({q}" in text for q in ("0.5", "0.95", "0.99"))
    assert "pid" in text and "by (pod, instance)" in text                    # per worker, per pod
    assert "provider" in text and "version" in text
    for word in ("label mix", "confidence", "batch size", "batch tokens", "queue"):
        assert word in titles


def test_a_row_compares_versions_side_by_side():
    """Issue 14: per-version traffic, latency and shadow agreement in one row."""
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    row = next(r for r in rows if "canary" in r["title"].lower() and "shadow" in r["title"].lower())
    after = [p for p in dashboard()["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"]]
    later_rows = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
    in_row = [p for p in after if not later_rows or p["gridPos"]["y"] < min(later_rows)]
    text = " ".join(t["expr"] for p in in_row for t in p["targets"])
    assert "sum by (model, version) (rate(bertserve_requests_total" in text                 # traffic per version
    assert "sum by (model, version, le) (rate(bertserve_request_duration_seconds_bucket" in text  # latency
    assert 'bertserve_shadow_decisions_total{' in text and 'outcome="agree"' in text and "[15m]" in text
    assert "bertserve_shadow_probability_difference_bucket" in text and "bertserve_shadow_dropped_total" in text
    assert all("{{version}}" in t["legendFormat"] for p in in_row for t in p["targets"])


def panels_of_row(title_words: tuple[str, ...]) -> list[dict]:
    rows = [p for p in dashboard()["panels"] if p["type"] == "row"]
    row = next(r for r in rows if all(w in r["title"].lower() for w in title_words))
    after = [p for p in dashboard()["panels"] if p["gridPos"]["y"] > row["gridPos"]["y"]]
    later_rows = [r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > row["gridPos"]["y"]]
    return [p for p in after if not later_rows or p["gridPos"]["y"] < min(later_rows)]


def test_a_row_shows_live_accuracy_and_drift_per_version():
    """Issue 33: live accuracy beside the gated one, per-label F1, coverage, PSI: from the recording rules."""
    in_row = panels_of_row(("live accuracy", "drift"))
    text = " ".join(t["expr"] for p in in_row for t in p["targets"])
    for name in ("bertserve:live_accuracy:1d", "bertserve:live_f1:1d", "bertserve:feedback_coverage:1d",
                 "bertserve:prediction_psi:1h", "bertserve_model_gate_accuracy", "bertserve_feedback_total",
                 "bertserve_prediction_tokens_bucket"):
        assert name in text, f"{name} is not in the live accuracy and drift row"
    assert all("{{version}}" in t["legendFormat"] for p in in_row for t in p["targets"])


def test_panels_are_well_formed():
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["uid"] == "bertserve"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance", "model"} <= variables
    for p in panels():
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        for t in p["targets"]:
            assert 'model=~"$model"' in t["expr"], f"{p['title']}: ignores the model selector"
    refs = [(p["id"], t["refId"]) for p in panels() for t in p["targets"]]
    assert len(refs) == len(set(refs))


def test_helm_copy_is_the_same_file():
    copy = DEPLOY / "helm" / "bertserve" / "files" / "bertserve-dashboard.json"
    assert copy.read_text() == DASHBOARD.read_text(), (
        "cp deploy/grafana/dashboards/bertserve.json deploy/helm/bertserve/files/bertserve-dashboard.json")


def test_provisioning_points_at_prometheus_and_the_dashboard_folder():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus" and ds["datasources"][0]["url"] == "http://prometheus:9090"
    dash = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "bertserve.yml").read_text())
    assert dash["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
