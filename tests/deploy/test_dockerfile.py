"""Dockerfile and Dockerfile.cuda: hadolint, plus the properties issue 7 asks for, read from the files."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.support.deploy import run, tool
from tests.support.paths import ROOT

pytestmark = pytest.mark.deploy

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    out = run([tool("hadolint"), "--failure-threshold", "info", str(ROOT / name)], timeout=30)
    assert out.stdout.strip() == "", out.stdout  # not even an info-level finding


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """Negative control: the linter really runs (an unpinned `latest` base and apt without cleanup fail)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    assert run([tool("hadolint"), str(bad)], check=False).returncode != 0


def stages(text: str) -> list[str]:
    return re.split(r"^FROM ", text, flags=re.M)[1:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_multi_stage_non_root_healthcheck_and_settings(name):
    text = (ROOT / name).read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M), "base image must come from a build arg"
    final = stages(text)[-1]
    assert len(stages(text)) >= 2 and all(s.startswith("${BASE_IMAGE}") for s in stages(text))
    assert "COPY --from=build /opt/venv" in final
    # Nothing of the build toolchain or the model lifecycle (torch) in the final stage.
    assert not re.search(r"\b(gcc|g\+\+|build-essential|torch|transformers|\[export\])", final)
    assert re.search(r"pip install --no-cache-dir --no-index --find-links /wheels", text)
    user = re.search(r"^USER (\S+)", final, re.M)
    assert user and not user.group(1).startswith(("root", "0")), "must run as a non-root (numeric) user"
    assert re.search(r"^EXPOSE 8000$", final, re.M)
    assert re.search(r'^VOLUME \["/tmp"\]', final, re.M), "writable scratch for a read-only root filesystem"
    health = re.search(r"^HEALTHCHECK .*\n?.*", final, re.M).group(0)
    assert "/health/ready" in health and "CMD [" not in health, "HEALTHCHECK in shell form (CMD-SHELL) on readiness"
    for setting in ("BERTSERVE_HOST=0.0.0.0", "BERTSERVE_MODEL_REPOSITORY=/models", "BERTSERVE_METRICS_DIR=/tmp/"):
        assert setting in final
    assert re.search(r"^ARG MODELS_DIR=", final, re.M) and "COPY ${MODELS_DIR} /models" in final


def test_cpu_image_uses_cpu_extra_and_cuda_image_the_gpu_extra():
    cpu, cuda = (ROOT / "Dockerfile").read_text(), (ROOT / "Dockerfile.cuda").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in cpu and "ARG EXTRA=cpu" in cpu
    assert re.search(r"ARG BASE_IMAGE=nvidia/cuda:13\.\S+-cudnn-runtime-ubuntu24\.04", cuda) and "ARG EXTRA=gpu" in cuda
    assert "BERTSERVE_PROVIDER=cuda" in cuda


def test_dockerignore_keeps_the_context_small():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert "*" in lines and "!build/wheelhouse/" in lines  # allow-list: .venv, .git, tests never sent


def test_cuda_image_dependencies_resolve_for_its_python(tmp_path):
    """The CUDA image's wheelhouse (extra gpu, Ubuntu 24.04's python 3.12) exists on the index as binary wheels.
    Resolution only (pip --dry-run reads wheel metadata, downloads no 250 MB onnxruntime-gpu wheel)."""
    project = tmp_path / "wheel"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(project),
         str(ROOT)], timeout=120)
    platforms = ["manylinux2014_x86_64"] + [f"manylinux_2_{g}_x86_64" for g in (17, 24, 26, 27, 28, 31, 34)]
    report = tmp_path / "report.json"
    run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--only-binary=:all:",
         "--implementation", "cp", "--python-version", "3.12", *(f"--platform={p}" for p in platforms),
         "--target", str(tmp_path / "target"), "--report", str(report),
         f"{next(project.glob('bertserve-*.whl'))}[gpu]"], timeout=180)
    plan = json.loads(report.read_text())["install"]
    installed = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in plan}
    assert installed["onnxruntime-gpu"].startswith(("1.31", "1.32")) and "onnxruntime" not in installed
    assert "torch" not in installed
