"""Test-session setup: markers, one local Ray for the whole session, a free-port helper."""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# subprocesses (cvops serve, Ray workers) write coverage data next to the repo, whatever their cwd
os.environ.setdefault("CVOPS_COVERAGE_DIR", str(Path(__file__).resolve().parent.parent))

RUN_SLOW = os.environ.get("CI") == "true" or os.environ.get("CVOPS_SLOW") == "1"


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_cuda = _cuda()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "slow" in item.keywords and not RUN_SLOW:
            item.add_marker(pytest.mark.skip(reason="slow: set CVOPS_SLOW=1 (CI runs them)"))
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run with the device tool)"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="TensorRT Python module not installed"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for every integration test."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            namespace="cvops",
            logging_level="WARNING",
            log_to_driver=False,
            object_store_memory=256 * 1024 * 1024,
        )
    yield ray
    ray.shutdown()
