"""Prometheus config and alert rules with promtool: check config, check rules, and the rule unit tests."""

from __future__ import annotations

import pytest
import yaml

from tests.support.deploy import DEPLOY, run, tool

pytestmark = pytest.mark.deploy

PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "bertserve.rules.yml"
RULE_TESTS = PROM / "tests" / "bertserve.rules.test.yml"
ISSUE_ALERTS = {  # what issue 7 asks alerts for
    "service down": {"BertserveTargetDown", "BertserveServiceDown"},
    "high error ratio": {"BertserveHighErrorRatio"},
    "p99 over SLO": {"BertserveLatencyP99OverSLO"},
    "queue near full / 429s": {"BertserveQueueNearFull", "BertserveRejectingRequests"},
    "GPU deployment on CPU": {"BertserveGpuExpectedButCpu"},
    "shadow agreement low (issue 14)": {"BertserveShadowAgreementLow"},
    "traffic table refused (issue 21)": {"BertserveRoutingTableRefused"},
    "live accuracy below the gate, prediction drift (issue 33)": {"BertserveLiveAccuracyBelowGate",
                                                                  "BertservePredictionDrift"},
}
ISSUE_RECORDS = {  # issue 33: live quality and drift computed by Prometheus over the summed counters
    "bertserve:live_accuracy:1d", "bertserve:live_f1:1d", "bertserve:feedback_coverage:1d",
    "bertserve:prediction_psi:1h",
}


def alerts() -> set[str]:
    return {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}


def records() -> set[str]:
    return {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r}


def test_promtool_check_config():
    out = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")], timeout=30)
    assert "1 rule files found" in out.stdout


def test_promtool_check_rules():
    out = run([tool("promtool"), "check", "rules", str(RULES)], timeout=30)
    assert f"{len(alerts()) + len(records())} rules found" in out.stdout


def test_promtool_rule_unit_tests():
    out = run([tool("promtool"), "test", "rules", str(RULE_TESTS)], timeout=60)
    assert "SUCCESS" in out.stdout + out.stderr


def test_every_alert_asked_for_exists_and_has_a_firing_unit_test():
    assert set().union(*ISSUE_ALERTS.values()) <= alerts()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in tests for c in t["alert_rule_test"] if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests for c in t["alert_rule_test"] if not c.get("exp_alerts")}
    assert fired == alerts() and quiet == alerts(), "each alert needs a firing and a quiet case"


def test_every_quality_record_asked_for_exists_and_has_a_unit_test():
    assert ISSUE_RECORDS <= records()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {c["expr"].split("{")[0] for t in tests for c in t.get("promql_expr_test", [])}
    assert ISSUE_RECORDS <= tested


@pytest.mark.parametrize("threshold, loosened, alert", [
    ("> 0.05", "> 0.5", "BertserveHighErrorRatio"),
    ("< 0.95", "< 0.85", "BertserveShadowAgreementLow"),  # at 85 % the disagreeing shadow (90 %) no longer fires
    ("(bertserve_routing_table_refused) > 0", "(bertserve_routing_table_refused) > 1",
     "BertserveRoutingTableRefused"),  # a refused table (1) no longer fires
    ("bertserve_model_gate_accuracy > 0) - 0.05)", "bertserve_model_gate_accuracy > 0) - 0.2)",
     "BertserveLiveAccuracyBelowGate"),  # 0.7 live is within 0.2 of the 0.85 gate
    ("bertserve:feedback_count:1d >= 200", "bertserve:feedback_count:1d >= 20",
     "BertserveLiveAccuracyBelowGate"),  # the 2-a-minute model then fires too
    ("bertserve:prediction_psi:1h > 0.2", "bertserve:prediction_psi:1h > 1", "BertservePredictionDrift"),
    ("bertserve:prediction_count:1h >= 500", "bertserve:prediction_count:1h >= 50",
     "BertservePredictionDrift"),  # the 70-text model then fires too
    ("(bertserve_drift_reference > 0)", "(bertserve_drift_reference)",
     "bertserve:prediction_psi:1h"),  # an unloaded version's 0 reference gives an infinite PSI
])
def test_unit_tests_fail_when_a_threshold_is_loosened(tmp_path, threshold, loosened, alert):
    """Negative control: with one alert's threshold loosened, `promtool test rules` fails on that alert."""
    assert threshold in RULES.read_text()
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(RULES.read_text().replace(threshold, loosened))
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    proc = run([tool("promtool"), "test", "rules", str(tmp_path / "tests" / RULE_TESTS.name)], check=False)
    assert proc.returncode != 0 and alert in proc.stdout + proc.stderr
