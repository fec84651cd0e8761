# syntax=docker/dockerfile:1
# cvops: the gateway, an embedded Ray and the actors in one container (docs/operations.md, "Docker").
#
#   docker build -t cvops .                                       # python:3.11-slim, the runtime lock
#   podman build --format docker -t cvops .                       # the same (scripts/build_image.sh
#                                                                 #   builds it with no registry at all)
#   docker run --shm-size=1g -p 8080:8080 -v cvops-data:/data cvops      (--gpus all for GPUs)
#   docker stop CONTAINER            # SIGTERM; the server exits within 30 s: give it -t 30
#
# Stages: `builder` downloads every wheel of requirements/runtime.lock, checking its sha256, and builds
# the cvops wheel; `runtime` installs those wheels (hashes checked again, no index) into /opt/venv and
# runs `cvops serve` as the unprivileged user `cvops` under tini.
#
# BASE_IMAGE must offer python3.11 (or apt-get, to install it): python:3.11-slim (the default), Debian
# bookworm, or, for the `gpu` variant, an NVIDIA CUDA runtime base such as
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 --build-arg EXTRAS=gpu --build-arg ORT_GPU=1
# (python3.11 then comes from Ubuntu's archive). torch's CUDA libraries come from the nvidia-* wheels of
# the lock in every variant; the host needs the NVIDIA driver and the NVIDIA container toolkit
# (`docker run --gpus all`, podman `--device nvidia.com/gpu=all`).
ARG BASE_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG PYTHON=python3.11
# optional extras, comma-separated (gpu, yolo, video, tensorrt, tensorflow): resolved at build time,
# NOT pinned by the lock (the lock holds the base dependencies only)
ARG EXTRAS=
# a CA bundle for pip where a proxy re-signs TLS (scripts/build_image.sh mounts the host's and sets this)
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN set -eu; \
    if ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then \
      apt-get update; \
      apt-get install -y --no-install-recommends "$PYTHON" "$PYTHON-venv" ca-certificates; \
      rm -rf /var/lib/apt/lists/*; \
    fi; \
    "$PYTHON" -m venv /opt/build
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
# every wheel of the lock, each checked against its sha256 (a cache mount keeps downloads across builds)
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip wheel --require-hashes --only-binary=:all: --wheel-dir /wheels \
      -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY cvops ./cvops
# the project's own wheel, built with the lock's setuptools (no other download)
RUN --mount=type=cache,target=/root/.cache/pip \
    set -eu; \
    /opt/build/bin/pip install --no-index --find-links /wheels --upgrade setuptools; \
    /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /wheels/project .; \
    mkdir -p /wheels/extras; \
    if [ -n "$EXTRAS" ]; then \
      /opt/build/bin/pip wheel --find-links /wheels --wheel-dir /wheels/extras ".[$EXTRAS]"; \
    fi

# --------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG PYTHON=python3.11
ARG EXTRAS=
# 1: replace onnxruntime (CPU) with onnxruntime-gpu (from EXTRAS=gpu); both install the module `onnxruntime`
ARG ORT_GPU=0
ARG UID=10001
# an ARG, not an ENV: it applies to this stage's RUNs and stays out of the running container
ARG DEBIAN_FRONTEND=noninteractive
# tini: PID 1 that forwards SIGTERM to `cvops serve` and reaps the zombies Ray's processes leave
RUN set -eu; \
    apt-get update; \
    pkgs="tini ca-certificates"; \
    "$PYTHON" -c 'import ensurepip' 2>/dev/null || pkgs="$pkgs $PYTHON $PYTHON-venv"; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    "$PYTHON" -m venv /opt/venv; \
    groupadd --system --gid "$UID" cvops; \
    useradd --system --uid "$UID" --gid cvops --home-dir /home/cvops --create-home --shell /usr/sbin/nologin cvops; \
    mkdir -p /data; chown cvops:cvops /data; chmod 0700 /data
COPY requirements/runtime.lock /opt/cvops/runtime.lock
# the cvops wheel (small) is copied; the lock's wheels are bind-mounted (not copied into a layer) and
# their hashes checked again, no index. (buildah 1.28 can bind a stale image of a stage that came
# entirely from its cache, so what changes with the source does not go through the mount.)
COPY --from=builder /wheels/project /opt/cvops/project
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    set -eu; \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --require-hashes \
      -r /opt/cvops/runtime.lock; \
    /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /opt/cvops/project/cvops-*.whl; \
    rm -rf /opt/cvops/project; \
    if [ -n "$EXTRAS" ]; then \
      /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --find-links /wheels/extras \
        "cvops[$EXTRAS]"; \
    fi; \
    if [ "$ORT_GPU" = "1" ]; then \
      /opt/venv/bin/pip uninstall -y onnxruntime onnxruntime-gpu; \
      /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps --find-links /wheels/extras onnxruntime-gpu; \
    fi; \
    /opt/venv/bin/cvops --version

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    YOLO_OFFLINE=1 \
    CVOPS_HOST=0.0.0.0 \
    CVOPS_PORT=8080 \
    CVOPS_DATA_DIR=/data
# The Ray dashboard stays on 127.0.0.1 inside the container (the config's default); to reach it set
# CVOPS_DASHBOARD_HOST=0.0.0.0 and publish 8265 on the host's loopback: -p 127.0.0.1:8265:8265.

# /data: the whole state. events.db (the event log: keep it on a local disk, SQLite WAL), blobs/
# (models, ONNX, checkpoints, reports and packages, content-addressed), datasets/ (extracted uploads),
# weights/ (pre-trained weights cache). Mount one volume on /data, or bind separate disks on
# /data/blobs (models, reports) and /data/datasets; docs/operations.md lists them.
VOLUME ["/data"]
EXPOSE 8080
USER cvops
WORKDIR /home/cvops
# 503 until every actor is up; Ray and the actors take a while on a cold start
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('CVOPS_PORT', '8080'), timeout=4)"]
# SIGTERM: the gateway drains, the scheduler stops, the log closes, Ray shuts down; all within 30 s,
# so stop with a 30 s grace (docker stop -t 30, compose stop_grace_period: 30s, k8s
# terminationGracePeriodSeconds: 30)
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["cvops", "serve"]
