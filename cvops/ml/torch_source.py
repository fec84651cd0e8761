"""The torch module of a registered model, for the jobs and engines that run torch (training, the
torch-* benchmark and serving engines)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cvops.blobs import BlobStore

if TYPE_CHECKING:
    from cvops.events.projections import ModelRecord


def build_torch_source(rec: ModelRecord, blobs: BlobStore) -> Any:
    """The torch module of a model record that has a torch form (presets, trained models, ``.pt2``,
    state_dict and Ultralytics uploads): always a file cvops wrote itself from the verified model, a
    state_dict (loaded ``weights_only``) or a re-saved, re-checked ``.pt2``.  Never the user's upload.
    None for a model without one (ONNX uploads; records of older versions whose torch form was a
    TorchScript upload)."""
    import torch

    from cvops.ml import presets

    onnx = rec.onnx
    if onnx is None or not onnx.torch_sha256 or onnx.torch_format not in ("state_dict", "torch_export"):
        return None
    fmt = onnx.torch_format
    path = blobs.path(onnx.torch_sha256)
    arch = onnx.torch_arch or rec.arch or rec.preset
    if fmt == "state_dict" and arch in presets.PRESETS:
        state = torch.load(path, weights_only=True, map_location="cpu")
        return presets.build_preset(
            arch,
            num_classes=rec.num_classes or len(rec.labels) or None,
            image_size=rec.image_size,
            state_dict=state,
        ).module
    from cvops.ml.formats import load_torch_model

    return load_torch_model(path, fmt, arch=arch, num_classes=rec.num_classes)
