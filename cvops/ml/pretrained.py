"""Published pre-trained weights for the presets (``POST /models/presets {"pretrained": true}``).

The file comes from the weights cache (``CVOPS_WEIGHTS_CACHE``, default ``<data_dir>/weights``), or is
downloaded from its publisher (torchvision's model zoo, ultralytics' assets) into the cache where the
machine can reach it.  Offline and not cached, the request fails with an error naming the file to place
in the cache and where to get it.  The file is read as data (``torch.load(weights_only=True)``; an
Ultralytics checkpoint through its class allow-list) and its sha256 is recorded with the model.

When the preset is built with another number of classes than the weights were published for, the
head's weights (the tensors whose shapes differ) keep their random initialisation: the usual start for
fine-tuning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.ml.spec import TORCHVISION_PRESETS, check_published

log = logging.getLogger(__name__)

YOLOV8N_URL = "https://github.com/ultralytics/assets/releases/download/v8.3.0/yolov8n.pt"
DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class PublishedFile:
    file: str
    url: str
    labels: list[str] | None  # the classes the weights were trained on, where published


@dataclass
class PretrainedWeights:
    state_dict: dict[str, torch.Tensor]
    file: str
    sha256: str
    labels: list[str] | None


def published(preset: str) -> PublishedFile:
    """Which file holds the published weights of ``preset``."""
    check_published(preset)
    if preset == "yolov8n":
        return PublishedFile("yolov8n.pt", YOLOV8N_URL, None)
    if preset in TORCHVISION_PRESETS:
        import torchvision

        weights = torchvision.models.get_model_weights(preset).DEFAULT
        name = PurePosixPath(urlparse(weights.url).path).name
        return PublishedFile(name, weights.url, list(weights.meta.get("categories") or []) or None)
    raise AssertionError(f"{preset} is in PUBLISHED_PRESETS without a publisher")  # pragma: no cover


def fetch(preset: str, cache_dir: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The cached file of ``preset``'s weights, downloaded first if the publisher can be reached."""
    pub = published(preset)
    path = cache_dir / pub.file
    if path.is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(pub.url, timeout=timeout_s) as resp, open(part, "wb") as out:  # noqa: S310
            while chunk := resp.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except (OSError, urllib.error.URLError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise ValidationFailed(
            f"the pre-trained weights of {preset} are not in the weights cache and cannot be downloaded "
            f"({reason}): place {pub.file} (from {pub.url}) in {cache_dir} (CVOPS_WEIGHTS_CACHE)",
            {"file": pub.file, "url": pub.url, "weights_cache": str(cache_dir)},
        ) from exc
    log.info("downloaded the pre-trained weights of %s into %s", preset, path)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_pretrained(preset: str, cache_dir: Path) -> PretrainedWeights:
    """Read the published weights of ``preset`` as data; the sha256 is of the file as read."""
    from cvops.ml import formats, presets

    path = fetch(preset, cache_dir)
    sha = _sha256(path)
    if preset == "yolov8n":
        ck = formats.read_ultralytics_checkpoint(path)
        return PretrainedWeights(ck.state_dict, path.name, sha, ck.labels)
    return PretrainedWeights(presets.load_state_dict_file(path), path.name, sha, published(preset).labels)


def load_into(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``module``; tensors whose shape differs (the head, for another number of
    classes) are left as built.  Returns their names.  Anything else missing or unexpected is an error."""
    own = module.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    kept = {k: v for k, v in state.items() if k not in skipped}
    result = module.load_state_dict(kept, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped]
    if missing or result.unexpected_keys:
        raise ValidationFailed(
            "the pre-trained weights do not fit the preset",
            {"missing": missing[:10], "unexpected": list(result.unexpected_keys)[:10]},
        )
    if len(skipped) > 8:
        raise ValidationFailed(
            "the pre-trained weights do not fit the preset (more than the head differs)",
            {"different_shapes": skipped[:10]},
        )
    return skipped
