"""TensorRT 10 through its own Python API (``tensorrt-fp16``); unavailable, with the reason, without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvops.errors import EngineUnavailable, ValidationFailed
from cvops.ml.engine_base import Engine, _chw, _torch_cuda_reason, to_float32_outputs
from cvops.ml.plan_cache import PlanCache, PlanKey, file_sha256


class TensorrtFp16Engine(Engine):
    """TensorRT 10 built from the ONNX file with FP16 enabled; I/O buffers are torch CUDA tensors.

    Build: Builder → NetworkDefinition → OnnxParser → BuilderConfig (FP16, timing cache, one
    optimisation profile over the dynamic batch axis) → ``build_serialized_network`` →
    ``Runtime.deserialize_cuda_engine`` → execution context.  Run: ``set_input_shape``,
    ``set_tensor_address`` for every I/O tensor, ``execute_async_v3`` on a torch CUDA stream, synchronise.
    """

    name = "tensorrt-fp16"
    device = "cuda"
    plan_cache: PlanCache | None = None  # set by the caller: ten workers of a deployment build one plan

    def __init__(self) -> None:
        super().__init__()
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._device: Any = None
        self._inputs: list[str] = []
        self._outputs: list[str] = []
        self._out_cache: dict[tuple[int, ...], dict[str, Any]] = {}

    def _available(self) -> tuple[bool, str]:
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            return False, f"tensorrt Python module not installed ({exc})"
        reason = _torch_cuda_reason()
        return (reason == "", reason)

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        import tensorrt as trt
        import torch

        self._device = torch.device(f"cuda:{kw['device_index']}")
        torch.cuda.set_device(self._device)
        logger = trt.Logger(trt.Logger.WARNING)
        if self.plan_cache is None:
            serialized = self._build(onnx_path, kw, logger)
        else:
            major, minor = torch.cuda.get_device_capability(self._device)
            key = PlanKey(
                model_sha256=file_sha256(onnx_path),
                gpu=f"{torch.cuda.get_device_name(self._device)} sm{major}{minor}",
                runtime=f"tensorrt {trt.__version__}",
                profile=((int(kw["max_batch"]), *[int(v) for v in kw["input_shape"] or ()]),),
            )
            serialized, _built = self.plan_cache.get_or_build(
                key, lambda: bytes(self._build(onnx_path, kw, logger))
            )
        runtime = trt.Runtime(logger)
        self._engine = runtime.deserialize_cuda_engine(serialized)
        if self._engine is None:
            raise EngineUnavailable("TensorRT failed to deserialise the engine", {"engine": self.name})
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream(device=self._device)
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(name)
            else:
                self._outputs.append(name)
        if len(self._inputs) != 1:
            raise EngineUnavailable(
                f"tensorrt-fp16 supports one input, the model has {len(self._inputs)}", {"engine": self.name}
            )

    def _build(self, onnx_path: Path, kw: dict[str, Any], logger: Any) -> Any:
        """Parse the ONNX and build the serialized engine (minutes for a large model)."""
        import tensorrt as trt

        builder = trt.Builder(logger)
        flags = 0
        major = int(str(trt.__version__).split(".")[0])
        if major < 10:  # TensorRT 10 networks are always explicit-batch; the flag is deprecated
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineUnavailable(
                f"TensorRT could not parse the ONNX model: {errors}", {"engine": self.name}
            )
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
        timing_cache = config.create_timing_cache(b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        profile = builder.create_optimization_profile()
        needs_profile = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            dims = list(tensor.shape)
            if any(d < 0 for d in dims):
                needs_profile = True
                c, h, w = _chw(kw["input_shape"], [("batch" if d < 0 else d) for d in dims])
                opt = min(8, kw["max_batch"])
                profile.set_shape(tensor.name, (1, c, h, w), (opt, c, h, w), (kw["max_batch"], c, h, w))
        if needs_profile:
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EngineUnavailable("TensorRT failed to build the engine", {"engine": self.name})
        return serialized

    def _torch_dtype(self, name: str) -> Any:
        import tensorrt as trt
        import torch

        mapping = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.INT8: torch.int8,
            trt.DataType.BOOL: torch.bool,
        }
        return mapping[self._engine.get_tensor_dtype(name)]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        if self._context is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        name = self._inputs[0]
        with torch.cuda.stream(self._stream):  # copy in, execute and copy out on one stream
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device, dtype=self._torch_dtype(name))
            shape = tuple(x.shape)
            if not self._context.set_input_shape(name, shape):
                raise ValidationFailed(f"batch shape {list(shape)} is outside the TensorRT profile")
            outs = self._out_cache.get(shape)
            if outs is None:
                outs = {
                    out: torch.empty(
                        tuple(self._context.get_tensor_shape(out)),
                        dtype=self._torch_dtype(out),
                        device=self._device,
                    )
                    for out in self._outputs
                }
                self._out_cache[shape] = outs
            self._context.set_tensor_address(name, x.data_ptr())
            for out, tensor in outs.items():
                self._context.set_tensor_address(out, tensor.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise EngineUnavailable("TensorRT execute_async_v3 failed", {"engine": self.name})
            result = to_float32_outputs([outs[o] for o in self._outputs])
        self._stream.synchronize()
        return result

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._stream = None
        self._out_cache.clear()
