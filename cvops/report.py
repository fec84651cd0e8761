"""Kept for importers: the benchmark report now lives in :mod:`cvops.reports` (one module per kind)."""

from __future__ import annotations

from cvops.reports import FORMATS, VIEWS, build_report, report_data

__all__ = ["FORMATS", "VIEWS", "build_report", "report_data"]
