"""The genetic algorithm: seeded, bounded, elitist, and improving on a known fitness landscape."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvops.errors import ValidationFailed
from cvops.ga import (
    DEFAULT_SPACE,
    crossover,
    initial_population,
    mutate,
    next_generation,
    parse_space,
    rng_for,
    tournament,
)


def _fit(g: dict) -> float:  # best at lr = 1e-2, adam, no label smoothing
    return -abs(math.log10(g["lr"]) + 2) - (0 if g["optimizer"] == "adam" else 0.5) - g["label_smoothing"]


def test_same_seed_same_run_different_seed_different() -> None:
    space = parse_space(None)
    a = initial_population(space, 8, seed=1)
    assert a == initial_population(space, 8, seed=1)
    assert a != initial_population(space, 8, seed=2)
    f = [_fit(g) for g in a]
    assert next_generation(a, f, space, 1, 1) == next_generation(a, f, space, 1, 1)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(2, 12))
def test_genes_stay_in_bounds_and_elite_survives(seed: int, size: int) -> None:
    space = parse_space(None)
    pop = initial_population(space, size, seed)
    for gen in range(1, 4):
        fit = [_fit(g) for g in pop]
        best = pop[max(range(size), key=lambda i: (fit[i], -i))]
        pop = next_generation(pop, fit, space, seed, gen)
        assert len(pop) == size and pop[0] == best  # elitism keeps the best
        for g in pop:
            assert 1e-4 <= g["lr"] <= 1e-1 and 0.0 <= g["label_smoothing"] <= 0.2
            assert g["optimizer"] in ("sgd", "adam", "adamw") and g["batch_size"] in (16, 32, 64)


def test_evolution_improves_fitness() -> None:
    space = parse_space(None)
    pop = initial_population(space, 12, seed=7)
    first = max(_fit(g) for g in pop)
    for gen in range(1, 15):
        pop = next_generation(pop, [_fit(g) for g in pop], space, 7, gen)
    assert max(_fit(g) for g in pop) > first
    assert max(_fit(g) for g in pop) > -0.3


def test_operators() -> None:
    rng = rng_for(0, 0)
    a = {"lr": 0.001, "optimizer": "sgd"}
    b = {"lr": 0.01, "optimizer": "adam"}
    child = crossover(a, b, rng)
    assert child["lr"] in (0.001, 0.01) and child["optimizer"] in ("sgd", "adam")
    space = parse_space(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "optimizer": {"type": "choice", "choices": ["sgd", "adam"]},
        }
    )
    m = mutate(a, space, rng, rate=1.0)
    assert 1e-4 <= m["lr"] <= 1e-1
    assert tournament([0.1, 0.9, 0.5], rng, k=3) in (0, 1, 2)
    assert tournament([0.1, 0.9], rng, k=50) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"nonsense": {"type": "float", "low": 0, "high": 1}},
        {"lr": {"type": "float", "low": 1, "high": 0}},
        {"lr": {"type": "float", "low": 0, "high": 1, "log": True}},
        {"optimizer": {"type": "choice", "choices": []}},
        {"lr": {"type": "gaussian"}},
        {"lr": 3},
    ],
)
def test_bad_spaces(bad: dict) -> None:
    with pytest.raises(ValidationFailed):
        parse_space(bad)


def test_default_space_is_valid() -> None:
    assert parse_space(DEFAULT_SPACE) == parse_space(None)
