"""Built engine plans (TensorRT's serialized engines), cached on disk so ten workers build one.

A plan depends on the model's bytes, the GPU, the TensorRT version and the batch profile; its key is the
sha256 of those (:class:`PlanKey`).  Plans live beside the blobs, in ``<blob root>/engine-plans/<key>.plan``
(``cvops gc`` deletes only under ``blobs/sha256``; a plan is a cache, rebuilt if it is missing).
:meth:`PlanCache.get_or_build` takes an exclusive file lock per key, so when the workers of a deployment
start together one builds and the others wait for it and load its plan; a plan is written to a temp
file, fsynced and renamed, so a half-written plan is never read.

Blocking and pure of ray/torch/tensorrt: the engine passes its own ``build`` callable.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)


class PlanKey(msgspec.Struct, frozen=True, kw_only=True):
    model_sha256: str  # of the ONNX file the plan is built from
    gpu: str  # device name and compute capability
    runtime: str  # e.g. "tensorrt 10.9.0"
    profile: tuple[tuple[int, ...], ...] = ()  # (min, opt, max) input shapes of the batch profile
    precision: str = "fp16"

    def digest(self) -> str:
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class PlanCache:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def beside_blobs(cls, blob_root: Path | str) -> PlanCache:
        return cls(Path(blob_root) / "engine-plans")

    def path(self, key: PlanKey) -> Path:
        return self.root / f"{key.digest()}.plan"

    def get_or_build(self, key: PlanKey, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """``(plan, built)``: the cached plan for ``key``, or ``build()``'s, stored for the next worker."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        with open(self.root / f"{key.digest()}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per key; the others wait here, then read
            if target.exists() and target.stat().st_size > 0:
                return target.read_bytes(), False
            plan = build()
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(plan)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            log.info("engine plan %s built and cached (%d bytes)", target.name, len(plan))
            return plan, True
