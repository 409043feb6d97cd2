# bertserve CPU image (onnxruntime, extra `cpu`). The CUDA image is Dockerfile.cuda.
#
# Hermetic build: the Python dependencies come from a wheelhouse made on the host, so the build itself needs no
# network (and no compiler, no torch):
#   bash deploy/docker/wheelhouse.sh                      # -> build/wheelhouse (bertserve + deps, extra cpu)
#   docker build --network none -t bertserve:cpu .        # podman: add --format docker (keeps HEALTHCHECK)
# Models: mount a model repository at /models (read-only is fine), or bake one in with
#   --build-arg MODELS_DIR=models                         # any folder inside the build context
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a virtual environment filled from the wheelhouse only ----
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=build/wheelhouse
ARG EXTRA=cpu
COPY ${WHEELHOUSE} /wheels
# A venv: Debian's python is "externally managed"; copying /opt/venv works because both stages share BASE_IMAGE.
# pip and setuptools are removed afterwards: the final image installs nothing. OpenVINO keeps its CPU plugin and
# ONNX reader only: its Intel GPU and NPU plugins, GPU kernel cache, other frameworks' readers and C headers go
# (180 -> 103 MB): this image serves ONNX graphs on CPUs.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels "bertserve[${EXTRA}]" \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && find /opt/venv -path '*/openvino/libs/*' \( -name 'libopenvino_intel_gpu_plugin.so' \
      -o -name 'libopenvino_intel_npu_plugin.so' -o -name 'cache.json' \
      -o -name 'libopenvino_*tensorflow*_frontend.so*' \
      -o -name 'libopenvino_pytorch_frontend.so*' -o -name 'libopenvino_paddle_frontend.so*' \
      -o -name 'libopenvino_jax_frontend.so*' -o -name 'libopenvino_gguf_frontend.so*' \) -delete \
 && rm -rf /opt/venv/lib/python3*/site-packages/openvino/include /wheels

# ---- runtime ----
FROM ${BASE_IMAGE} AS runtime
ARG MODELS_DIR=deploy/docker/no-models
LABEL org.opencontainers.image.title="bertserve" \
      org.opencontainers.image.description="Serve BERT text classifiers from ONNX models (onnxruntime CPU, OpenVINO)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
COPY ${MODELS_DIR} /models
# Non-root, numeric so Kubernetes runAsNonRoot can verify it. HOME=/tmp: nothing else is writable under a
# read-only root filesystem; the only writable paths the service needs are /tmp and the metrics dir inside it.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BERTSERVE_HOST=0.0.0.0 \
    BERTSERVE_PORT=8000 \
    BERTSERVE_GRPC_PORT=8081 \
    BERTSERVE_MODEL_REPOSITORY=/models \
    BERTSERVE_METRICS_DIR=/tmp/bertserve-metrics \
    BERTSERVE_PROVIDER=auto
USER 10001:10001
# Writable scratch for a read-only root filesystem (docker run --read-only gets an anonymous volume here).
VOLUME ["/tmp"]
EXPOSE 8000
# the Open Inference Protocol over gRPC (BERTSERVE_GRPC_PORT)
EXPOSE 8081
# Shell form (CMD-SHELL): podman's Docker API splits exec-form arguments at spaces. No curl in the image.
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('BERTSERVE_PORT', '8000'), timeout=4)"
ENTRYPOINT ["bertserve"]
CMD ["serve"]
