"""The genetic algorithm behind ``evolve`` jobs: the API the evolver actor calls, over :mod:`cvops.tuning`.

A *search space* maps hyperparameter names (fields of :class:`cvops.ml.hyperparameters.Hyperparameters`) to
gene specs: ``{"type": "float", "low", "high", "log": bool}``, ``{"type": "int", "low", "high"}``,
``{"type": "choice" | "categorical", "choices": [...]}`` or ``{"type": "bool"}`` (each may name a
``default``); :func:`parse_space` validates it (:func:`cvops.tuning.space.parse_space`).  Generation 0 is
the default genome plus a Latin-hypercube sample; each next generation keeps the ``elite`` best genomes and
fills the rest with children of tournament-selected parents (BLX-α / uniform crossover, then mutation in
each gene's own scale with a step that shrinks as the population converges), none a duplicate.  Every
random draw is seeded from (seed, generation, index), so the whole run is a pure function of the seed and
the fitness values: a resumed evolution rebuilds the same populations from its recorded trials and never
re-runs a finished one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from cvops.tuning import operators
from cvops.tuning.space import SearchSpace
from cvops.tuning.space import parse_space as _parse_space

Genome = dict[str, Any]
Space = SearchSpace

# what an evolve request without a search space searches (docs/api.md)
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "optimizer": {"type": "choice", "choices": ["sgd", "adam", "adamw"]},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "batch_size": {"type": "choice", "choices": [16, 32, 64]},
    "epochs": {"type": "choice", "choices": [3]},
}


def parse_space(raw: Mapping[str, Any] | None) -> Space:
    """Validate a search space (empty or None = :data:`DEFAULT_SPACE`); 422 naming the bad gene."""
    return _parse_space(raw or DEFAULT_SPACE)


def rng_for(seed: int, generation: int) -> random.Random:
    return random.Random(f"cvops-ga:{seed}:{generation}")


def sample(space: Space, rng: random.Random) -> Genome:
    return operators.sample_genome(space, rng)


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Uniform crossover: each gene from either parent with probability 1/2."""
    return {k: (a[k] if rng.random() < 0.5 else b[k]) for k in sorted(a)}


def mutate(g: Genome, space: Space, rng: random.Random, rate: float = 0.3, scale: float = 0.2) -> Genome:
    """Each gene mutates with probability ``rate`` (at least one does): numbers take a Gaussian step of
    ``scale`` of their range in their own scale (log genes in log space), within the bounds; choices
    change."""
    return operators.mutate(g, space, rng, step=scale, rate=rate)


def tournament(fitness: Sequence[float], rng: random.Random, k: int = 3) -> int:
    """Index of the fittest of ``k`` random contenders (ties: the lower index)."""
    return operators.tournament(fitness, rng, k)


def initial_population(space: Space, size: int, seed: int) -> list[Genome]:
    return operators.initial_population(space, size, seed)


def next_generation(
    population: Sequence[Genome],
    fitness: Sequence[float],
    space: Space,
    seed: int,
    generation: int,
    *,
    elite: int = 1,
    mutation_rate: float = 0.3,
) -> list[Genome]:
    """Generation ``generation`` from the previous one and its fitness: the ``elite`` best first, then
    children that duplicate no genome of the previous generation nor each other."""
    if len(population) != len(fitness) or not population:
        raise ValueError("population and fitness must be non-empty and of equal length")
    keep = [dict(population[i]) for i in operators.elites(fitness, min(elite, len(population)))]
    children = operators.breed(
        population,
        fitness,
        space,
        seed=seed,
        generation=generation,
        n=len(population) - len(keep),
        mutation_rate=mutation_rate,
    )
    return keep + children
