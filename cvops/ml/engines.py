"""Inference engines behind one interface (DESIGN.md §4).

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

import logging
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np

from cvops.errors import EngineUnavailable, ValidationFailed
from cvops.ml.spec import ENGINE_NAMES as ENGINE_NAMES  # the names are data; the engines live here

log = logging.getLogger(__name__)


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
    ) -> None:
        """Build the session/engine; records ``build_time_s``.  Raises EngineUnavailable if it cannot."""
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


# ---------------------------------------------------------------------------------------- onnxruntime


class _OrtEngine(Engine):
    """Common onnxruntime session handling; subclasses choose providers."""

    def __init__(self) -> None:
        super().__init__()
        self._session: Any = None
        self._input_name = ""
        self._input_dtype: type[np.floating[Any]] = np.float32
        self._tmpdir: Path | None = None
        self.max_batch: int | None = None  # the model's fixed batch size, None when the axis is dynamic

    def _ort_available(self, provider: str, missing: str) -> tuple[bool, str]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return False, f"onnxruntime not installed ({exc})"
        if provider not in ort.get_available_providers():
            return False, missing
        return True, ""

    def _session_options(self, threads: int | None) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return opts

    def _make_session(self, model_path: Path, threads: int | None, providers: list[Any]) -> None:
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            str(model_path), sess_options=self._session_options(threads), providers=providers
        )
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        active = self._session.get_providers()
        if not active or active[0] != wanted:
            # onnxruntime silently falls back to the CPU provider; a benchmark must not.
            self.close()
            raise EngineUnavailable(
                f"{wanted} could not be initialised (active providers: {active})", {"engine": self.name}
            )
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        dim0 = inp.shape[0] if inp.shape else None
        self.max_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._session is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        x = np.ascontiguousarray(batch, dtype=self._input_dtype)  # a float16 model takes float16 input
        return to_float32_outputs(self._session.run(None, {self._input_name: x}))

    def close(self) -> None:
        self._session = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


class OrtCpuEngine(_OrtEngine):
    name = "onnxruntime-cpu"

    def _available(self) -> tuple[bool, str]:
        return self._ort_available("CPUExecutionProvider", "CPUExecutionProvider not available")

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        self._make_session(onnx_path, kw["threads"], ["CPUExecutionProvider"])


def _temp_dir_near(path: Path, prefix: str) -> Path:
    """A temporary folder next to ``path`` (so relative external-data paths resolve), else in TMPDIR."""
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    except OSError:
        return Path(tempfile.mkdtemp(prefix=prefix))


class OrtCpuInt8Engine(_OrtEngine):
    """Dynamic int8 quantisation (weights int8, activations quantised at run time), then a CPU session."""

    name = "onnxruntime-cpu-int8"

    def _available(self) -> tuple[bool, str]:
        ok, reason = self._ort_available("CPUExecutionProvider", "CPUExecutionProvider not available")
        if not ok:
            return ok, reason
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime.quantization not importable ({exc})"
        return True, ""

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        self._tmpdir = _temp_dir_near(onnx_path, ".cvops-int8-")
        quantized = self._tmpdir / (onnx_path.stem + ".int8.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # the quantiser warns through the root logger
        try:
            quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        self._make_session(quantized, kw["threads"], ["CPUExecutionProvider"])


class OrtCudaEngine(_OrtEngine):
    name = "onnxruntime-cuda"
    device = "cuda"

    def _available(self) -> tuple[bool, str]:
        return self._ort_available("CUDAExecutionProvider", "onnxruntime-gpu not installed")

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        providers = [("CUDAExecutionProvider", {"device_id": kw["device_index"]}), "CPUExecutionProvider"]
        self._make_session(onnx_path, kw["threads"], providers)


class OrtTensorrtEngine(_OrtEngine):
    """onnxruntime's TensorRT execution provider, fp16, engine and timing caches in a temp folder."""

    name = "onnxruntime-tensorrt"
    device = "cuda"

    def _available(self) -> tuple[bool, str]:
        return self._ort_available("TensorrtExecutionProvider", "TensorRT execution provider not available")

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        input_name, dims = _onnx_input(onnx_path)
        self._tmpdir = Path(tempfile.mkdtemp(prefix="cvops-trt-ep-"))
        trt_opts: dict[str, Any] = {
            "device_id": kw["device_index"],
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self._tmpdir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self._tmpdir),
        }
        if dims and isinstance(dims[0], str):  # dynamic batch axis → one profile 1..max_batch
            c, h, w = _chw(kw["input_shape"], dims)
            opt = min(8, kw["max_batch"])

            def shape(n: int) -> str:
                return f"{input_name}:{n}x{c}x{h}x{w}"

            trt_opts["trt_profile_min_shapes"] = shape(1)
            trt_opts["trt_profile_opt_shapes"] = shape(opt)
            trt_opts["trt_profile_max_shapes"] = shape(kw["max_batch"])
        providers = [
            ("TensorrtExecutionProvider", trt_opts),
            ("CUDAExecutionProvider", {"device_id": kw["device_index"]}),
            "CPUExecutionProvider",
        ]
        self._make_session(onnx_path, kw["threads"], providers)


# ------------------------------------------------------------------------------------------- TensorRT


def _torch_cuda_reason() -> str:
    """ "" when torch can use a CUDA device, else why not."""
    try:
        import torch
    except ImportError as exc:
        return f"torch not installed ({exc})"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return ""


class TensorrtFp16Engine(Engine):
    """TensorRT 10 built from the ONNX file with FP16 enabled; I/O buffers are torch CUDA tensors.

    Build: Builder → NetworkDefinition → OnnxParser → BuilderConfig (FP16, timing cache, one
    optimisation profile over the dynamic batch axis) → ``build_serialized_network`` →
    ``Runtime.deserialize_cuda_engine`` → execution context.  Run: ``set_input_shape``,
    ``set_tensor_address`` for every I/O tensor, ``execute_async_v3`` on a torch CUDA stream, synchronise.
    """

    name = "tensorrt-fp16"
    device = "cuda"

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


# ---------------------------------------------------------------------------------------------- torch


class _TorchEngine(Engine):
    needs_torch_source = True
    half: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._module: Any = None
        self._device: Any = None
        self._prev_threads: int | None = None

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        import torch

        if self.device == "cuda":
            self._device = torch.device(f"cuda:{kw['device_index']}")
        else:
            self._device = torch.device("cpu")
            if kw["threads"] is not None:
                self._prev_threads = torch.get_num_threads()
                torch.set_num_threads(kw["threads"])
        factory = kw["torch_module_factory"]
        module = factory()
        if not isinstance(module, torch.nn.Module):
            raise ValidationFailed(f"torch_module_factory returned {type(module).__name__}, not nn.Module")
        module = module.eval().to(self._device)
        if self.half:
            module = module.half()
        self._module = module

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import torch

        if self._module is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            if self.half:
                x = x.half()
            out = self._module(x)
            result = to_float32_outputs(out)  # .cpu() synchronises the stream
        if self.device == "cuda":
            torch.cuda.synchronize(self._device)
        return result

    def close(self) -> None:
        self._module = None
        if self._prev_threads is not None:
            import torch

            torch.set_num_threads(self._prev_threads)
            self._prev_threads = None
        if self.device == "cuda":
            try:
                import torch

                torch.cuda.empty_cache()
            except RuntimeError as exc:
                log.warning("torch.cuda.empty_cache failed: %s", exc)


class TorchCpuEngine(_TorchEngine):
    name = "torch-cpu"

    def _available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"torch not installed ({exc})"
        return True, ""


class TorchCudaEngine(_TorchEngine):
    name = "torch-cuda"
    device = "cuda"

    def _available(self) -> tuple[bool, str]:
        reason = _torch_cuda_reason()
        return (reason == "", reason)


class TorchCudaFp16Engine(TorchCudaEngine):
    name = "torch-cuda-fp16"
    half = True


_ENGINES: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (
        OrtCpuEngine,
        OrtCpuInt8Engine,
        OrtCudaEngine,
        OrtTensorrtEngine,
        TensorrtFp16Engine,
        TorchCpuEngine,
        TorchCudaEngine,
        TorchCudaFp16Engine,
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
