"""NSGA-II against hand-computed fronts, crowding distances, knee points and hypervolumes."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvops.tuning.nsga2 import (
    crowded_order,
    crowding_distance,
    dominates,
    hypervolume,
    knee_point,
    non_dominated_sort,
    nsga2_select,
    oriented,
    pareto_front,
    selection_scores,
)

#        0       1       2       3       4       5
PTS = [(1, 5), (2, 3), (4, 1), (3, 4), (5, 5), (4, 2)]
LINE = [(0, 4), (1, 2), (3, 1), (4, 0)]  # a front; (1, 2) bulges towards the ideal point


def test_dominance() -> None:
    assert dominates((1, 1), (1, 2)) and not dominates((1, 2), (1, 2)) and not dominates((1, 3), (2, 1))


def test_fronts_by_hand() -> None:
    assert non_dominated_sort(PTS) == [[0, 1, 2], [3, 5], [4]]
    assert pareto_front(PTS) == [0, 1, 2]
    assert non_dominated_sort([]) == []
    assert non_dominated_sort([(1, 1), (1, 1)]) == [[0, 1]]  # equal points do not dominate each other


def test_crowding_by_hand() -> None:
    assert crowding_distance(PTS, [0, 1, 2]) == {0: math.inf, 1: 3 / 3 + 4 / 4, 2: math.inf}
    d = crowding_distance(LINE, [0, 1, 2, 3])
    assert d[0] == d[3] == math.inf
    assert d[1] == pytest.approx(3 / 4 + 3 / 4) and d[2] == pytest.approx(2 / 4 + 3 / 4)
    assert crowding_distance(PTS, [3, 5]) == {3: math.inf, 5: math.inf}


def test_selection_fills_fronts_then_cuts_by_crowding() -> None:
    pts = [*LINE, (5, 5)]
    assert crowded_order(pts) == [0, 3, 1, 2, 4]
    assert nsga2_select(pts, 3) == [0, 3, 1]
    assert nsga2_select(PTS, 4) == [0, 2, 1, 3]  # front 1 whole, then front 2's first by crowding/index
    scores = selection_scores(pts)
    assert sorted(range(5), key=lambda i: -scores[i]) == [0, 3, 1, 2, 4]


def test_objectives_are_oriented_for_minimisation() -> None:
    assert oriented({"accuracy": 0.9, "latency": 3.0, "size": 5.0}, ["accuracy", "latency", "size"]) == (
        -0.9,
        3.0,
        5.0,
    )


def test_knee_by_hand() -> None:
    assert knee_point(LINE) == 1  # normalised (.25, .5): the farthest below the chord x + y = 1
    assert knee_point([(0, 1), (1, 0)]) == 0  # two points: the closest to the ideal (a tie: the first)
    assert (
        knee_point([(0, 1, 1), (1, 0, 1), (1, 1, 0), (0.3, 0.3, 0.3)]) == 3
    )  # 3-D: the closest to the ideal
    assert knee_point([(2, 2)]) == 0


def test_hypervolume_by_hand() -> None:
    assert hypervolume(LINE, (5, 5)) == 5 * 1 + 4 * 2 + 2 * 1 + 1 * 1
    assert hypervolume([*LINE, (2, 3), (5, 1)], (5, 5)) == 16  # dominated / on-the-reference add nothing
    assert hypervolume([], (1, 1)) == 0.0
    assert hypervolume([(1, 1, 1)], (2, 2, 2)) == 1
    assert hypervolume([(0, 0, 1), (1, 1, 0)], (2, 2, 2)) == 4 + 2 - 1
    assert hypervolume([(1, 0, 0), (0, 1, 0), (0, 0, 1)], (2, 2, 2)) == 3 * 4 - 3 * 2 + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=12), st.floats(0, 1))
def test_hypervolume_3d_slices_agree_with_2d(pts: list[tuple[float, float]], z: float) -> None:
    flat = hypervolume(pts, (1.0, 1.0))
    assert hypervolume([(x, y, 0.0) for x, y in pts], (1.0, 1.0, 1.0)) == pytest.approx(flat)
    assert hypervolume([(x, y, z) for x, y in pts], (1.0, 1.0, 1.0)) == pytest.approx(flat * (1 - z))
    front = [pts[i] for i in pareto_front(pts)]
    assert hypervolume(front, (1.0, 1.0)) == pytest.approx(flat)  # only the front counts


def test_hypervolume_3d_against_monte_carlo() -> None:
    rng = random.Random(0)
    pts = [(rng.random(), rng.random(), rng.random()) for _ in range(8)]
    n = 40000
    inside = 0
    for _ in range(n):
        q = (rng.random(), rng.random(), rng.random())
        inside += any(all(p[m] <= q[m] for m in range(3)) for p in pts)
    assert hypervolume(pts, (1, 1, 1)) == pytest.approx(inside / n, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), max_size=15))
def test_fronts_partition_and_respect_dominance(pts: list[tuple[int, int, int]]) -> None:
    fronts = non_dominated_sort(pts)
    assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
    rank = {i: r for r, f in enumerate(fronts) for i in f}
    for i in range(len(pts)):
        for j in range(len(pts)):
            if dominates(pts[i], pts[j]):
                assert rank[i] < rank[j]
        if rank[i] > 0:  # something in the front above dominates it
            assert any(dominates(pts[j], pts[i]) for j in fronts[rank[i] - 1])
