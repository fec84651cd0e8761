"""Inline SVG charts drawn from plain numbers: a box plot, a line chart and a scatter plot.

Byte-stable: coordinates are printed with one decimal, labels with :func:`~cvops.selection.fmt_num`,
colours come from a fixed palette in the order the series are given.  Every chart has explicit
``width``/``height`` attributes (so it has a size before any CSS applies) and ``class="chart"``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import msgspec

from cvops.selection import fmt_num

PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#bf3989", "#57606a")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _open(width: float, height: float, label: str) -> str:
    return (
        f'<svg class="chart" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{_e(label)}">'
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>'
    )


def ticks(lo: float, hi: float, n: int = 5, integer: bool = False) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (whole numbers only when ``integer``)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    start = math.floor(lo / step) * step
    out: list[float] = []
    v = start
    while v <= hi + step * 1e-9 and len(out) < 50:
        out.append(0.0 if abs(v) < step * 1e-9 else round(v, 12))
        v += step
    if out[-1] < hi:
        out.append(round(out[-1] + step, 12))
    return out


def _range(values: Sequence[float], zero: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if zero:
        lo = min(lo, 0.0)
    if hi <= lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = (lo - pad if not zero or lo < 0 else lo), hi + pad
    return lo, hi


# ------------------------------------------------------------------------------------------ box plot


class Box(msgspec.Struct, frozen=True):
    """One row of a box plot (milliseconds): whiskers min–max, box p50–p95, a tick at p99, a dot at the mean."""

    label: str
    min: float
    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    highlight: bool = False


def box_plot(rows: Sequence[Box], title: str, unit: str = "ms") -> str:
    label_w, plot_w, row_h, top, bottom = 220.0, 440.0, 30.0, 28.0, 36.0
    width = label_w + plot_w + 30.0
    height = top + row_h * max(1, len(rows)) + bottom
    parts = [_open(width, height, title)]
    if not rows:
        parts.append(f'<text x="10" y="{top + 12:.1f}">no measurements</text></svg>')
        return "".join(parts)
    lo, hi = _range([v for r in rows for v in (r.min, r.max)], zero=True)
    axis = ticks(lo, hi)
    lo, hi = axis[0], axis[-1]

    def x(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    parts.append(
        f'<text x="{label_w:.1f}" y="14">box: p50–p95 · whiskers: min–max · tick: p99 · dot: mean ({_e(unit)})</text>'
    )
    y_axis = top + row_h * len(rows)
    for t in axis:
        parts.append(
            f'<line x1="{x(t):.1f}" y1="{top:.1f}" x2="{x(t):.1f}" y2="{y_axis:.1f}" stroke="#d0d7de"/>'
            f'<text x="{x(t):.1f}" y="{y_axis + 16:.1f}" text-anchor="middle">{fmt_num(t)}</text>'
        )
    for i, r in enumerate(rows):
        mid = top + row_h * i + row_h / 2
        c = "#2da44e" if r.highlight else colour(0)
        weight = ' font-weight="bold"' if r.highlight else ""
        parts.append(f'<text x="0" y="{mid + 4:.1f}"{weight}>{_e(r.label)}</text>')
        parts.append(
            f'<line x1="{x(r.min):.1f}" y1="{mid:.1f}" x2="{x(r.max):.1f}" y2="{mid:.1f}" stroke="{c}"/>'
            f'<line x1="{x(r.min):.1f}" y1="{mid - 5:.1f}" x2="{x(r.min):.1f}" y2="{mid + 5:.1f}" stroke="{c}"/>'
            f'<line x1="{x(r.max):.1f}" y1="{mid - 5:.1f}" x2="{x(r.max):.1f}" y2="{mid + 5:.1f}" stroke="{c}"/>'
            f'<rect class="box" x="{x(r.p50):.1f}" y="{mid - 8:.1f}" width="{max(1.0, x(r.p95) - x(r.p50)):.1f}" '
            f'height="16" fill="{c}" fill-opacity="0.35" stroke="{c}"/>'
            f'<line x1="{x(r.p50):.1f}" y1="{mid - 8:.1f}" x2="{x(r.p50):.1f}" y2="{mid + 8:.1f}" stroke="{c}" '
            'stroke-width="2"/>'
            f'<line x1="{x(r.p99):.1f}" y1="{mid - 6:.1f}" x2="{x(r.p99):.1f}" y2="{mid + 6:.1f}" stroke="#1b1f24"/>'
            f'<circle cx="{x(r.mean):.1f}" cy="{mid:.1f}" r="2.5" fill="#1b1f24"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------- line chart


class Series(msgspec.Struct, frozen=True):
    name: str
    points: list[tuple[float, float]]  # (x, y), in x order
    dashed: bool = False


def line_chart(
    series: Sequence[Series], title: str, x_label: str, y_label: str, zero: bool = True, log_y: bool = False
) -> str:
    left, plot_w, right, top, plot_h, bottom = 64.0, 420.0, 170.0, 30.0, 200.0, 44.0
    width, height = left + plot_w + right, top + plot_h + bottom
    parts = [
        _open(width, height, title),
        f'<text x="{left:.1f}" y="16" font-weight="bold">{_e(title)}</text>',
    ]
    pts = [p for s in series for p in s.points]
    if not pts:
        parts.append(f'<text x="{left:.1f}" y="{top + 20:.1f}">no data yet</text></svg>')
        return "".join(parts)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    whole = all(float(x).is_integer() for x in xs)
    x_lo, x_hi = _range(xs, zero=False)
    if whole and x_hi - x_lo < 1:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = _range(ys, zero=zero)
    y_axis = ticks(y_lo, y_hi)
    y_lo, y_hi = y_axis[0], y_axis[-1]
    x_axis = ticks(x_lo, x_hi, 6, integer=whole)
    x_lo, x_hi = x_axis[0], x_axis[-1]

    def px(v: float) -> float:
        return left + plot_w * (v - x_lo) / (x_hi - x_lo)

    def py(v: float) -> float:
        return top + plot_h - plot_h * (v - y_lo) / (y_hi - y_lo)

    for t in y_axis:
        parts.append(
            f'<line x1="{left:.1f}" y1="{py(t):.1f}" x2="{left + plot_w:.1f}" y2="{py(t):.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">{fmt_num(t)}</text>'
        )
    for t in x_axis:
        parts.append(
            f'<text x="{px(t):.1f}" y="{top + plot_h + 16:.1f}" text-anchor="middle">{fmt_num(t)}</text>'
        )
    parts.append(
        f'<line x1="{left:.1f}" y1="{top + plot_h:.1f}" x2="{left + plot_w:.1f}" y2="{top + plot_h:.1f}" '
        f'stroke="#57606a"/><line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{top + plot_h:.1f}" '
        f'stroke="#57606a"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6:.1f}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_e(y_label)}</text>'
    )
    for i, s in enumerate(series):
        c = colour(i)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        if len(s.points) > 1:
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in s.points)
            parts.append(
                f'<polyline class="line" points="{path}" fill="none" stroke="{c}" stroke-width="2"{dash}/>'
            )
        for a, b in s.points:
            parts.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{c}"/>')
        ly = top + 10 + 18 * i
        parts.append(
            f'<line x1="{left + plot_w + 12:.1f}" y1="{ly:.1f}" x2="{left + plot_w + 32:.1f}" y2="{ly:.1f}" '
            f'stroke="{c}" stroke-width="2"{dash}/>'
            f'<text x="{left + plot_w + 36:.1f}" y="{ly + 4:.1f}">{_e(s.name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------- scatter


class Point(msgspec.Struct, frozen=True):
    x: float
    y: float
    label: str
    front: bool = False
    knee: bool = False


def scatter(points: Sequence[Point], title: str, x_label: str, y_label: str) -> str:
    """Every point grey, the Pareto front in colour joined by a line, the knee point ringed and named."""
    left, plot_w, right, top, plot_h, bottom = 64.0, 420.0, 170.0, 30.0, 220.0, 44.0
    width, height = left + plot_w + right, top + plot_h + bottom
    parts = [
        _open(width, height, title),
        f'<text x="{left:.1f}" y="16" font-weight="bold">{_e(title)}</text>',
    ]
    if not points:
        parts.append(f'<text x="{left:.1f}" y="{top + 20:.1f}">no points</text></svg>')
        return "".join(parts)
    x_axis = ticks(*_range([p.x for p in points], zero=False))
    y_axis = ticks(*_range([p.y for p in points], zero=False))

    def px(v: float) -> float:
        return left + plot_w * (v - x_axis[0]) / (x_axis[-1] - x_axis[0])

    def py(v: float) -> float:
        return top + plot_h - plot_h * (v - y_axis[0]) / (y_axis[-1] - y_axis[0])

    for t in y_axis:
        parts.append(
            f'<line x1="{left:.1f}" y1="{py(t):.1f}" x2="{left + plot_w:.1f}" y2="{py(t):.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end">{fmt_num(t)}</text>'
        )
    for t in x_axis:
        parts.append(
            f'<text x="{px(t):.1f}" y="{top + plot_h + 16:.1f}" text-anchor="middle">{fmt_num(t)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6:.1f}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{_e(y_label)}</text>'
    )
    front = sorted((p for p in points if p.front), key=lambda p: (p.x, p.y))
    if len(front) > 1:
        path = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in front)
        parts.append(
            f'<polyline class="line" points="{path}" fill="none" stroke="{colour(0)}" stroke-width="1.5"/>'
        )
    for p in points:
        fill = colour(0) if p.front else "#afb8c1"
        parts.append(
            f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="4" fill="{fill}"><title>{_e(p.label)}</title></circle>'
        )
        if p.knee:
            parts.append(
                f'<circle cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="8" fill="none" stroke="{colour(1)}" stroke-width="2"/>'
                f'<text x="{px(p.x) + 10:.1f}" y="{py(p.y) - 8:.1f}">knee: {_e(p.label)}</text>'
            )
    lx = left + plot_w + 12
    parts.append(
        f'<circle cx="{lx + 6:.1f}" cy="{top + 10:.1f}" r="4" fill="{colour(0)}"/>'
        f'<text x="{lx + 16:.1f}" y="{top + 14:.1f}">Pareto front</text>'
        f'<circle cx="{lx + 6:.1f}" cy="{top + 28:.1f}" r="4" fill="#afb8c1"/>'
        f'<text x="{lx + 16:.1f}" y="{top + 32:.1f}">dominated</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
