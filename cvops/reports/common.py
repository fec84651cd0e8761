"""Small facts several report kinds read from events: a job's status, submission, device and result;
the names of models and datasets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from cvops.errors import ValidationFailed
from cvops.events.schema import (
    DatasetUploaded,
    DatasetValidated,
    Event,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobQueued,
    JobStarted,
    JobSubmitted,
    JobSucceeded,
    ModelUploaded,
)
from cvops.ml.hyperparameters import hyperparameters_dict, validate_hyperparameters
from cvops.reports.fmt import jsonable


class JobFacts(msgspec.Struct):
    job_id: str
    kind: str = ""
    spec: dict[str, Any] = {}
    submitted_by: str = ""
    parent_job_id: str | None = None
    status: str = "unknown"
    device: str = ""
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str = ""


def job_facts(job_id: str, events: Sequence[Event]) -> JobFacts:
    """The job as its scheduler events tell it (status is that of the last lifecycle event)."""
    f = JobFacts(job_id=job_id)
    for ev in events:
        if getattr(ev, "job_id", None) != job_id:
            continue
        if isinstance(ev, JobSubmitted):
            f.kind, f.spec, f.submitted_by, f.parent_job_id = (
                ev.kind,
                dict(ev.spec),
                ev.submitted_by,
                ev.parent_job_id,
            )
            f.status = "queued"
        elif isinstance(ev, JobQueued):
            f.status = "queued"
        elif isinstance(ev, JobStarted):
            f.status, f.device, f.attempts = "running", ev.device, max(f.attempts, ev.attempt)
        elif isinstance(ev, JobSucceeded):
            f.status, f.result = "succeeded", dict(ev.result)
        elif isinstance(ev, JobFailed):
            f.status, f.error = "failed", ev.error
        elif isinstance(ev, JobCancelled):
            f.status = "cancelled"
        elif isinstance(ev, JobInterrupted):
            f.status = "interrupted"
    return f


def model_name(model_id: str, events: Sequence[Event]) -> str:
    for ev in events:
        if isinstance(ev, ModelUploaded) and ev.model_id == model_id:
            return ev.name
    return ""


class DatasetFacts(msgspec.Struct):
    dataset_id: str
    name: str = ""
    format: str = ""
    classes: list[str] = []
    counts: dict[str, dict[str, int]] = {}


def dataset_facts(dataset_id: str, events: Sequence[Event]) -> DatasetFacts:
    d = DatasetFacts(dataset_id=dataset_id)
    for ev in events:
        if isinstance(ev, DatasetUploaded) and ev.dataset_id == dataset_id:
            d.name, d.format = ev.name, ev.format
        elif isinstance(ev, DatasetValidated) and ev.dataset_id == dataset_id:
            d.classes, d.counts = list(ev.classes), {k: dict(v) for k, v in ev.counts.items()}
    return d


def dataset_view(d: DatasetFacts) -> dict[str, Any]:
    images = {split: sum(per.values()) for split, per in sorted(d.counts.items())}
    return {
        "id": d.dataset_id,
        "name": d.name,
        "format": d.format,
        "classes": list(d.classes),
        "images": images,
    }


def hyperparameters(given: dict[str, Any]) -> dict[str, Any]:
    """The effective hyperparameters (defaults filled in), or what was given if it no longer validates."""
    try:
        return jsonable(hyperparameters_dict(validate_hyperparameters(dict(given))))  # type: ignore[no-any-return]
    except ValidationFailed:  # an old or foreign spec: show it as it is
        return jsonable(dict(given))  # type: ignore[no-any-return]


def pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError):
        return "–"
