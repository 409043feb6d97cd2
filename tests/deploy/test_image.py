"""The CPU image, really built and run with podman: local base image (shared/ops/setup_podman.sh, no registry
here), a wheelhouse made on the host, `--network none`; then run read-only with the tiny model repository
mounted, probed on /health/ready, /predict and /metrics, its HEALTHCHECK run, and stopped with SIGTERM.
Also: the Helm chart's model-download init container script run in the image, and docker-compose.yml brought
up for real through podman's Docker API (service + Prometheus, images substituted by local builds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.deploy import prom_query, run, stop_process, tool, wait_for, wait_until_ready
from tests.support.metrics import metric
from tests.support.paths import ROOT
from tests.support.servers import free_port

pytestmark = pytest.mark.deploy

BASE_IMAGE = "localhost/bookworm-py:base"
IMAGE = "localhost/bertserve:deploy-test"
PROM_IMAGE = "localhost/bertserve-test-prometheus:local"


def ops_dir() -> Path | None:
    """shared/ops: beside the checkout in CI (../shared), or inside it."""
    for candidate in (ROOT / "shared" / "ops", ROOT.parent / "shared" / "ops"):
        if (candidate / "setup_podman.sh").is_file():
            return candidate
    return None


class Podman:
    """podman with this sandbox's containers.conf (runc, ulimits it allows); call it like the CLI."""

    def __init__(self, binary: str, env: dict[str, str]):
        self.binary, self.env = binary, env

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        return run([self.binary, *args], timeout=timeout, check=check, env=self.env, cwd=ROOT)


def healthy(podman, container: str) -> None:
    """The container's health check passes. With two workers a probe may reach the one still loading (its
    readiness is its own: 503 until its model is warm), as a real orchestrator's would: retried, as the image's
    HEALTHCHECK --retries does, until both answer; a worker that never becomes ready still fails the test."""
    wait_for(lambda: podman("healthcheck", "run", container, timeout=30, check=False).returncode == 0, 90,
             f"the health check of {container}", interval_s=1)


@pytest.fixture(scope="session")
def podman() -> Podman:
    binary = tool("podman")
    ops = ops_dir()
    if ops is None:
        pytest.skip("shared/ops/setup_podman.sh not found (podman needs its containers.conf here)")
    env = {**os.environ, "CONTAINERS_CONF": str(ops / "containers.conf")}
    info = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=60, env=env)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run on this machine: {info.stderr.strip()[-300:]}")
    podman = Podman(binary, env)
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        # ~1 min: Debian bookworm + python3 from Debian's archive (no container registry is reachable)
        run(["bash", str(ops / "setup_podman.sh"), BASE_IMAGE], timeout=420, env=env)
    return podman


@pytest.fixture(scope="session")
def image(podman):
    run(["bash", str(ROOT / "deploy" / "docker" / "wheelhouse.sh")], timeout=300, cwd=ROOT)
    previous = podman("image", "inspect", IMAGE, "--format", "{{.Id}}", check=False).stdout.strip()
    # --layers=false: no per-instruction cache images (the fresh bertserve wheel invalidates them every run anyway),
    # so repeated runs do not fill the disk; the image of the previous run is removed below.
    podman("build", "--format", "docker",  # docker format keeps HEALTHCHECK (OCI has no such field)
           "--layers=false", "--network", "none", "--pull=never", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "-t", IMAGE, "-f", "Dockerfile", ".", timeout=540)
    if previous and previous != podman("image", "inspect", IMAGE, "--format", "{{.Id}}").stdout.strip():
        podman("rmi", previous, check=False)
    return IMAGE


@pytest.fixture(scope="session")
def models_for_container(tiny_model_repo, tmp_path_factory) -> Path:
    """A world-readable copy of the tiny repository: the container runs as uid 10001, pytest's dirs are 0700."""
    repo = tmp_path_factory.mktemp("container-models") / "models"
    shutil.copytree(tiny_model_repo, repo)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    repo.parent.chmod(0o755)
    return repo


def test_image_is_non_root_small_and_has_no_build_tools(podman, image):
    user, health, ports = podman("image", "inspect", image, "--format",
                                 "{{.Config.User}}|{{json .Config.Healthcheck.Test}}|{{json .Config.ExposedPorts}}"
                                 ).stdout.strip().split("|")
    assert user == "10001:10001"
    assert health.startswith('["CMD-SHELL"') and "/health/ready" in health
    assert "8000/tcp" in ports
    size = int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout)
    base = int(podman("image", "inspect", BASE_IMAGE, "--format", "{{.Size}}").stdout)
    # onnxruntime ~60 MB, the OpenVINO plugin (CPU device only) ~100 MB, numpy, tokenizers, the web stack
    assert size - base < 380e6, f"the service adds {(size - base) / 1e6:.0f} MB to the base image"
    check = ("for t in gcc cc g++ make pip pip3; do command -v $t && exit 1; done; "
             "python -c 'import importlib.util as u, sys; "
             "sys.exit(any(u.find_spec(m) for m in (\"torch\", \"transformers\", \"optimum\")))'; "
             "python -c 'import onnxruntime, app.main; print(onnxruntime.get_available_providers())'")
    out = podman("run", "--rm", "--entrypoint", "sh", image, "-c", check, timeout=60)
    assert "CPUExecutionProvider" in out.stdout


def test_container_serves_on_a_read_only_root_and_stops_cleanly(podman, image, models_for_container):
    port = free_port()
    name = f"bertserve-deploy-test-{port}"
    # --read-only-tmpfs=false: like docker/Kubernetes, only what the image declares (VOLUME /tmp) is writable.
    podman("run", "-d", "--name", name, "--read-only", "--read-only-tmpfs=false",
           "-p", f"127.0.0.1:{port}:8000", "-v", f"{models_for_container}:/models:ro",
           "-e", "BERTSERVE_WORKERS=2", image, timeout=60)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, timeout_s=120)
        r = httpx.post(url + "/predict", json={"inputs": "this medicine worked wonders"}, timeout=30)
        assert r.status_code == 200, r.text
        assert {s["label"] for s in r.json()} == {"negative", "neutral", "positive"}
        r = httpx.post(url + "/predict", json={"inputs": ["great", "awful"]}, timeout=30)
        assert r.status_code == 200 and len(r.json()) == 2
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert metric(metrics, "bertserve_requests_total", model="tiny", protocol="http", status="200", version="1",
                      route="/predict") == 2
        # the image carries the OpenVINO plugin: the engine is chosen by measurement between the two CPU providers
        assert 'provider="cpu"' in metrics or 'provider="openvino"' in metrics
        healthy(podman, name)  # the image's own HEALTHCHECK command passes
        podman("stop", "-t", "30", name, timeout=60)   # SIGTERM: drains and exits by itself
        state = podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert state == "0", podman("logs", name, check=False).stdout
    except Exception:
        logs = podman("logs", name, check=False)
        print(logs.stdout, logs.stderr)
        raise
    finally:
        podman("rm", "-f", "-v", "-t", "0", name, check=False, timeout=60)  # -v: its anonymous /tmp volume


@pytest.fixture
def models_server(models_for_container, tmp_path):
    """The tiny repository as a .tar.gz (as `tar czf repo.tar.gz -C models .` makes it) on 127.0.0.1."""
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading

    archive = tmp_path / "repo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(models_for_container, arcname=".")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/repo.tar.gz", hashlib.sha256(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


def test_helm_download_init_container_fetches_models(podman, image, models_server, render_chart, tmp_path):
    """The chart's `models.source: download` init container script, run in the image as the chart runs it:
    non-root, read-only root, /tmp and /models writable, archive served on loopback (--network host)."""
    url, sha256 = models_server
    values = {"models": {"source": "download", "download": {"url": url, "sha256": sha256}}}
    init = next(d for d in render_chart(values) if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "initContainers"][0]
    env = [arg for e in init["env"] for arg in ("-e", f"{e['name']}={e['value']}")]
    target = tmp_path / "models"
    target.mkdir()
    target.chmod(0o777)  # an emptyDir the pod's fsGroup can write
    base = ["run", "--rm", "--network", "host", "--read-only", "--read-only-tmpfs=false",
            "-v", f"{target}:/models", "--entrypoint", init["command"][0]]
    podman(*base, *env, image, *init["command"][1:], timeout=60)
    assert (target / "tiny" / "1" / "bertserve.json").is_file()
    # a wrong checksum stops the pod before the service starts
    bad = [a.replace(sha256, "0" * 64) for a in env]
    proc = podman(*base, *bad, image, *init["command"][1:], timeout=60, check=False)
    assert proc.returncode != 0 and "sha256" in proc.stderr


@pytest.fixture(scope="session")
def prometheus_image(podman, tmp_path_factory) -> str:
    """An image holding the host's Debian prometheus (same bookworm libc): prom/prometheus cannot be pulled here."""
    if podman("image", "exists", PROM_IMAGE, check=False).returncode != 0:
        context = tmp_path_factory.mktemp("prometheus-image")
        shutil.copy(tool("prometheus"), context / "prometheus")
        (context / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY prometheus /bin/prometheus\nENTRYPOINT [\"/bin/prometheus\"]\n")
        podman("build", "--network", "none", "--pull=never", "-t", PROM_IMAGE, str(context), timeout=120)
    return PROM_IMAGE


@pytest.fixture
def docker_api(podman):
    """podman's Docker-compatible API on a unix socket of our own, for docker-compose."""
    folder = Path(tempfile.mkdtemp(prefix="bs-podman-"))  # short: unix socket paths are limited to 107 bytes
    sock = folder / "podman.sock"
    proc = subprocess.Popen([podman.binary, "system", "service", "--time=0", f"unix://{sock}"], env=podman.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, 30, "podman API socket")
        yield f"unix://{sock}"
    finally:
        stop_process(proc, 15)
        shutil.rmtree(folder, ignore_errors=True)


def test_compose_stack_comes_up_through_podman(podman, image, prometheus_image, models_for_container, docker_api):
    """`docker-compose up` of docker-compose.yml (Grafana stays behind its profile): the service answers, and the
    compose Prometheus scrapes it by its service name with the targets file's labels and loads the alert rules."""
    service_port, prom_port = free_port(), free_port()
    project = f"bertservedeploytest{service_port}"
    env = {**podman.env, "DOCKER_HOST": docker_api, "BERTSERVE_IMAGE": image, "PROM_IMAGE": prometheus_image,
           "MODEL_REPOSITORY": str(models_for_container), "BERTSERVE_PORT": str(service_port),
           "PROMETHEUS_PORT": str(prom_port), "COMPOSE_PROJECT_NAME": project}
    compose = [tool("docker-compose"), "-f", str(ROOT / "docker-compose.yml")]
    try:
        run([*compose, "up", "-d", "--no-build"], env=env, timeout=180, cwd=ROOT)
        service, prom = f"http://127.0.0.1:{service_port}", f"http://127.0.0.1:{prom_port}"
        wait_until_ready(service, timeout_s=120)
        assert httpx.post(service + "/predict", json={"inputs": "fine"}, timeout=30).status_code == 200
        healthy(podman, f"{project}_bertserve_1")  # compose's CMD-SHELL health check
        wait_for(lambda: httpx.get(prom + "/-/ready", timeout=2).status_code == 200, 60, "compose prometheus")
        # scrape_interval is 15 s there: the first scrape of the counter can take that long
        wait_for(lambda: prom_query(prom, 'sum(bertserve_requests_total{job="bertserve", instance="bertserve:8000", '
                                          'expected_provider="cpu", status="200"}) >= 1'), 60, "compose scrape")
        written = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / "bertserve.rules.yml").read_text())
        expected = sum(len(g["rules"]) for g in written["groups"])

        def evaluated() -> list:  # each group evaluates at its own offset within the interval: wait for all of them
            found = [r for g in httpx.get(prom + "/api/v1/rules", timeout=5).json()["data"]["groups"]
                     for r in g["rules"] if r["lastEvaluation"] > "2000"]
            return found if len(found) >= expected else []

        rules = wait_for(evaluated, 60, f"all {expected} rules of the file loaded and evaluated")
        assert len(rules) == expected  # every rule of the file loaded, none more
        assert all(r["health"] == "ok" for r in rules)
        names = podman("ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Names}}"
                       ).stdout.split()
        assert sorted(names) == [f"{project}_bertserve_1", f"{project}_prometheus_1"]  # Grafana: profile only
    finally:
        run([*compose, "down", "-v", "-t", "5"], env=env, timeout=120, check=False, cwd=ROOT)
