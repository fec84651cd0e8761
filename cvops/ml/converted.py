"""The typed records of a conversion, torch-free (the registry actor and the gateway import them):
what :func:`cvops.ml.convert.convert` checked (:class:`ConversionResult`), what the pipeline is asked to
convert (:class:`ConversionRequest`) and what it wrote (:class:`ConvertedModel`)."""

from __future__ import annotations

import msgspec

from cvops.events.schema import ModelConverted, Parity, Preprocessing, TensorSpec


class ConversionResult(msgspec.Struct, frozen=True, kw_only=True):
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameter_count: int
    preprocessing: Preprocessing
    parity: Parity
    labels: list[str] = []
    # diagnostics (not part of the event)
    source_format: str = ""
    exporter: str = ""
    task: str = ""
    num_classes: int = 0
    max_rel_diff: float = 0.0
    seconds: float = 0.0
    # the torch form cvops wrote from the verified upload (``torch_out`` of :func:`convert`), if any
    torch_format: str = ""
    torch_arch: str | None = None

    def to_event(self, model_id: str, onnx_sha256: str, onnx_bytes: int) -> ModelConverted:
        return ModelConverted(
            model_id=model_id,
            onnx_sha256=onnx_sha256,
            onnx_bytes=onnx_bytes,
            opset=self.opset,
            inputs=self.inputs,
            outputs=self.outputs,
            parameter_count=self.parameter_count,
            preprocessing=self.preprocessing,
            parity=self.parity,
            labels=self.labels,
        )


class ConversionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a conversion needs to know of the model record (``ModelUploaded``'s fields)."""

    source_format: str
    task: str
    source_sha256: str = ""
    arch: str | None = None
    preset: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    input_shape: list[int] | None = None
    labels: list[str] = []
    pretrained: bool = False


class ConvertedModel(msgspec.Struct, frozen=True, kw_only=True):
    """What a conversion wrote: the ONNX blob, the torch form (if any), and the checked conversion."""

    result: ConversionResult
    onnx_sha256: str
    onnx_bytes: int
    torch_sha256: str = ""
    torch_format: str = ""
    arch: str | None = None
    pretrained_file: str = ""
    pretrained_sha256: str = ""

    def to_event(self, model_id: str) -> ModelConverted:
        return msgspec.structs.replace(
            self.result.to_event(model_id, self.onnx_sha256, self.onnx_bytes),
            torch_sha256=self.torch_sha256,
            torch_format=self.torch_format,
            arch=self.arch,
            pretrained_file=self.pretrained_file,
            pretrained_sha256=self.pretrained_sha256,
        )
