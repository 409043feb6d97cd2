"""The deploy tier's helpers: real tools (hadolint, docker-compose, helm-python-sdk, kubernetes-validate, node,
promtool, prometheus, podman), installed by deploy/ci-setup.sh, the KServe manifests and the Grafana dashboard.
A test skips only when its tool is missing or cannot run on this machine, and says which."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "bertserve"
TOOLS = DEPLOY / ".tools"  # npm packages (deploy/ci-setup.sh)
VENV_BIN = Path(sys.executable).parent
SETUP_HINT = "run `bash deploy/ci-setup.sh` first"


def tool(name: str) -> str:
    """Path of a command-line tool (the venv's bin first), or skip the test saying how to get it."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.skip(f"{name} is not installed: {SETUP_HINT}")
    return found


def run(cmd: list[str], timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, bounded in time; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


class GiveUp(Exception):
    """Raised by a wait_for check to stop waiting at once (e.g. the process being waited for has exited)."""


def wait_for(check: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.2):
    """Poll `check` until it returns something truthy (returned) or raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except GiveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline; the last error is reported
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s (last: {last!r})")


def stop_process(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_ready(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    """Poll url/health/ready until 200; give up at once if `proc` (the server) exits."""

    def ready():
        if proc is not None and proc.poll() is not None:
            raise GiveUp(f"server exited with {proc.returncode}")
        r = httpx.get(url + "/health/ready", timeout=2)
        if r.status_code != 200:
            raise AssertionError(f"{r.status_code} {r.text[:500]}")  # shown as `last` on time-out
        return True

    wait_for(ready, timeout_s, f"{url}/health/ready")


def prom_query(prom: str, expr: str) -> list[dict]:
    """Instant query against a Prometheus at `prom` (http://127.0.0.1:PORT); the result vector."""
    body = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def prom_scalar(prom: str, expr: str) -> float | None:
    result = prom_query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


# ---- Helm (helm-python-sdk: Helm's Go code as a library) ----

RELEASE, NAMESPACE = "demo", "ml"


def helm():
    return pytest.importorskip("helm_python", reason=f"helm-python-sdk is not installed: {SETUP_HINT}")


def gpu_values() -> dict:
    return yaml.safe_load((CHART / "values-gpu.yaml").read_text())


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


# ---- KServe (deploy/kserve) ----

KSERVE = DEPLOY / "kserve"
PORT = 8080  # what KServe expects of a predictor


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KSERVE / name).read_text()) if d]


def schemas() -> dict[str, dict]:
    return json.loads(gzip.decompress((KSERVE / "schema" / "kserve-crds.schema.json.gz").read_bytes()))["schemas"]


def problems(doc: dict) -> list[str]:
    schema = schemas().get(f"{doc['apiVersion']}/{doc['kind']}")
    if schema is None:
        return [f"no schema for {doc['apiVersion']} {doc['kind']}"]
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (with kubernetes-validate) is not installed: "
                                     "run `bash deploy/ci-setup.sh` first")
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]


def kserve_container(doc: dict) -> dict:
    containers = doc["spec"]["predictor"]["containers"] if doc["kind"] == "InferenceService" else doc["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == "kserve-container"]  # the name KServe looks for
    return container


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


# ---- Grafana (deploy/grafana): what the dashboard may name ----

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bertserve.json"
# What the service exports (app/metrics.py): counters get _total, histograms _bucket/_sum/_count.
COUNTERS = {"bertserve_requests", "bertserve_predictions", "bertserve_shadow_decisions", "bertserve_shadow_dropped",
            "bertserve_truncated_texts", "bertserve_windowed_texts", "bertserve_entities", "bertserve_feedback"}
HISTOGRAMS = {"bertserve_request_duration_seconds", "bertserve_request_tokenization_duration_seconds",
              "bertserve_request_queue_duration_seconds", "bertserve_request_inference_duration_seconds",
              "bertserve_batch_size", "bertserve_batch_tokens", "bertserve_prediction_confidence",
              "bertserve_shadow_probability_difference", "bertserve_token_windows_per_request",
              "bertserve_prediction_tokens"}
GAUGES = {"bertserve_queue_size", "bertserve_model_info", "bertserve_model_gate_accuracy"}
EXPORTED = ({f"{c}_total" for c in COUNTERS} | GAUGES
            | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")})
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "or", "vector", "le", "model",
                "status", "label", "pid", "pod", "instance", "job", "version", "provider", "quantization",
                "artifact", "precision", "outcome", "reason", "count", "entity", "predicted", "feature", "bin"}
RULES_FILE = DEPLOY / "prometheus" / "rules" / "bertserve.rules.yml"


def recorded() -> set[str]:
    """What the recording rules (deploy/prometheus/rules) make: panels may name these too, never in /metrics."""
    return {r["record"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"] if "record" in r}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges) if w not in PROMQL_WORDS
            and not w.startswith("__")}
