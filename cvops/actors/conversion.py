"""The ModelRegistry's Ray tasks: a model's conversion and a dataset's extraction and validation.

Each runs in a worker process of its own (``max_calls=1``, memory-capped), so a crashing or hostile
file cannot take the registry down."""

from __future__ import annotations

import shutil
from pathlib import Path

import ray

from cvops.actors.common import worker_priority
from cvops.blobs import BlobStore
from cvops.config import Settings
from cvops.events.projections import DatasetRecord
from cvops.events.schema import DatasetValidated, ModelConverted
from cvops.ml.conversion import ConversionRequest


def conversion_memory_bytes(settings: Settings) -> int:
    """Each conversion's memory cap: the machine's RAM shared by the conversions that may run at once."""
    import psutil

    return int(psutil.virtual_memory().total // max(1, settings.max_conversions))


@ray.remote(num_cpus=1, max_calls=1, max_retries=0)
def convert_task(settings: Settings, req: ConversionRequest) -> ModelConverted:
    """Convert one model to ONNX with a parity check (:func:`cvops.ml.conversion.run_conversion`)."""
    from cvops.ml.conversion import run_conversion

    worker_priority()
    return run_conversion(
        req,
        BlobStore(settings.blob_root),
        memory_limit_bytes=conversion_memory_bytes(settings),
        weights_path=settings.weights_path,
        threads=2,
    )


@ray.remote(num_cpus=1, max_calls=1, max_retries=0)
def dataset_task(settings: Settings, rec: DatasetRecord) -> DatasetValidated:
    """Extract a dataset zip safely and validate it; returns the ``DatasetValidated`` event."""
    from cvops.ml.datasets import safe_extract, validate_dataset

    worker_priority()
    blobs = BlobStore(settings.blob_root)
    rel = Path("datasets") / rec.id
    dest = settings.data_path / rel
    if dest.exists():
        shutil.rmtree(dest)
    try:
        safe_extract(blobs.path(rec.sha256), dest, max_total_bytes=settings.max_dataset_bytes)
        info = validate_dataset(dest, rec.task, rec.format)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return info.to_event(rec.id, str(rel))
