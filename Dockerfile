# syntax=docker/dockerfile:1.7
# Targets: api, worker (CPU), worker-gpu (NVIDIA's TensorRT image). Build one with
#   docker build --target api -t tensorpress-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# g++: AOTInductor compiles the kernels it generates.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
# The CPU build of torch (the default PyPI wheel is the CUDA build, several GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY migrations migrations
RUN pip install . && useradd --create-home --uid 10001 tensorpress && mkdir -p /data && chown tensorpress /data
USER tensorpress
ENV TENSORPRESS_DATA_DIR=/data
VOLUME ["/data"]

FROM base AS api
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["tensorpress", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS worker
CMD ["tensorpress", "worker", "--queues", "cpu"]

# GPU workers: TensorRT, CUDA and cuDNN come with NVIDIA's image; torch is the CUDA build. One container per
# GPU (`--gpu 0` inside a container that sees one device), or one `tensorpress worker --gpu N` per GPU.
FROM ${TENSORRT_IMAGE} AS worker-gpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
RUN pip install torch==2.13.0 onnxruntime-gpu
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY migrations migrations
RUN pip install . && useradd --create-home --uid 10001 tensorpress && mkdir -p /data && chown tensorpress /data
USER tensorpress
ENV TENSORPRESS_DATA_DIR=/data
CMD ["tensorpress", "worker", "--gpu", "0"]
