"""Fixed number formatting shared by every report: rounding, fixed places, JSON-safe builtins.

Nothing here depends on the clock, the locale or dict order; ``-0`` never appears.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cvops.selection import fmt_num

__all__ = ["fixed", "fmt_num", "jsonable", "num", "rounded", "sci"]


def rounded(value: Any, places: int) -> Any:
    """``value`` rounded to ``places`` (ints and bools kept, non-finite → None, no ``-0.0``)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value):
        return None
    r = round(value, places)
    return 0.0 if r == 0 else r


def fixed(value: Any, places: int) -> str:
    """Text with exactly ``places`` decimals; ``–`` for missing, ``yes``/``no`` for bools."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "–"
    text = f"{v:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def num(value: Any) -> float | None:
    """A finite float, or None (for values read defensively from events)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def jsonable(obj: Any) -> Any:
    """Builtins with every float rounded to 6 places (non-finite → None); keys as strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return rounded(obj, 6)
    return obj


def sci(value: Any) -> str:
    """Scientific notation with 2 decimals (tiny differences such as ``1.50e-06``); ``–`` if missing."""
    v = num(value)
    return "–" if v is None else f"{v:.2e}"
