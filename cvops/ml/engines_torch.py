"""Engines that run the original torch module: CPU, CUDA fp32/fp16 and the compiled CUDA engine.

The CUDA engines run the way the hardware wants (measured with ``scripts/gpu_benchmark.py``): weights and
inputs channels-last, fp16 *weights* (not autocast) for ``-fp16``, cuDNN's autotuner on where the batch
sizes are known in advance (benchmarks), and per batch size device buffers made once, so a call is one
H2D copy (the driver's, from the caller's array: faster than a memcpy into pinned memory first), the
forward pass and one D2H copy of the outputs.  ``run_device`` takes a tensor already on the GPU (JPEGs
decoded there).  ``torch-cuda-compiled`` is the fp16 engine through ``torch.compile`` with CUDA graphs
(``mode="reduce-overhead"``), one graph per batch size, built at load time so the compile counts as
build time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cvops.errors import EngineUnavailable, ValidationFailed
from cvops.ml.engine_base import Engine, _torch_cuda_reason, to_float32_outputs

log = logging.getLogger(__name__)


def _module_from(factory: Any) -> Any:
    import torch

    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ValidationFailed(f"torch_module_factory returned {type(module).__name__}, not nn.Module")
    return module.eval()


class TorchCpuEngine(Engine):
    name = "torch-cpu"
    needs_torch_source = True

    def __init__(self) -> None:
        super().__init__()
        self._module: Any = None
        self._prev_threads: int | None = None

    def _available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch not installed ({exc})"
        return True, ""

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        import torch

        if kw["threads"] is not None:
            self._prev_threads = torch.get_num_threads()
            torch.set_num_threads(kw["threads"])
        self._module = _module_from(kw["torch_module_factory"])

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        if self._module is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        with torch.inference_mode():
            return to_float32_outputs(self._module(torch.from_numpy(np.ascontiguousarray(batch))))

    def close(self) -> None:
        self._module = None
        if self._prev_threads is not None:
            import torch

            torch.set_num_threads(self._prev_threads)
            self._prev_threads = None


@dataclass
class _Buffers:
    """One batch size's buffers, made once: pinned host input, device staging (float32) and the model's
    input (its dtype, channels-last)."""

    host: Any
    host_np: np.ndarray
    staging: Any
    model_in: Any
    out_host: Any = None  # pinned float32 copy of a single-tensor output, made at the first call


class TorchCudaEngine(Engine):
    name = "torch-cuda"
    device = "cuda"
    needs_torch_source = True
    half: ClassVar[bool] = False
    pinned: bool = False  # True: input and output through pinned host buffers (measured slower on an H200)

    def __init__(self) -> None:
        super().__init__()
        self._module: Any = None
        self._device: Any = None
        self._buffers: dict[tuple[int, ...], _Buffers] = {}

    def _available(self) -> tuple[bool, str]:
        reason = _torch_cuda_reason()
        return (reason == "", reason)

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        import torch

        self._device = torch.device(f"cuda:{kw['device_index']}")
        torch.cuda.set_device(self._device)
        if kw["batch_sizes"]:
            # the fastest kernel per shape, chosen at the warm-up: only where the shapes are known (a
            # benchmark); serving sees every batch size from 1 to max_batch, and tuning each on first
            # sight cost seconds of p95 (measured with scripts/bench_gpu_serving.py)
            torch.backends.cudnn.benchmark = True
        module = _module_from(kw["torch_module_factory"]).to(self._device)
        if self.half:
            module = module.half()
        self._module = module.to(memory_format=torch.channels_last)

    def _dtype(self) -> Any:
        import torch

        return torch.float16 if self.half else torch.float32

    def _buffers_for(self, shape: tuple[int, ...]) -> _Buffers:
        import torch

        buf = self._buffers.get(shape)
        if buf is None:
            host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            staging = torch.empty(shape, dtype=torch.float32, device=self._device)
            model_in = torch.empty(shape, dtype=self._dtype(), device=self._device)
            if len(shape) == 4:
                model_in = model_in.contiguous(memory_format=torch.channels_last)
            buf = _Buffers(host=host, host_np=host.numpy(), staging=staging, model_in=model_in)
            self._buffers[shape] = buf
        return buf

    def _forward(self, x: Any) -> Any:
        return self._module(x)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        if self._module is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        buf = self._buffers_for(tuple(batch.shape))
        with torch.inference_mode():
            if self.pinned:
                np.copyto(buf.host_np, batch, casting="same_kind")
                buf.staging.copy_(buf.host, non_blocking=True)
            else:  # the driver's own staged copy straight from the caller's pageable array (measured faster)
                buf.staging.copy_(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            return self._run_model(buf, buf.staging)

    def run_device(self, x: Any) -> list[np.ndarray]:
        """Like :meth:`run` for an NCHW float32 tensor already on this engine's device (GPU decoding)."""
        if self._module is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        import torch

        with torch.inference_mode():
            return self._run_model(self._buffers_for(tuple(x.shape)), x)

    def _run_model(self, buf: _Buffers, x: Any) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            buf.model_in.copy_(x)  # dtype and layout on the GPU, into the buffer made once
            out = self._forward(buf.model_in)
            if isinstance(out, torch.Tensor) and self.pinned:
                out32 = out.float() if out.dtype != torch.float32 else out
                if buf.out_host is None or buf.out_host.shape != out32.shape:
                    buf.out_host = torch.empty(out32.shape, dtype=torch.float32, pin_memory=True)
                buf.out_host.copy_(out32, non_blocking=True)
                torch.cuda.current_stream(self._device).synchronize()
                return [buf.out_host.numpy().copy()]
            return to_float32_outputs(out)  # .cpu() waits for the stream

    def close(self) -> None:
        self._module = None
        self._buffers.clear()
        if self._device is not None:
            try:
                import torch

                torch.cuda.empty_cache()
            except RuntimeError as exc:
                log.warning("torch.cuda.empty_cache failed: %s", exc)


class TorchCudaFp16Engine(TorchCudaEngine):
    name = "torch-cuda-fp16"
    half = True


class TorchCudaCompiledEngine(TorchCudaFp16Engine):
    """fp16 channels-last through ``torch.compile(mode="reduce-overhead")`` (inductor + CUDA graphs).

    Each batch size in ``batch_sizes`` is compiled and captured at load (three calls: compile, record,
    replay), so the benchmark's build time is the compile time; a batch size not given there is compiled
    at its first call."""

    name = "torch-cuda-compiled"

    def __init__(self) -> None:
        super().__init__()
        self._compiled: Any = None

    def _available(self) -> tuple[bool, str]:
        reason = _torch_cuda_reason()
        if reason:
            return False, reason
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            return False, f"torch.compile needs triton for CUDA ({exc})"
        return True, ""

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        import torch

        super()._load(onnx_path, **kw)
        self._compiled = torch.compile(self._module, mode="reduce-overhead", dynamic=False, fullgraph=False)
        shape = kw["input_shape"]
        if shape is None or len(shape) != 3:
            return
        for n in kw["batch_sizes"]:
            x = np.zeros((n, *[int(v) for v in shape]), dtype=np.float32)
            for _ in range(3):
                self.run(x)

    def _forward(self, x: Any) -> Any:
        import torch

        torch.compiler.cudagraph_mark_step_begin()  # the previous call's outputs were copied out already
        return self._compiled(x)

    def close(self) -> None:
        self._compiled = None
        super().close()
