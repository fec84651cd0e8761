"""JPEG decoding and preprocessing on the GPU for CUDA deployments (nvjpeg through torchvision).

A worker of a CUDA deployment decodes its batch's JPEGs on the GPU (``torchvision.io.decode_jpeg`` with
``device="cuda"``, one call for the batch), resizes (bilinear, antialiased) and letterboxes there,
normalises there, and hands the engine a device tensor: the CPU only reads headers and moves bytes.

What the GPU path takes is decided from the header alone (:meth:`GpuPreprocessor.accepts`, no
decoding): a baseline or progressive JPEG in RGB/YCbCr or greyscale, no EXIF rotation, within the pixel
limit, for an NCHW model.  Everything else — PNG, CMYK JPEGs, rotated photos, broken bytes — goes the
CPU way of :mod:`cvops.ml.inference`, which also gives the user the right error.

Parity with the CPU path (PIL's bilinear resize, uint8 rounding) is close, not exact: measured and
asserted in ``tests/unit/test_gpu_preprocess.py`` (``gpu`` marker).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

from PIL import Image

from cvops.events.schema import Preprocessing
from cvops.ml.engine_base import _torch_cuda_reason
from cvops.ml.inference import LETTERBOX_PAD, MAX_PIXELS, Transform, media_type

log = logging.getLogger(__name__)

JPEG_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg"})


def gpu_decode_reason() -> str:
    """ "" when this process can decode JPEGs on a CUDA device, else why not."""
    try:
        import torchvision.io  # noqa: F401
    except ImportError as exc:
        return f"torchvision not installed ({exc})"
    return _torch_cuda_reason()


def goes_to_gpu(data: bytes, content_type: str, pre: Preprocessing) -> bool:
    """A JPEG the GPU path decodes exactly as the CPU path would (see the module's docstring)."""
    if media_type(content_type) not in JPEG_TYPES or pre.layout.upper() != "NCHW":
        return False
    if pre.resize not in ("letterbox", "resize"):
        return False
    try:
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
        w, h = img.size
        if img.mode not in ("RGB", "L") or w <= 0 or h <= 0 or w * h > MAX_PIXELS:
            return False
        return int(img.getexif().get(0x0112, 1) or 1) == 1
    except Exception:  # noqa: BLE001 - anything odd goes the CPU way, which reports it properly
        return False


class GpuPreprocessor:
    """Decode + resize/letterbox + normalise a batch of JPEGs on ``cuda:<device_index>``."""

    def __init__(self, pre: Preprocessing, device_index: int = 0) -> None:
        import torch

        self.pre = pre
        self.device = torch.device(f"cuda:{device_index}")
        self.th, self.tw = int(pre.image_size[0]), int(pre.image_size[-1])
        std = torch.tensor(pre.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        mean = torch.tensor(pre.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._offset = mean / std

    def accepts(self, data: bytes, content_type: str) -> bool:
        """Whether this image goes the GPU way; reads the header only, never raises."""
        return goes_to_gpu(data, content_type, self.pre)

    def prepare(self, datas: Sequence[bytes]) -> tuple[Any, list[Transform]]:
        """``(N, 3, H, W)`` float32 on the device and each image's Transform.  Raises on bytes nvjpeg
        cannot decode (the caller then takes the CPU path for the batch)."""
        import torch
        import torch.nn.functional as F
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        images = decode_jpeg(raw, mode=ImageReadMode.RGB, device=self.device)
        th, tw = self.th, self.tw
        letterbox = self.pre.resize == "letterbox"
        batch = torch.full((len(images), 3, th, tw), float(LETTERBOX_PAD), device=self.device)
        transforms: list[Transform] = []
        for i, img in enumerate(images):
            h0, w0 = int(img.shape[1]), int(img.shape[2])
            if letterbox:
                r = min(th / h0, tw / w0)
                nw, nh = max(1, min(tw, round(w0 * r))), max(1, min(th, round(h0 * r)))
                left, top = round((tw - nw) / 2 - 0.1), round((th - nh) / 2 - 0.1)
            else:
                nw, nh, left, top = tw, th, 0, 0
            x = img.unsqueeze(0).float()
            if (nh, nw) != (h0, w0):
                x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
            batch[i : i + 1, :, top : top + nh, left : left + nw] = x.round_().clamp_(0, 255)
            transforms.append(Transform(nw / w0, nh / h0, float(left), float(top), w0, h0, tw, th))
        batch.mul_(self._scale).sub_(self._offset)
        return batch, transforms
