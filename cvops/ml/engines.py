"""Inference engines behind one interface (DESIGN.md §4): the registry.

Every engine takes a float32 NCHW numpy batch and returns its outputs as a list of float32 numpy
arrays, so outputs of different engines can be compared.  An engine that this machine cannot run says
so through :meth:`Engine.available` (never raising) and is listed by :func:`list_engines` with the
reason — it is never dropped.

Engines that run the original torch module (``torch-*``) need a ``torch_module_factory``: a callable
returning the ``nn.Module`` the ONNX file was exported from.  Without one they are unavailable for that
model ("no torch source for this model"); ONNX is never converted back to torch.

This module imports neither ray nor aiohttp.  Heavy imports (onnxruntime, torch, tensorrt) happen
inside the engines, so importing this module is cheap.
"""

from __future__ import annotations

from cvops.errors import ValidationFailed
from cvops.ml.engine_base import NO_TORCH_SOURCE as NO_TORCH_SOURCE
from cvops.ml.engine_base import Engine as Engine
from cvops.ml.engine_base import EngineInfo as EngineInfo
from cvops.ml.engine_base import TorchModuleFactory as TorchModuleFactory
from cvops.ml.engine_base import to_float32_outputs as to_float32_outputs
from cvops.ml.engines_ort import (
    OrtCpuEngine,
    OrtCpuInt8Engine,
    OrtCudaEngine,
    OrtCudaFp16Engine,
    OrtTensorrtEngine,
)
from cvops.ml.engines_torch import (
    TorchCpuEngine,
    TorchCudaCompiledEngine,
    TorchCudaEngine,
    TorchCudaFp16Engine,
)
from cvops.ml.engines_trt import TensorrtFp16Engine
from cvops.ml.spec import ENGINE_NAMES as ENGINE_NAMES  # the names are data; the engines live here

_ENGINES: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (
        OrtCpuEngine,
        OrtCpuInt8Engine,
        OrtCudaEngine,
        OrtCudaFp16Engine,
        OrtTensorrtEngine,
        TensorrtFp16Engine,
        TorchCpuEngine,
        TorchCudaEngine,
        TorchCudaFp16Engine,
        TorchCudaCompiledEngine,
    )
}
assert tuple(_ENGINES) == ENGINE_NAMES


def get_engine(name: str) -> Engine:
    """A fresh, unloaded engine.  Unknown name → ValidationFailed."""
    cls = _ENGINES.get(name)
    if cls is None:
        raise ValidationFailed(f"unknown engine {name!r}", {"engine": name, "known": list(ENGINE_NAMES)})
    return cls()


def list_engines() -> list[EngineInfo]:
    """Every engine with its availability on this machine, in ENGINE_NAMES order; none is dropped."""
    return [get_engine(name).info() for name in ENGINE_NAMES]
