"""A real Prometheus on 127.0.0.1, configured from deploy/prometheus (its rules included), scraping a real
`bertserve serve --workers 2` on the tiny model (version 1 answering, version 2 its shadow) and a tiny token
classifier (`ner`, for the token panels): counters add up
across workers, shadow comparisons add up to the texts answered, the alert rules evaluate cleanly, the GPU alert
goes pending for a target that expects CUDA, and every dashboard panel's PromQL returns data."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest
import yaml

from tests.support.deploy import DEPLOY, EXPORTED, dashboard, metric_names, recorded, stop_process, tool, wait_for
from tests.support.deploy import prom_query as query
from tests.support.deploy import prom_scalar as scalar
from tests.support.servers import Server, free_port

pytestmark = pytest.mark.deploy

SINGLE = ["this medicine worked wonders", "terrible side effects", "it was okay", "my doctor changed the dose"]
RATE_WINDOW = "30s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval


@pytest.fixture(scope="module")
def bertserve(tiny_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("bertserve-live")
    from app.cli import main as cli
    from app.lifecycle.export import ExportRequest, export_model
    from app.lifecycle.gate import GateData
    from tests.support.tiny import make_token_checkpoint

    env = {"BERTSERVE_METRICS_DIR": str(work / "metrics"), "BERTSERVE_LOG_LEVEL": "warning",
           "BERTSERVE_DEFAULT_MODEL": "tiny", "BERTSERVE_PREDICTION_LOG_DIR": str(work / "log")}
    repo = work / "repo"  # version 1 answers; version 2 (a copy) runs each answer as its shadow
    # Exported as `bertserve export` does, on labelled gate texts: its report holds the gated accuracy and
    # drift.json its reference (fp32 only: the shadow copy then agrees on every text)
    export_model(ExportRequest(source=tiny_checkpoint, name="tiny", repository=repo, version=1, quantize="none",
                               gate_data=GateData(SINGLE * 3, [0, 1, 2] * 4, "live test texts")))
    shutil.copytree(repo / "tiny" / "1", repo / "tiny" / "2")
    (repo / "tiny" / "serving.json").write_text('{"shadow": 2}')
    cli(["export", str(make_token_checkpoint(work / "ner-checkpoint")), "--name", "ner", "--quantize", "none",
         "--model-repository", str(repo)])
    server = Server(repo, workers=2, env=env)
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def prometheus(bertserve, tmp_path_factory):
    """Prometheus with deploy/prometheus/prometheus.yml and its rules; targets file pointed at the live service."""
    binary = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copytree(DEPLOY / "prometheus" / "rules", work / "rules")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    port = free_port()
    target = bertserve.removeprefix("http://")
    (work / "targets").mkdir()
    (work / "targets" / "bertserve.yml").write_text(yaml.safe_dump([{"targets": [target],
                                                                     "labels": {"expected_provider": "cpu"}}]))
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    # The same service seen by a deployment that expects CUDA: the GPU alert must go pending for it only.
    config["scrape_configs"].append({"job_name": "bertserve-expects-cuda", "static_configs": [
        {"targets": [target], "labels": {"expected_provider": "cuda"}}]})
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(work / "prometheus.log", "w+")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(url + "/-/ready", timeout=2).status_code == 200, 30, "prometheus ready")
        yield url
    except Exception:
        log.seek(0)
        print(log.read())
        raise
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def traffic(bertserve, prometheus):
    """Two bursts a few scrapes apart (so rates are non-zero), with a few client errors and feedback on some
    answers (the true label by turn); returns the counts."""
    sent = {"200": 0, "422": 0, "404": 0, "predictions": 0, "feedback": 0}
    with httpx.Client(base_url=bertserve, timeout=30) as client:
        wait_for(lambda: scalar(prometheus, 'up{job="bertserve"}') == 1, 20, "first scrape")
        for _ in range(2):
            for i in range(20):
                answer = client.post("/predict", json={"inputs": SINGLE[i % 4]})
                assert answer.status_code == 200
                if i % 2 == 0:
                    feedback = client.post("/feedback", json={"id": answer.headers["x-request-id"],
                                                              "label": ("negative", "neutral", "positive")[i % 3]})
                    assert feedback.status_code == 200, feedback.text
                    sent["feedback"] += 1
            for _ in range(5):
                assert client.post("/predict", json={"inputs": SINGLE[:3]}).status_code == 200
            for text in SINGLE:  # the token classifier: entities and windows (its texts are not predictions)
                assert client.post("/predict", json={"inputs": text, "model": "ner"}).status_code == 200
            sent["200"] += 25 + len(SINGLE)
            sent["predictions"] += 20 + 15
            assert client.post("/predict", json={"inputs": 42}).status_code == 422
            assert client.post("/predict", json={"inputs": "x", "model": "nope"}).status_code == 404
            sent["422"] += 1
            sent["404"] += 1
            # the next burst only after a scrape has seen this one, so rates have two samples to work with
            wait_for(lambda: scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="200"})')
                     == sent["200"] or None, 20, f"a scrape with {sent['200']} answered")
    return sent


def test_counters_add_up_across_two_workers(prometheus, traffic):
    want = traffic["200"]
    got = wait_for(lambda: scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="200"})') == want
                   or None, 20, f"sum of 200s == {want}")
    assert got
    assert scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="422"})') == traffic["422"]
    assert scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="404"})') == traffic["404"]
    assert scalar(prometheus, 'sum(bertserve_predictions_total{job="bertserve"})') == traffic["predictions"]
    assert scalar(prometheus, 'sum(bertserve_prediction_tokens_count{job="bertserve"})') == traffic["predictions"]
    assert scalar(prometheus, 'sum(bertserve_feedback_total{job="bertserve"})') == traffic["feedback"]
    # every answered request is counted once and timed once, whatever its status and model label
    total = traffic["200"] + traffic["422"] + traffic["404"]
    assert scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve"})') == total
    assert scalar(prometheus, 'sum(bertserve_request_duration_seconds_count{job="bertserve"})') == total
    # two live workers, each with a queue gauge (pid label) per version: tiny 1 and 2, ner 1
    assert len(query(prometheus, 'bertserve_queue_size{job="bertserve"}')) == 2 * 3
    # every request was answered by version 1, and named it
    assert scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="200", version="1"})') == want


def test_shadow_comparisons_add_up_to_the_texts_answered(prometheus, traffic):
    """Each answered text is compared on the shadow (version 2, a copy: it agrees) or dropped, in both workers."""
    compared = ('sum(bertserve_shadow_decisions_total{job="bertserve"})'
                ' + sum(bertserve_shadow_dropped_total{job="bertserve"})')
    assert wait_for(lambda: scalar(prometheus, compared) == traffic["predictions"] or None, 20, "shadow work scraped")
    assert scalar(prometheus, 'sum(bertserve_shadow_decisions_total{job="bertserve", version="2", outcome="agree"})') \
        == scalar(prometheus, 'sum(bertserve_shadow_decisions_total{job="bertserve"})') > 0


def test_every_dashboard_panel_returns_data(prometheus, traffic):
    wait_for(lambda: scalar(prometheus, 'sum(bertserve_requests_total{job="bertserve", status="200"})')
             == traffic["200"], 20, "last burst scraped")
    empty = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", RATE_WINDOW).replace('job=~"$job"', 'job="bertserve"')
                    .replace("$instance", ".*").replace("$model", ".*"))
            result = query(prometheus, expr)
            if not result or all(v["value"][1] == "NaN" for v in result):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)


def test_live_quality_and_drift_rules_on_real_series(prometheus, traffic):
    """The recording rules over two workers' counters: live accuracy is the share of feedback whose label was the
    one answered and coverage feedback over texts (checked against the raw counters' increases at the rule's own
    evaluation time), and the PSI of the tiny model's traffic against its export reference (drift.json: the same
    four texts, in other proportions) is a finite figure per feature."""
    wait_for(lambda: scalar(prometheus, 'sum(bertserve:feedback_count:1d{job="bertserve"})'), 20, "feedback recorded")
    # the time of the rule's last evaluation: every figure below is taken then, as the rules saw the counters
    at = scalar(prometheus, 'timestamp(bertserve:live_accuracy:1d{job="bertserve", model="tiny", version="1"})')

    def increases(expr: str) -> list[dict]:
        body = httpx.get(prometheus + "/api/v1/query", params={"query": expr, "time": at}, timeout=10).json()
        return body["data"]["result"]

    [record] = increases('bertserve:live_accuracy:1d{job="bertserve", model="tiny", version="1"}')
    accuracy = float(record["value"][1])

    feedback = increases('increase(bertserve_feedback_total{job="bertserve", model="tiny"}[1d])')
    total = sum(float(r["value"][1]) for r in feedback)
    right = sum(float(r["value"][1]) for r in feedback if r["metric"]["label"] == r["metric"]["predicted"])
    assert total > 0 and 0 < right < total  # feedback of both kinds reached the rule
    assert accuracy == pytest.approx(right / total)
    texts = sum(float(r["value"][1]) for r in increases(
        'increase(bertserve_prediction_tokens_count{job="bertserve", model="tiny", version="1"}[1d])'))
    [coverage] = increases('bertserve:feedback_coverage:1d{job="bertserve", model="tiny", version="1"}')
    assert float(coverage["value"][1]) == pytest.approx(total / texts)
    f1 = {r["metric"]["label"] for r in query(prometheus, 'bertserve:live_f1:1d{job="bertserve", model="tiny"}')}
    assert f1 == {"negative", "neutral", "positive"}
    psi = {r["metric"]["feature"]: float(r["value"][1])
           for r in query(prometheus, 'bertserve:prediction_psi:1h{job="bertserve", model="tiny", version="1"}')}
    assert set(psi) == {"label", "confidence", "tokens"} and all(0 <= v < 50 for v in psi.values()), psi
    gated = scalar(prometheus, 'max(bertserve_model_gate_accuracy{job="bertserve", model="tiny", version="1"})')
    assert 0 < gated <= 1


def test_dashboard_metrics_are_in_the_live_exposition(bertserve, traffic):
    body = httpx.get(bertserve + "/metrics", timeout=10).text
    live = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
    used = set().union(*(metric_names(t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])))
    used -= recorded()  # made by the recording rules, in Prometheus
    assert used <= live, f"on the dashboard but not in /metrics: {used - live}"
    assert EXPORTED <= live, f"listed as exported but not served: {EXPORTED - live}"


def test_alert_rules_load_and_evaluate_on_real_series(prometheus, traffic):
    def evaluated():
        groups = httpx.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["lastEvaluation"] > "2000" for r in rules) else None

    rules = wait_for(evaluated, 20, "rules evaluated")
    in_file = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "bertserve.rules.yml").read_text())
    assert len(rules) == sum(len(g["rules"]) for g in in_file["groups"])  # every rule of the file loaded
    assert all(r["health"] == "ok" for r in rules), json.dumps(rules, indent=1)
    active = {r["name"]: r["alerts"] for r in rules if r.get("alerts")}  # recording rules have no alerts
    # The only alert on a healthy CPU service is the one for the target that expects CUDA.
    assert set(active) == {"BertserveGpuExpectedButCpu"}, json.dumps(active, indent=1)
    alerts = active["BertserveGpuExpectedButCpu"]
    assert {a["labels"]["model"] for a in alerts} == {"tiny", "ner"}  # each model's versions on CPU
    for alert in alerts:
        assert alert["state"] == "pending" and alert["labels"]["job"] == "bertserve-expects-cuda"
        # the CPU engine chosen by measurement: onnxruntime's CPU provider or OpenVINO
        assert alert["labels"]["provider"] in ("cpu", "openvino")
