#!/usr/bin/env bash
# `make gpu-check`: on a machine with an NVIDIA GPU, prove and measure the CUDA path in a few minutes. Installs the
# `gpu` extra in its own venv (.venv-gpu; the CUDA 13 / cuDNN 9 libraries come as onnxruntime-gpu's pip extras),
# adds an fp16 artifact to a copy of the demo model, runs the tests marked `cuda`, then measures fp16 against
# fp32 on the GPU (the loader's golden gate and rates, raw batches) and prints the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi failed)" >&2
    exit 2
fi
VENV=.venv-gpu
test -x "$VENV/bin/python" || python3 -m venv "$VENV"
# onnxruntime and onnxruntime-gpu install the same package: this venv has only the GPU build.
"$VENV/bin/python" -m pip install -q -e '.[gpu,dev]' 'onnxruntime-gpu[cuda,cudnn]>=1.31,<1.33' 'onnx>=1.17,<2'
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DEMO=models/drug-review-sentiment/1
if [ ! -f "$DEMO/bertserve.json" ]; then
    echo "gpu-check: no demo model at $DEMO: build it first (make demo, or carry models/ here)" >&2
    exit 2
fi
time "$VENV/bin/python" -m pytest -m cuda tests/gpu -q -p no:cacheprovider
time "$VENV/bin/python" benchmarks/gpu_check.py --demo "$DEMO"
