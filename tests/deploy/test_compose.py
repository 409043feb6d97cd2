"""docker-compose.yml (+ docker-compose.gpu.yml): validated by docker-compose 1.29 itself (`config -q`)."""

from __future__ import annotations

import os

import pytest
import yaml

from tests.support.deploy import run, tool
from tests.support.paths import ROOT

pytestmark = pytest.mark.deploy


def compose(*args: str, files=("docker-compose.yml",)) -> str:
    cmd = [tool("docker-compose")]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    return run([*cmd, *args], timeout=60, cwd=ROOT).stdout


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.gpu.yml")],
                         ids=["cpu", "gpu-override"])
def test_compose_config_is_valid(files):
    assert compose("config", "-q", files=files) == ""  # valid, and nothing to report


def test_compose_rejects_an_unknown_key(tmp_path):
    """Negative control: `config -q` really validates against the schema."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    gpus: all\n")
    proc = run([tool("docker-compose"), "-f", str(bad), "config", "-q"], check=False)
    assert proc.returncode != 0 and "gpus" in proc.stderr


def test_stack_shape():
    cfg = yaml.safe_load(compose("config"))
    services = cfg["services"]
    assert {"bertserve", "prometheus", "grafana"} <= services.keys()
    assert services["grafana"]["profiles"] == ["grafana"]
    svc = services["bertserve"]
    assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
    assert svc["healthcheck"]["test"][0] == "CMD-SHELL" and "/health/ready" in svc["healthcheck"]["test"][1]
    assert any(v.endswith(":/models:ro") for v in map(str, svc["volumes"])) or any(
        v.get("target") == "/models" for v in svc["volumes"] if isinstance(v, dict))
    prom = services["prometheus"]
    assert "--config.file=/etc/prometheus/bertserve/prometheus.yml" in prom["command"]
    grafana_mounts = " ".join(map(str, services["grafana"]["volumes"]))
    assert "provisioning" in grafana_mounts and "dashboards" in grafana_mounts


def test_images_come_from_variables():
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, svc in raw["services"].items():
        assert svc["image"].startswith("${"), f"{name}: image must be overridable by a variable"
    env = {"BERTSERVE_IMAGE": "localhost/b:1", "PROM_IMAGE": "localhost/p:1", "GRAFANA_IMAGE": "localhost/g:1"}
    proc = run([tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
               env={**os.environ, **env})
    images = {n: s["image"] for n, s in yaml.safe_load(proc.stdout)["services"].items()}
    assert images == {"bertserve": "localhost/b:1", "prometheus": "localhost/p:1", "grafana": "localhost/g:1"}


def test_gpu_override_reserves_a_gpu_and_expects_cuda():
    cfg = yaml.safe_load(compose("config", files=("docker-compose.yml", "docker-compose.gpu.yml")))
    svc = cfg["services"]["bertserve"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert svc["environment"]["BERTSERVE_PROVIDER"] == "cuda" and svc["build"]["dockerfile"] == "Dockerfile.cuda"
    mounts = " ".join(map(str, cfg["services"]["prometheus"]["volumes"]))
    assert "targets/bertserve-gpu.yml" in mounts
