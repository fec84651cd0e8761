"""Deterministic reports built from events alone: the same events give the same bytes.

Kinds: ``benchmark``, ``training`` and ``evolution`` (one per job kind) and the ``model_card``.  Each
kind module turns events into plain, rounded data (the JSON format) and that data into a
:class:`~cvops.reports.doc.Doc`, which :mod:`cvops.reports.render` prints as Markdown or a
self-contained HTML page with inline SVG charts.  Views: ``simple`` (what to use and why, in plain
sentences, one chart) and ``technical`` (every figure, the method, the machine, the versions).

Pure: no I/O, no clock, no torch or ray; the gateway gathers the events (cvops.platform.api_reports).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cvops.errors import NotFound, ValidationFailed
from cvops.events.schema import Event
from cvops.reports import benchmark, evolution, model_card, training
from cvops.reports.common import job_facts
from cvops.reports.render import FORMATS, render

VIEWS = ("simple", "technical")
JOB_KINDS = {"benchmark": "benchmark", "train": "training", "evolve": "evolution"}

__all__ = ["FORMATS", "JOB_KINDS", "VIEWS", "build_report", "job_report", "model_card_report", "report_data"]


def _check(view: str, fmt: str) -> None:
    if view not in VIEWS:
        raise ValidationFailed(f"view must be one of {list(VIEWS)}, got {view!r}")
    if fmt not in FORMATS:
        raise ValidationFailed(f"format must be one of {list(FORMATS)}, got {fmt!r}")


def report_data(
    job: Mapping[str, Any], measured: Mapping[str, Any], selection: Mapping[str, Any], view: str
) -> dict[str, Any]:
    """The benchmark report's data from the job record, measurement and selection (as builtins)."""
    return benchmark.report_data(job, measured, selection, view)


def build_report(
    job: Mapping[str, Any],
    measured: Mapping[str, Any],
    selection: Mapping[str, Any],
    view: str = "simple",
    fmt: str = "json",
) -> bytes:
    """A benchmark report in ``fmt`` (json | md | html) for ``view`` (simple | technical), as UTF-8 bytes."""
    _check(view, fmt)
    data = benchmark.report_data(job, measured, selection, view)
    return render(data, benchmark.document(data), fmt)


def job_report(job_id: str, events: Sequence[Event], view: str = "simple", fmt: str = "json") -> bytes:
    """The report of job ``job_id`` from its events (scheduler events of the job and its trials, the
    job's own stream, and the events of the models and datasets it names), in log order.  NotFound when
    the job has nothing to report yet."""
    _check(view, fmt)
    kind = job_facts(job_id, events).kind
    if kind == "benchmark":
        parts = benchmark.from_events(job_id, events)
        if parts.measured is None or parts.selection is None:
            raise NotFound("this job has no report yet (the benchmark has not finished)", {"job_id": job_id})
        data = benchmark.report_data(parts.job, parts.measured, parts.selection, view)
        return render(data, benchmark.document(data), fmt)
    if kind == "train":
        data = training.report_data(job_id, events, view)
        return render(data, training.document(data), fmt)
    if kind == "evolve":
        data = evolution.report_data(job_id, events, view)
        return render(data, evolution.document(data), fmt)
    raise NotFound(f"no job {job_id!r}" if not kind else f"{kind} jobs have no report", {"job_id": job_id})


def model_card_report(
    model_id: str, events: Sequence[Event], view: str = "simple", fmt: str = "json"
) -> bytes:
    """The model card of ``model_id`` from its events (see :mod:`cvops.reports.model_card`)."""
    _check(view, fmt)
    data = model_card.report_data(model_id, events, view)
    return render(data, model_card.document(data), fmt)
