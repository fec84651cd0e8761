"""The engine interface (DESIGN.md §4) and what every engine shares; the engines are in
:mod:`cvops.ml.engines_ort`, :mod:`cvops.ml.engines_torch` and :mod:`cvops.ml.engines_trt`, the registry in
:mod:`cvops.ml.engines`.

Every engine takes a float32 NCHW numpy batch and returns its outputs as a list of float32 numpy
arrays, so outputs of different engines can be compared.  This module imports neither torch nor
onnxruntime.
"""

from __future__ import annotations

import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from cvops.errors import EngineUnavailable, ValidationFailed

NO_TORCH_SOURCE = "no torch source for this model"

TorchModuleFactory = Callable[[], Any]  # () -> torch.nn.Module


class EngineInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    available: bool
    reason: str = ""
    device: str = "cpu"  # cpu | cuda
    needs_torch_source: bool = False


def to_float32_outputs(outputs: Any) -> list[np.ndarray]:
    """Flatten an engine's raw outputs (array, tensor, tuple/list/dict of them) into float32 arrays."""
    flat: list[Any] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for key in sorted(obj):
                walk(obj[key])
        elif isinstance(obj, list | tuple):
            for item in obj:
                walk(item)
        else:
            flat.append(obj)

    walk(outputs)
    result: list[np.ndarray] = []
    for item in flat:
        if hasattr(item, "detach"):  # a torch tensor
            item = item.detach().float().cpu().numpy()
        result.append(np.asarray(item, dtype=np.float32))
    return result


def _onnx_input(onnx_path: Path) -> tuple[str, list[int | str]]:
    """Name and shape (ints or symbolic names) of the model's first real input."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims: list[int | str] = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or "?")
        return inp.name, dims
    raise ValidationFailed(f"{onnx_path.name} has no graph input")


def _chw(input_shape: Sequence[int] | None, onnx_dims: list[int | str]) -> list[int]:
    """(C, H, W) from an explicit shape (CHW or NCHW) or else the ONNX input's static dims."""
    if input_shape is not None:
        shape = [int(v) for v in input_shape]
        if len(shape) == 4:
            shape = shape[1:]
        if len(shape) != 3 or min(shape) < 1:
            raise ValidationFailed(f"input_shape must be CHW or NCHW, got {list(input_shape)}")
        return shape
    rest = onnx_dims[1:]
    if len(rest) != 3 or not all(isinstance(v, int) and v > 0 for v in rest):
        raise ValidationFailed(f"the model's input shape {onnx_dims} is dynamic; give input_shape")
    return [int(v) for v in rest]


class Engine(ABC):
    """One way to run a model.  Lifecycle: ``available()`` → ``load()`` → ``run()``* → ``close()``."""

    name: ClassVar[str]
    device: ClassVar[str] = "cpu"
    needs_torch_source: ClassVar[bool] = False

    def __init__(self) -> None:
        self.build_time_s: float | None = None

    def available(self) -> tuple[bool, str]:
        """(True, "") when this machine can run the engine, else (False, reason).  Never raises."""
        try:
            return self._available()
        except Exception as exc:  # noqa: BLE001 - availability probing must never raise
            return False, f"{type(exc).__name__}: {exc}"

    @abstractmethod
    def _available(self) -> tuple[bool, str]: ...

    def load(
        self,
        onnx_path: Path,
        *,
        torch_module_factory: TorchModuleFactory | None = None,
        device_index: int = 0,
        threads: int | None = None,
        max_batch: int = 32,
        input_shape: Sequence[int] | None = None,
        batch_sizes: Sequence[int] = (),
    ) -> None:
        """Build the session/engine; records ``build_time_s``.  Raises EngineUnavailable if it cannot.

        ``batch_sizes``: the batch sizes that will be run, so an engine that builds per shape (the compiled
        one: a CUDA graph per batch size) builds them here and the build time counts them."""
        ok, reason = self.available()
        if not ok:
            raise EngineUnavailable(reason, {"engine": self.name})
        if self.needs_torch_source and torch_module_factory is None:
            raise EngineUnavailable(NO_TORCH_SOURCE, {"engine": self.name})
        if threads is not None and threads < 1:
            raise ValidationFailed(f"threads must be >= 1, got {threads}")
        if max_batch < 1:
            raise ValidationFailed(f"max_batch must be >= 1, got {max_batch}")
        start = time.perf_counter()
        self._load(
            Path(onnx_path),
            torch_module_factory=torch_module_factory,
            device_index=device_index,
            threads=threads,
            max_batch=max_batch,
            input_shape=input_shape,
            batch_sizes=tuple(batch_sizes),
        )
        self.build_time_s = time.perf_counter() - start

    @abstractmethod
    def _load(
        self,
        onnx_path: Path,
        *,
        torch_module_factory: TorchModuleFactory | None,
        device_index: int,
        threads: int | None,
        max_batch: int,
        input_shape: Sequence[int] | None,
        batch_sizes: tuple[int, ...],
    ) -> None: ...

    @abstractmethod
    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one float32 NCHW batch; returns float32 outputs.  Synchronous: timings are real."""

    @abstractmethod
    def close(self) -> None:
        """Release the session and any temporary files; safe to call twice."""

    def info(self) -> EngineInfo:
        ok, reason = self.available()
        return EngineInfo(
            name=self.name,
            available=ok,
            reason=reason,
            device=self.device,
            needs_torch_source=self.needs_torch_source,
        )


def _temp_dir_near(path: Path, prefix: str) -> Path:
    """A temporary folder next to ``path`` (so relative external-data paths resolve), else in TMPDIR."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=prefix))


def _torch_cuda_reason() -> str:
    """ "" when torch can use a CUDA device, else why not."""
    try:
        import torch
    except ImportError as exc:
        return f"torch not installed ({exc})"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return ""
