"""NSGA-II and the Pareto front, pure: non-dominated sorting, crowding distance, selection, knee, hypervolume.

Points are tuples of objective values.  Every function here *minimises*; :func:`oriented` turns named
objectives into that form (accuracy is maximised, so it is negated; latency and size are minimised).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

Objective = Literal["accuracy", "latency", "size"]
MAXIMISED: frozenset[str] = frozenset({"accuracy"})
Point = Sequence[float]


def oriented(values: Mapping[str, float], objectives: Sequence[str]) -> tuple[float, ...]:
    """The point to minimise for ``values`` (maximised objectives negated)."""
    return tuple(-values[o] if o in MAXIMISED else values[o] for o in objectives)


def dominates(a: Point, b: Point) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (minimisation)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Fronts of indices, best first (Deb's fast non-dominated sort); indices ascend within a front."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by[i].append(j)
                count[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by[j].append(i)
                count[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(sorted(current))
        nxt: list[int] = []
        for i in current:
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current = nxt
    return fronts


def crowding_distance(points: Sequence[Point], front: Sequence[int]) -> dict[int, float]:
    """Crowding distance of each index of ``front``: the boundary points of every objective get infinity,
    the others the sum over objectives of the normalised gap between their two neighbours."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: (points[i][m], i))
        lo, hi = points[ordered[0]][m], points[ordered[-1]][m]
        dist[ordered[0]] = dist[ordered[-1]] = math.inf
        if hi == lo:
            continue
        for k in range(1, len(ordered) - 1):
            dist[ordered[k]] += (points[ordered[k + 1]][m] - points[ordered[k - 1]][m]) / (hi - lo)
    return dist


def crowded_order(points: Sequence[Point]) -> list[int]:
    """All indices by NSGA-II's crowded comparison: lower front first, then larger crowding distance."""
    order: list[int] = []
    for front in non_dominated_sort(points):
        dist = crowding_distance(points, front)
        order.extend(sorted(front, key=lambda i: (-dist[i], i)))
    return order


def selection_scores(points: Sequence[Point]) -> list[float]:
    """A score per point for tournaments (higher is better), consistent with :func:`crowded_order`."""
    scores = [0.0] * len(points)
    for position, i in enumerate(crowded_order(points)):
        scores[i] = -float(position)
    return scores


def nsga2_select(points: Sequence[Point], k: int) -> list[int]:
    """NSGA-II survival: whole fronts while they fit, the last one cut by crowding distance (the ``k``
    first of :func:`crowded_order`)."""
    return crowded_order(points)[: max(0, k)]


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept)."""
    fronts = non_dominated_sort(points)
    return fronts[0] if fronts else []


def knee_point(points: Sequence[Point]) -> int:
    """Index (into ``points``, a front) of the knee: objectives normalised to [0, 1] over the front, the
    point farthest below the line joining the two extremes in 2-D; in other dimensions (or a degenerate
    front) the point closest to the ideal point.  Ties: the lower index."""
    if not points:
        raise ValueError("a knee needs points")
    dims = len(points[0])
    lo = [min(p[m] for p in points) for m in range(dims)]
    hi = [max(p[m] for p in points) for m in range(dims)]
    norm = [[(p[m] - lo[m]) / (hi[m] - lo[m]) if hi[m] > lo[m] else 0.0 for m in range(dims)] for p in points]
    if dims == 2 and len(points) > 2:
        a = min(range(len(norm)), key=lambda i: (norm[i][0], norm[i][1], i))  # best in objective 0
        b = min(range(len(norm)), key=lambda i: (norm[i][1], norm[i][0], i))  # best in objective 1
        (x1, y1), (x2, y2) = norm[a], norm[b]
        length = math.hypot(x2 - x1, y2 - y1)
        if length > 0:
            # signed distance below the chord (towards the ideal point (0, 0)) is positive
            def below(i: int) -> float:
                x, y = norm[i]
                return ((x2 - x1) * (y1 - y) - (x1 - x) * (y2 - y1)) / length

            return max(range(len(norm)), key=lambda i: (round(below(i), 12), -i))
    return min(range(len(norm)), key=lambda i: (round(math.fsum(v * v for v in norm[i]), 12), i))


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by ``points`` and bounded by ``reference`` (minimisation; points not strictly
    better than the reference in every objective add nothing).  Exact, by slicing: any dimension, meant
    for the small fronts of a tuning run (2-D and 3-D)."""
    pts = [tuple(p) for p in points if all(x < r for x, r in zip(p, reference, strict=True))]
    return _hv(pts, tuple(reference))


def _hv(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        volume, best_y = 0.0, ref[1]
        for x, y in sorted(points):
            if y < best_y:
                volume += (ref[0] - x) * (best_y - y)
                best_y = y
        return volume
    # slice along the last objective: between consecutive levels, the (d-1)-D volume of the points below
    ordered = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for k, p in enumerate(ordered):
        upper = ordered[k + 1][-1] if k + 1 < len(ordered) else ref[-1]
        if upper > p[-1]:
            volume += _hv([q[:-1] for q in ordered[: k + 1]], ref[:-1]) * (upper - p[-1])
    return volume
