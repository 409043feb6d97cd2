"""deploy/kserve: the manifests against KServe's own CRD schemas (deploy/kserve/schema, unknown fields refused as
`kubectl apply` does) and their containers against Kubernetes 1.30 (kubernetes-validate --strict); the wiring
KServe relies on (container name, port, storage path, protocol, probes); then bertserve started with the
manifest's environment, probed on the manifest's paths and called as deploy/kserve/README.md shows."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import httpx
import pytest
import yaml

from app import __version__
from app.settings import Settings
from tests.support.deploy import KSERVE, PORT, docs, env_of, kserve_container, problems, run, tool
from tests.support.servers import Server

pytestmark = pytest.mark.deploy

MANIFESTS = ["inferenceservice.yaml", "clusterservingruntime.yaml", "inferenceservice-runtime.yaml"]
KUBE_VERSION = "1.30.0"


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_kserve_crd_schemas(name):
    found = docs(name)
    assert found
    for doc in found:
        assert problems(doc) == [], f"{name}: {doc['kind']}/{doc['metadata']['name']}"


def test_schema_check_refuses_misspelt_mistyped_and_misplaced_fields():
    """Negative control: the schema check is strict, not a formality."""
    [isvc] = docs("inferenceservice.yaml")
    broken = []
    for path, value in [
        (("spec", "predictor", "containers", 0, "readinessprobe"), {}),  # misspelt container field
        (("spec", "predictor", "minReplicas"), "one"),  # wrong type
        (("spec", "predictor", "protocolVersion"), "v2"),  # exists on model specs, not on a custom predictor
        (("spec", "predictor", "containers", 0, "ports", 0, "containerPort"), "8080"),
        (("metadata", "name"), "BertServe"),  # not a DNS label
    ]:
        doc = copy.deepcopy(isvc)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        broken.append(problems(doc))
    assert all(broken), broken
    [runtime] = docs("clusterservingruntime.yaml")
    runtime["spec"]["supportedModelFormats"][0]["autoselect"] = True
    assert problems(runtime)


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "clusterservingruntime.yaml"])
def test_containers_validate_against_kubernetes(name, tmp_path):
    """The pod part, as a Pod, against Kubernetes' own schema (kubernetes-validate --strict)."""
    [doc] = docs(name)
    spec = doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else doc["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bertserve"},
           "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])}}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    out = run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, str(path)], timeout=120)
    assert "passed" in out.stdout, out.stdout


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "clusterservingruntime.yaml"])
def test_kserve_wiring(name):
    [doc] = docs(name)
    container = kserve_container(doc)
    env = env_of(container)
    settings = set(Settings.model_fields)
    assert [k for k in env if k.startswith("BERTSERVE_") and k[len("BERTSERVE_"):].lower() not in settings] == []
    assert env["BERTSERVE_MODEL_REPOSITORY"] == "/mnt/models"  # where KServe's storage initializer downloads to
    assert env["BERTSERVE_HOST"] == "0.0.0.0" and int(env["BERTSERVE_PORT"]) == PORT
    assert container["ports"] == [{"name": "http1", "containerPort": PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": PORT}
    assert container["image"] == f"bertserve:{__version__}" and container["args"] == ["serve"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = (doc["spec"]["predictor"] if doc["kind"] == "InferenceService" else doc["spec"])["volumes"]
    assert mounts == {"/tmp": "tmp"} and [v["name"] for v in volumes] == ["tmp"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "lifecycle" not in container  # Knative refuses it
    if doc["kind"] == "InferenceService":  # custom predictor: storage and protocol through env
        assert env["STORAGE_URI"] and env["PROTOCOL"] == "v2"
        grace = doc["spec"]["predictor"]["terminationGracePeriodSeconds"]
        assert grace > float(env["BERTSERVE_DRAIN_TIMEOUT_S"])
    else:
        assert doc["spec"]["protocolVersions"] == ["v2"]
        [isvc] = docs("inferenceservice-runtime.yaml")
        model = isvc["spec"]["predictor"]["model"]
        assert model["protocolVersion"] == "v2" and model["storageUri"]
        assert model["runtime"] == doc["metadata"]["name"]
        assert model["modelFormat"]["name"] in [f["name"] for f in doc["spec"]["supportedModelFormats"]]


def readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (KSERVE / "README.md").read_text(), flags=re.DOTALL)
    [block] = [b for b in blocks if containing in b]
    return block


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "clusterservingruntime.yaml"])
def test_bertserve_runs_with_the_manifest_environment(name, tiny_model_repo, tmp_path):
    """bertserve under the manifest's BERTSERVE_* settings (the tiny repository standing for /mnt/models, a free
    loopback port for 8080): the probes' paths answer 200, and the README's curl body and tritonclient code work."""
    container = kserve_container(docs(name)[0])
    env = {k: v for k, v in env_of(container).items() if k.startswith("BERTSERVE_")}
    env.pop("BERTSERVE_HOST")  # loopback here, not 0.0.0.0
    env["BERTSERVE_METRICS_DIR"] = str(tmp_path / "metrics")
    server = Server(tiny_model_repo, workers=int(env.pop("BERTSERVE_WORKERS")), env=env)  # port, repository: CLI
    try:
        for probe in ("livenessProbe", "readinessProbe"):
            assert httpx.get(server.url + container[probe]["httpGet"]["path"]).status_code == 200
        body = json.loads(readme_block("json", '"inputs"'))
        r = httpx.post(server.url + "/v2/models/tiny/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert [o["shape"] for o in r.json()["outputs"]] == [[2], [2, 3]] and r.json()["id"] == body["id"]
        code = readme_block("python", "tritonclient").replace("localhost:8080", f"127.0.0.1:{server.port}")
        code = code.replace("drug-review-sentiment", "tiny")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr
        assert "negative" in out.stdout
    finally:
        server.stop()
