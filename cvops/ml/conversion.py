"""The one conversion pipeline: a registered model's source (an upload, a preset, a trained model's
state_dict) to a verified ONNX file and the torch form cvops writes itself, under a memory cap.

:func:`run_conversion` is what the ModelRegistry's conversion task runs (in its own worker process:
``max_calls=1``); it takes a typed :class:`ConversionRequest` (the fields of the model record it needs,
in the torch-free :mod:`cvops.ml.converted`) and returns the ``ModelConverted`` event the registry appends.  The memory cap is ``RLIMIT_DATA`` (heap and anonymous mappings; ``RLIMIT_AS``
would also count the huge virtual reservations of torch's libraries) and lasts for the whole process:
ONLY call this in a child process — a Ray task or a spawned worker — never in the gateway or an actor.
Running out of memory raises :class:`ValidationFailed` ("conversion exceeded its memory limit").
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from cvops.blobs import BlobStore
from cvops.errors import ValidationFailed
from cvops.events.schema import ModelConverted
from cvops.ml.converted import ConversionRequest

log = logging.getLogger(__name__)


def _limit_memory(limit: int | None) -> None:
    import resource

    if limit is None:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
        cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not cap conversion memory: %s", exc)


@contextmanager
def _memory_errors(limit: int | None) -> Iterator[None]:
    """Running past the cap shows as MemoryError, or an allocation error inside torch / the exporter."""
    try:
        yield
    except MemoryError as exc:
        raise ValidationFailed("conversion exceeded its memory limit", {"limit_bytes": limit}) from exc
    except ValidationFailed as exc:
        if "alloc" in str(exc.details.get("reason", "")).lower():
            raise ValidationFailed(
                "conversion exceeded its memory limit", {"limit_bytes": limit, **exc.details}
            ) from exc
        raise
    except RuntimeError as exc:
        if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
            raise ValidationFailed(
                "conversion exceeded its memory limit", {"limit_bytes": limit, "reason": str(exc)[:300]}
            ) from exc
        raise


def run_conversion(
    req: ConversionRequest,
    blobs: BlobStore,
    *,
    memory_limit_bytes: int | None,
    weights_path: Path | None = None,
    threads: int = 2,
) -> ModelConverted:
    """Cap this process' memory, set torch to ``threads`` threads, convert, and put the ONNX file and
    the torch form into ``blobs``."""
    import torch

    _limit_memory(memory_limit_bytes)
    torch.set_num_threads(threads)
    with _memory_errors(memory_limit_bytes), tempfile.TemporaryDirectory(dir=blobs.tmp_dir) as tmp:
        out = Path(tmp) / "model.onnx"
        if _is_preset(req):
            converted = _convert_preset(req, blobs, out, weights_path)
        else:
            converted = _convert_upload(req, blobs, out, Path(tmp) / "torch-form")
        ref = blobs.put_file(out)
    return msgspec.structs.replace(converted, onnx_sha256=ref.sha256, onnx_bytes=ref.bytes)


def _is_preset(req: ConversionRequest) -> bool:
    from cvops.ml import presets

    return req.source_format == "preset" or (
        req.source_format == "state_dict" and req.arch in presets.PRESETS
    )


def _convert_preset(
    req: ConversionRequest, blobs: BlobStore, out: Path, weights_path: Path | None
) -> ModelConverted:
    """A preset (or a state_dict of one): built, loaded, and its torch form re-saved by cvops."""
    import torch

    from cvops.ml import convert, presets

    state = None
    num_classes = req.num_classes
    if req.source_format == "state_dict":
        from cvops.ml.formats import infer_num_classes

        state = presets.load_state_dict_file(blobs.path(req.source_sha256))
        if num_classes is None and not req.labels:
            num_classes = infer_num_classes(req.arch or "", state)
    labels = list(req.labels) or None
    weights = None
    if req.pretrained:
        from cvops.ml import pretrained

        if weights_path is None:
            raise ValidationFailed("a pretrained preset needs the weights directory")
        weights = pretrained.load_pretrained(req.preset or "", weights_path)
        if num_classes is None and labels is None and weights.labels:
            labels = weights.labels
    built = presets.build_preset(
        req.preset or req.arch or "",
        num_classes=num_classes,
        image_size=req.image_size,
        labels=labels,
        state_dict=state,
    )
    extra: dict[str, str] = {}
    if weights is not None:
        pretrained.load_into(built.module, weights.state_dict)
        extra = {"pretrained_file": weights.file, "pretrained_sha256": weights.sha256}
    # the torch form is a state_dict cvops writes from the built module, never the upload itself
    buf = io.BytesIO()
    torch.save(built.module.state_dict(), buf)
    torch_sha = blobs.put_bytes(buf.getvalue()).sha256
    result = convert.convert_module(
        built.module,
        built.task,
        built.input_shape,
        out,
        preprocessing=built.preprocessing,
        labels=built.labels,
    )
    return result.to_event(
        req.model_id, "", 0, torch_sha256=torch_sha, torch_format="state_dict", arch=built.name, **extra
    )


def _convert_upload(req: ConversionRequest, blobs: BlobStore, out: Path, torch_out: Path) -> ModelConverted:
    """Any other upload format, through :func:`cvops.ml.convert.convert`."""
    from cvops.ml import convert

    result = convert.convert(
        blobs.path(req.source_sha256),
        req.source_format,
        task=req.task,
        input_shape=req.input_shape,
        arch=req.arch,
        num_classes=req.num_classes,
        labels=list(req.labels) or None,
        out_path=out,
        torch_out=torch_out,
    )
    torch_sha = blobs.put_file(torch_out).sha256 if result.torch_format else ""
    return result.to_event(req.model_id, "", 0, torch_sha256=torch_sha, arch=result.arch or req.arch)
