#!/usr/bin/env bash
# Make the wheelhouse the image installs from (Dockerfile: pip install --no-index), so `docker build` needs no
# network. Binary wheels only, for the image's Python and manylinux x86_64, whatever the host runs.
#   EXTRA           cpu (onnxruntime, default) | gpu (onnxruntime-gpu)
#   PYTHON_VERSION  the image's python: 3.11 (python:3.11-slim, Debian bookworm, default) | 3.12 (Ubuntu 24.04 CUDA)
#   DEST            default build/wheelhouse (build/wheelhouse-cuda for EXTRA=gpu)
# usage: bash deploy/docker/wheelhouse.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
EXTRA="${EXTRA:-cpu}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
if [ "$EXTRA" = gpu ]; then DEFAULT_DEST="$ROOT/build/wheelhouse-cuda"; else DEFAULT_DEST="$ROOT/build/wheelhouse"; fi
DEST="${DEST:-$DEFAULT_DEST}"
if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY="$(command -v python3)"; fi
PIP=("$PY" -m pip --disable-pip-version-check -q)

mkdir -p "$DEST"
rm -f "$DEST"/bertserve-*.whl
# The project itself (pure Python); no build isolation when setuptools is at hand: faster, no index needed.
if "$PY" -c 'import setuptools' 2>/dev/null; then
  "${PIP[@]}" wheel --no-deps --no-build-isolation --wheel-dir "$DEST" "$ROOT"
else
  "${PIP[@]}" wheel --no-deps --wheel-dir "$DEST" "$ROOT"
fi
# Its dependencies for the target interpreter and platform (pip's download cache makes reruns quick). pip does
# not widen a manylinux tag to older glibc versions: name each one up to glibc 2.34 (bookworm 2.36, noble 2.39).
platforms=(--platform manylinux2014_x86_64)
for glibc in 17 24 26 27 28 31 34; do platforms+=(--platform "manylinux_2_${glibc}_x86_64"); done
"${PIP[@]}" download --dest "$DEST" --only-binary=:all: --implementation cp \
  --python-version "$PYTHON_VERSION" "${platforms[@]}" \
  "$(ls "$DEST"/bertserve-*.whl)[$EXTRA]"
echo "wheelhouse: $DEST ($(ls "$DEST" | wc -l) wheels, extra $EXTRA, python $PYTHON_VERSION)"
