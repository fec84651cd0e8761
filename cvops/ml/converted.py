"""The typed records of a conversion, torch-free (the registry actor and the gateway import them):
what :func:`cvops.ml.convert.convert` checked (:class:`ConversionResult`) and what the pipeline is asked
to convert (:class:`ConversionRequest`).  The pipeline's answer is the ``ModelConverted`` event itself;
its fields are declared once, in :class:`~cvops.events.schema.ConvertedForm`."""

from __future__ import annotations

import msgspec

from cvops.events.schema import ConvertedForm, ModelConverted


class ConversionResult(ConvertedForm, frozen=True, kw_only=True):
    """The fields of ``ModelConverted`` as the check saw them (the model id and the ONNX blob are not
    known yet: :meth:`to_event` adds them), plus diagnostics that are not part of the event.  ``arch`` and
    ``torch_format`` name the torch form cvops wrote from the verified upload (``torch_out`` of
    :func:`~cvops.ml.convert.convert`), if any."""

    model_id: str = ""
    onnx_sha256: str = ""
    onnx_bytes: int = 0
    # diagnostics (not part of the event)
    source_format: str = ""
    exporter: str = ""
    task: str = ""
    num_classes: int = 0
    max_rel_diff: float = 0.0
    seconds: float = 0.0

    def to_event(self, model_id: str, onnx_sha256: str, onnx_bytes: int, **extra: object) -> ModelConverted:
        """The event: this result's :class:`ConvertedForm` fields with the model id and the ONNX blob
        (``extra`` overrides other fields, e.g. the torch form's sha256)."""
        fields = {f: getattr(self, f) for f in ConvertedForm.__struct_fields__}
        fields.update(model_id=model_id, onnx_sha256=onnx_sha256, onnx_bytes=onnx_bytes, **extra)
        return ModelConverted(**fields)


class ConversionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a conversion needs to know of the model record (``ModelUploaded``'s fields)."""

    source_format: str
    task: str
    model_id: str = ""
    source_sha256: str = ""
    arch: str | None = None
    preset: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    input_shape: list[int] | None = None
    labels: list[str] = []
    pretrained: bool = False
