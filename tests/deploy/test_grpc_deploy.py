"""The gRPC port (BERTSERVE_GRPC_PORT, 8081) in every deployment artifact: the image exposes it, compose publishes
it, the Helm chart's container and Service carry it (probes still HTTP), and KServe's gRPC InferenceService routes
its one h2c port to it — checked against KServe's CRD schema and by serving gRPC under that manifest's settings."""

from __future__ import annotations

import re

import pytest
import tritonclient.grpc as tgrpc
import yaml

from app.settings import Settings
from tests.support.deploy import PORT, by_kind, docs, env_of, kserve_container, problems
from tests.support.paths import ROOT
from tests.support.servers import Server, free_port

pytestmark = pytest.mark.deploy

GRPC_PORT = Settings.model_fields["grpc_port"].default
MANIFEST = "inferenceservice-grpc.yaml"


def test_default_port_is_kserves():
    assert GRPC_PORT == 8081


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_image_exposes_and_sets_the_grpc_port(name):
    dockerfile = (ROOT / name).read_text()
    assert re.search(rf"^EXPOSE {GRPC_PORT}$", dockerfile, re.M)
    assert f"BERTSERVE_GRPC_PORT={GRPC_PORT}" in dockerfile


def test_compose_publishes_the_grpc_port():
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["bertserve"]
    assert any(str(p).endswith(f":{GRPC_PORT}") for p in service["ports"]), service["ports"]


def test_chart_container_and_service_carry_the_grpc_port(render_chart):
    docs_ = render_chart({})
    assert by_kind(docs_, "ConfigMap")[0]["data"]["BERTSERVE_GRPC_PORT"] == str(GRPC_PORT)
    [container] = by_kind(docs_, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"} in container["ports"]
    for probe in ("livenessProbe", "readinessProbe"):  # probes untouched: HTTP
        assert container[probe]["httpGet"]["port"] == "http"
    ports = {p["name"]: p for p in by_kind(docs_, "Service")[0]["spec"]["ports"]}
    assert ports["grpc"]["targetPort"] == "grpc" and ports["grpc"]["port"] == GRPC_PORT
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["http"]["targetPort"] == "http"


def test_kserve_grpc_manifest_validates_and_routes_h2c_to_the_grpc_port():
    [doc] = docs(MANIFEST)
    assert problems(doc) == []
    container = kserve_container(doc)
    env = env_of(container)
    assert container["ports"] == [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    assert int(env["BERTSERVE_GRPC_PORT"]) == GRPC_PORT and env["PROTOCOL"] == "grpc-v2"
    [rest] = docs("inferenceservice.yaml")  # the probes stay HTTP, as in the REST manifest
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe] == kserve_container(rest)[probe] and container[probe]["httpGet"]["port"] == PORT
    settings = set(Settings.model_fields)
    assert [k for k in env if k.startswith("BERTSERVE_") and k[len("BERTSERVE_"):].lower() not in settings] == []


def test_bertserve_serves_grpc_with_the_kserve_manifest_environment(tiny_model_repo, tmp_path):
    env = {k: v for k, v in env_of(kserve_container(docs(MANIFEST)[0])).items() if k.startswith("BERTSERVE_")}
    env.pop("BERTSERVE_HOST")  # loopback here, not 0.0.0.0
    env |= {"BERTSERVE_METRICS_DIR": str(tmp_path / "metrics"), "BERTSERVE_GRPC_PORT": str(free_port())}
    server = Server(tiny_model_repo, workers=int(env.pop("BERTSERVE_WORKERS")), env=env)
    try:
        with tgrpc.InferenceServerClient(server.grpc_address) as client:
            assert client.is_server_ready() and client.is_model_ready("tiny")
    finally:
        server.stop()
