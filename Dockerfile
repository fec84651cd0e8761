# cvops: the gateway, an embedded Ray and the actors in one container.
#
#   docker build -t cvops .
#   docker build -t cvops:gpu --build-arg EXTRAS=yolo,video,gpu --build-arg ORT_GPU=1 .
#   docker build -t cvops:trt --build-arg EXTRAS=yolo,video,gpu,tensorrt --build-arg ORT_GPU=1 .
#   docker run --init --shm-size=1g -p 8080:8080 -v cvops-data:/data cvops      (--gpus all for GPUs)
#   docker stop -t 30 CONTAINER                                                (graceful stop: 30 s)
#
# See docs/operations.md.
FROM python:3.11-slim

# Optional extras, comma-separated: yolo (yolov8n preset, detection training), video (mp4 predict),
# gpu (onnxruntime-gpu, NVML), tensorrt (fetches TensorRT from NVIDIA's index at build time), tensorflow.
ARG EXTRAS=yolo,video
# 1: replace onnxruntime (CPU) with onnxruntime-gpu; both install the same module `onnxruntime`.
ARG ORT_GPU=0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    YOLO_OFFLINE=1

# libGL and GLib for OpenCV (pulled in by ultralytics)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/cvops
COPY pyproject.toml README.md ./
COPY cvops ./cvops
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && if [ "$ORT_GPU" = "1" ]; then \
         pip uninstall -y onnxruntime onnxruntime-gpu \
         && pip install "onnxruntime-gpu>=1.18"; \
       fi

ENV CVOPS_HOST=0.0.0.0 \
    CVOPS_DASHBOARD_HOST=0.0.0.0 \
    CVOPS_DATA_DIR=/data
VOLUME /data
# 8080: the gateway; 8265: the Ray dashboard
EXPOSE 8080 8265
CMD ["cvops", "serve"]
