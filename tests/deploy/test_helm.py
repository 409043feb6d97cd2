"""Helm chart deploy/helm/bertserve: lint (strict) and render with helm-python-sdk (Helm's own Go code),
manifests validated by kubernetes-validate --strict -k 1.30.0, ServiceMonitor / PrometheusRule by the
@kubernetes-models/prometheus-operator schemas (node), values.schema.json rejecting nonsense."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.deploy import CHART, DEPLOY, TOOLS, by_kind, gpu_values, helm, run, tool

pytestmark = pytest.mark.deploy

KUBE_VERSION = "1.30.0"
VARIANTS = {
    "default": {},
    "gpu": gpu_values(),
    # Every optional part switched on, the other model sources, no autoscaling.
    "download-models": {"models": {"source": "download", "download": {
        "url": "https://models.example.invalid/repo.tar.gz", "sha256": "ab" * 32}},
        "monitoring": {"grafanaDashboard": {"enabled": True}, "serviceMonitor": {"labels": {"release": "kps"}}},
        "autoscaling": {"queueSize": {"enabled": True}}},
    "baked-models-no-hpa": {"models": {"source": "image"}, "autoscaling": {"enabled": False}, "replicaCount": 3,
                            "extraEnv": [{"name": "TZ", "value": "UTC"}], "tmpVolume": {"medium": "Memory"}},
    "existing-claim": {"models": {"pvc": {"existingClaim": "my-models"}}, "podDisruptionBudget": {"enabled": False},
                       "monitoring": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}}},
    "api-keys": {"auth": {"clientKeys": {"secretName": "bertserve-client-keys", "key": "keys"},
                          "adminKeys": {"secretName": "bertserve-admin-keys", "key": "admin.txt"}},
                 "config": {"protect_metrics": True}, "extraEnv": [{"name": "TZ", "value": "UTC"}]},
    "audit": {"auth": {"adminKeys": {"secretName": "bertserve-admin-keys", "key": "keys"},
                       "auditHmacKey": {"secretName": "bertserve-audit", "key": "hmac-key"}},
              "config": {"audit_log": "/tmp/audit/audit.jsonl", "audit_required": True}},
}
CRD_GROUP = "monitoring.coreos.com/"


@pytest.mark.parametrize("variant", ["default", "gpu"])
def test_helm_lint_strict(variant):
    report = helm().lint(str(CHART), VARIANTS[variant], strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (1 info: "icon")
    assert not problems and not report["errors"], json.dumps(report, indent=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendered_manifests_validate_against_kubernetes_1_30(variant, render_chart, tmp_path):
    docs = [d for d in render_chart(VARIANTS[variant]) if not d["apiVersion"].startswith(CRD_GROUP)]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(path)], timeout=120)
    assert out.stdout.count("passed") == len(docs), out.stdout


@pytest.mark.parametrize("variant", ["default", "gpu", "download-models"])
def test_prometheus_operator_resources_validate(variant, render_chart, tmp_path):
    node = tool("node")
    if not (TOOLS / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip("npm models missing: run `bash deploy/ci-setup.sh` first")
    docs = [d for d in render_chart(VARIANTS[variant]) if d["apiVersion"].startswith(CRD_GROUP)]
    assert {d["kind"] for d in docs} == {"ServiceMonitor", "PrometheusRule"}
    path = tmp_path / "crds.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    out = run([node, str(DEPLOY.parent / "tests" / "deploy" / "validate_crds.mjs"), str(TOOLS), str(path)], timeout=60)
    assert out.stdout.count("OK ") == 2, out.stdout


def test_crd_validator_rejects_misspelt_and_mistyped_fields(render_chart, tmp_path):
    """Negative control for the node script: an unknown field and a bad duration are both caught."""
    node = tool("node")
    if not (TOOLS / "node_modules" / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip("npm models missing: run `bash deploy/ci-setup.sh` first")
    monitor = json.loads(json.dumps(by_kind(render_chart({}), "ServiceMonitor")[0]))
    monitor["spec"]["endpoints"][0]["relabellings"] = []
    rule = json.loads(json.dumps(by_kind(render_chart({}), "PrometheusRule")[0]))
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    for doc in (monitor, rule):
        path = tmp_path / f"{doc['kind']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        proc = run([node, str(DEPLOY.parent / "tests" / "deploy" / "validate_crds.mjs"), str(TOOLS), str(path)],
                   check=False, timeout=60)
        assert proc.returncode == 1 and "FAIL" in proc.stderr, proc.stdout + proc.stderr


def test_kubernetes_validate_rejects_an_unknown_field(render_chart, tmp_path):
    """Negative control: --strict really refuses fields the API does not have."""
    deployment = json.loads(json.dumps(by_kind(render_chart({}), "Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deployment))
    proc = run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(path)], check=False, timeout=120)
    assert proc.returncode != 0 and "readinesProbe" in proc.stdout + proc.stderr


BAD_VALUES = {
    "unknown top-level key": {"replicas": 3},
    "misspelt setting": {"config": {"worker": 2}},
    "zero workers": {"config": {"workers": 0}},
    "unknown provider": {"config": {"provider": "tpu"}},
    "string where a number goes": {"config": {"max_batch_size": "lots"}},
    "negative replicas": {"replicaCount": -1},
    "unknown image variant": {"image": {"variant": "rocm"}},
    "unknown model source": {"models": {"source": "s3"}},
    "not a URL": {"models": {"source": "download", "download": {"url": "ftp://x"}}},
    "bad checksum": {"models": {"download": {"sha256": "abc"}}},
    "bad quantity": {"resources": {"limits": {"memory": "a lot"}}},
    "error ratio above 1": {"alerts": {"errorRatio": 5}},
    "drift threshold not a number": {"alerts": {"driftPsi": "high"}},
    "bad scrape interval": {"monitoring": {"serviceMonitor": {"interval": "often"}}},
    "unknown expected provider": {"monitoring": {"expectedProvider": "gpu"}},
    # Checks made by the templates (cross-field rules a JSON schema cannot express):
    "grace period shorter than drain": {"terminationGracePeriodSeconds": 20},
    "download without URL": {"models": {"source": "download"}},
    "autoscaling without a metric": {"autoscaling": {"cpu": {"enabled": False}}},
    "min replicas above max": {"autoscaling": {"minReplicas": 9, "maxReplicas": 3}},
    "queue smaller than a request": {"config": {"max_queue_size": 8, "max_client_batch_size": 32}},
    "plain keys in the ConfigMap": {"config": {"api_keys": "k"}},
    "secret name that is not a DNS name": {"auth": {"adminKeys": {"secretName": "Admin Keys"}}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_nonsense_values_are_refused(values, render_chart):
    h = helm()
    with pytest.raises((h.HelmValuesError, h.HelmRenderError)):
        render_chart(values)


def container(docs):
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_deployment_probes_security_and_shutdown(render_chart):
    docs = render_chart({})
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["enableServiceLinks"] is False  # else BERTSERVE_PORT=tcp://... from a Service named bertserve
    config = by_kind(docs, "ConfigMap")[0]["data"]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > float(config["BERTSERVE_DRAIN_TIMEOUT_S"]) + sleep
    assert config["BERTSERVE_DRAIN_TIMEOUT_S"] == "20"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/models"]["readOnly"] and "persistentVolumeClaim" in volumes[mounts["/models"]["name"]]
    assert c["envFrom"][0]["configMapRef"]["name"] == by_kind(docs, "ConfigMap")[0]["metadata"]["name"]


def test_api_keys_come_from_secrets_as_key_files(render_chart):
    """Both kinds of key are mounted from Secrets and named by *_FILE variables; none is in the ConfigMap. By
    default no key is configured: the admin routes are then not served by the service."""
    docs = render_chart(VARIANTS["api-keys"])
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BERTSERVE_API_KEYS_FILE"] == "/etc/bertserve/client-keys/keys"
    assert env["BERTSERVE_ADMIN_API_KEYS_FILE"] == "/etc/bertserve/admin-keys/admin.txt" and env["TZ"] == "UTC"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name, secret, key in (("client-keys", "bertserve-client-keys", "keys"),
                              ("admin-keys", "bertserve-admin-keys", "admin.txt")):
        assert mounts[name]["readOnly"] and volumes[name]["secret"]["secretName"] == secret
        assert volumes[name]["secret"]["items"] == [{"key": key, "path": key}]
        assert env[f"BERTSERVE_{'ADMIN_' if name == 'admin-keys' else ''}API_KEYS_FILE"].startswith(
            mounts[name]["mountPath"] + "/")
    config = by_kind(docs, "ConfigMap")[0]["data"]
    assert not [k for k in config if "KEYS" in k] and config["BERTSERVE_PROTECT_METRICS"] == "true"
    default = render_chart({})
    assert "env" not in container(default)
    assert not [v for v in by_kind(default, "Deployment")[0]["spec"]["template"]["spec"]["volumes"] if "secret" in v]


def test_configmap_holds_every_setting_as_env(render_chart):
    data = by_kind(render_chart({}), "ConfigMap")[0]["data"]
    assert data["BERTSERVE_HOST"] == "0.0.0.0" and data["BERTSERVE_MODEL_REPOSITORY"] == "/models"
    assert data["BERTSERVE_METRICS_DIR"].startswith("/tmp/")
    assert data["BERTSERVE_MAX_BODY_BYTES"] == "1048576"  # not Helm's float rendering 1.048576e+06
    assert data["BERTSERVE_BATCH_AUTOTUNE"] == "true"
    from app.settings import Settings

    # Every chart setting is a real Settings field, and the service accepts the whole set.
    fields = {f"BERTSERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    Settings(**{k.removeprefix("BERTSERVE_").lower(): v for k, v in data.items()})


def test_service_hpa_pdb_and_monitoring(render_chart):
    docs = render_chart({})
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
            "PrometheusRule", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    hpa = by_kind(docs, "HorizontalPodAutoscaler")[0]["spec"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert "replicas" not in by_kind(docs, "Deployment")[0]["spec"]  # the HPA owns the replica count
    monitor = by_kind(docs, "ServiceMonitor")[0]["spec"]
    assert monitor["endpoints"][0]["path"] == "/metrics" and monitor["endpoints"][0]["port"] == "http"
    assert monitor["endpoints"][0]["relabelings"][0]["replacement"] == "cpu"
    service = by_kind(docs, "Service")[0]
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["metadata"]["labels"][monitor["jobLabel"]] == "bertserve"  # job="bertserve", as the rules expect


def test_queue_size_autoscaling_through_prometheus_adapter(render_chart):
    hpa = by_kind(render_chart(VARIANTS["download-models"]), "HorizontalPodAutoscaler")[0]["spec"]
    pods = [m for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods and pods[0]["pods"]["metric"]["name"] == "bertserve_queue_size"


def test_download_init_container_fills_an_emptydir(render_chart):
    docs = render_chart(VARIANTS["download-models"])
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    init = pod["initContainers"][0]
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["MODELS_URL"].startswith("https://") and len(env["MODELS_SHA256"]) == 64
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert "emptyDir" in models and not by_kind(docs, "PersistentVolumeClaim")
    compile(init["command"][2], "fetch-models", "exec")  # the inline script is valid Python


def test_gpu_values(render_chart):
    docs = render_chart(gpu_values())
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    c = container(docs)
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert c["image"].endswith("-cuda")
    assert by_kind(docs, "ConfigMap")[0]["data"]["BERTSERVE_PROVIDER"] == "cuda"
    relabel = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]["relabelings"][0]
    assert relabel == {"action": "replace", "targetLabel": "expected_provider", "replacement": "cuda"}


def test_prometheus_rule_matches_the_rule_file(render_chart):
    """One set of alerts: the chart's PrometheusRule at default values == deploy/prometheus/rules (promtool-tested)."""
    rule = by_kind(render_chart({}), "PrometheusRule")[0]
    canonical = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "bertserve.rules.yml").read_text())
    assert rule["spec"]["groups"] == canonical["groups"]


def test_prometheus_rule_thresholds_follow_values(render_chart, tmp_path):
    values = {"alerts": {"errorRatio": 0.02, "latencyP99Seconds": 0.25, "shadowAgreement": 0.9,
                         "shadowMinDecisions": 500}, "config": {"max_queue_size": 1024}}
    rules = {r["alert"]: r for r in by_kind(render_chart(values), "PrometheusRule")[0]["spec"]["groups"][0]["rules"]}
    assert rules["BertserveHighErrorRatio"]["expr"].rstrip().endswith("> 0.02")
    assert "More than 2 %" in rules["BertserveHighErrorRatio"]["annotations"]["description"]
    assert rules["BertserveLatencyP99OverSLO"]["expr"].rstrip().endswith("> 0.25")
    assert rules["BertserveQueueNearFull"]["expr"] == "bertserve_queue_size > 0.8 * 1024"
    shadow = rules["BertserveShadowAgreementLow"]
    assert "< 0.9\n" in shadow["expr"] and shadow["expr"].rstrip().endswith(">= 500")
    assert "fewer than 90 % of the texts compared (at least 500)" in shadow["annotations"]["description"]
    quality = {r["alert"]: r for r in by_kind(render_chart(values | {"alerts": {
        "liveAccuracyMargin": 0.1, "liveAccuracyMinFeedback": 50, "driftPsi": 0.25, "driftMinPredictions": 1000}}),
        "PrometheusRule")[0]["spec"]["groups"][1]["rules"] if "alert" in r}
    accuracy, drifted = quality["BertserveLiveAccuracyBelowGate"], quality["BertservePredictionDrift"]
    assert "(bertserve_model_gate_accuracy > 0) - 0.1)" in accuracy["expr"] and accuracy["expr"].rstrip().endswith(">= 50")
    assert "(at least 50 items)" in accuracy["annotations"]["description"]
    assert "bertserve:prediction_psi:1h > 0.25\n" in drifted["expr"] and drifted["expr"].rstrip().endswith(">= 1000")
    assert drifted["annotations"]["summary"].endswith("over 0.25")
    # and promtool accepts what the chart renders
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": by_kind(render_chart(values), "PrometheusRule")[0]["spec"]["groups"]}))
    run([tool("promtool"), "check", "rules", str(path)], timeout=30)


def test_dashboard_configmap_ships_the_dashboard(render_chart):
    docs = render_chart(VARIANTS["download-models"])
    cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["bertserve.json"])
    assert shipped == json.loads((DEPLOY / "grafana" / "dashboards" / "bertserve.json").read_text()), (
        "deploy/helm/bertserve/files/bertserve-dashboard.json is stale: "
        "cp deploy/grafana/dashboards/bertserve.json deploy/helm/bertserve/files/bertserve-dashboard.json")
