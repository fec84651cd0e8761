"""Fixtures for the security tests: the e2e session server (`live`) and its helpers are reused."""

from __future__ import annotations

from tests.e2e.conftest import Live, live

__all__ = ["Live", "live"]
