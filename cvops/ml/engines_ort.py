"""onnxruntime engines: CPU, CPU int8, CUDA (fp32 and fp16) and the TensorRT execution provider."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cvops.errors import EngineUnavailable
from cvops.ml.engine_base import Engine, _chw, _onnx_input, _temp_dir_near, to_float32_outputs

log = logging.getLogger(__name__)


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
    _device_index = 0

    def _available(self) -> tuple[bool, str]:
        return self._ort_available("CUDAExecutionProvider", "onnxruntime-gpu not installed")

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        self._device_index = int(kw["device_index"])
        self._make_session(onnx_path, kw["threads"], self._cuda_providers(kw["device_index"]))

    def run_device(self, x: Any) -> list[np.ndarray]:
        """An NCHW float32 torch tensor already on the GPU (GPU decoding), bound in place (I/O binding)."""
        import torch

        if self._session is None:
            raise EngineUnavailable(f"{self.name} is not loaded", {"engine": self.name})
        x = x.contiguous()
        torch.cuda.current_stream(x.device).synchronize()  # onnxruntime reads it on its own stream
        binding = self._session.io_binding()
        binding.bind_input(
            self._input_name, "cuda", self._device_index, np.float32, list(x.shape), x.data_ptr()
        )
        for out in self._session.get_outputs():
            binding.bind_output(out.name)
        self._session.run_with_iobinding(binding)
        return to_float32_outputs(binding.copy_outputs_to_cpu())

    @staticmethod
    def _preload_cuda_libraries() -> None:
        """onnxruntime-gpu finds CUDA and cuDNN from the nvidia-* wheels (torch's) only when asked."""
        import onnxruntime as ort

        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            try:
                preload()
            except Exception as exc:  # noqa: BLE001 - the session will say what is missing
                log.warning("onnxruntime.preload_dlls failed: %s", exc)

    @classmethod
    def _cuda_providers(cls, device_index: int) -> list[Any]:
        cls._preload_cuda_libraries()
        cuda = {
            "device_id": device_index,
            "cudnn_conv_algo_search": "EXHAUSTIVE",  # once per shape, at the warm-up
            "prefer_nhwc": "1",  # tensor cores want channels-last
        }
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def convert_to_float16(src: Path, dst: Path) -> None:
    """``src``'s weights and compute in float16 with onnxruntime's own converter; inputs and outputs stay
    float32 (``keep_io_types``), so the engine takes and returns what every other engine does."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    onnx.save(convert_float_to_float16(model, keep_io_types=True), str(dst))


class OrtCudaFp16Engine(OrtCudaEngine):
    """The model converted to float16 (:func:`convert_to_float16`), then a CUDA session; the benchmark's
    agreement figures are its parity with the float32 reference."""

    name = "onnxruntime-cuda-fp16"

    def _available(self) -> tuple[bool, str]:
        ok, reason = super()._available()
        if not ok:
            return ok, reason
        try:
            import onnxruntime.transformers.float16  # noqa: F401
        except ImportError as exc:
            return False, f"onnxruntime.transformers.float16 not importable ({exc})"
        return True, ""

    def _load(self, onnx_path: Path, **kw: Any) -> None:
        self._tmpdir = _temp_dir_near(onnx_path, ".cvops-fp16-")
        half = self._tmpdir / (onnx_path.stem + ".fp16.onnx")
        convert_to_float16(onnx_path, half)
        self._make_session(half, kw["threads"], self._cuda_providers(kw["device_index"]))


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
