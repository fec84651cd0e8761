"""The genetic algorithm behind ``evolve`` jobs: pure, seeded, replayable.

A *search space* maps hyperparameter names (fields of :class:`cvops.ml.hyperparameters.Hyperparameters`) to
gene specs: ``{"type": "float", "low", "high", "log": bool}``, ``{"type": "int", "low", "high"}`` or
``{"type": "choice", "choices": [...]}``.  Generation 0 is sampled; each next generation keeps the
``elite`` best genomes and fills the rest with children of tournament-selected parents (uniform
crossover, then mutation).  Every random draw comes from ``rng_for(seed, generation)``, so the whole
run is a pure function of the seed and the fitness values: a resumed evolution rebuilds the same
populations from its recorded trials and never re-runs a finished one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from cvops.errors import ValidationFailed
from cvops.ml.hyperparameters import Hyperparameters

Genome = dict[str, Any]
Space = dict[str, dict[str, Any]]

DEFAULT_SPACE: Space = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "optimizer": {"type": "choice", "choices": ["sgd", "adam", "adamw"]},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
    "batch_size": {"type": "choice", "choices": [16, 32, 64]},
    "epochs": {"type": "choice", "choices": [3]},
}


def parse_space(raw: Mapping[str, Any] | None) -> Space:
    """Validate a search space (empty or None = :data:`DEFAULT_SPACE`)."""
    if not raw:
        raw = DEFAULT_SPACE
    allowed = set(Hyperparameters.__struct_fields__)
    space: Space = {}
    for name, spec in raw.items():
        field = f"search_space.{name}"
        if name not in allowed:
            raise ValidationFailed(
                f"{name!r} is not a hyperparameter", {"field": field, "allowed": sorted(allowed)}
            )
        if not isinstance(spec, Mapping):
            raise ValidationFailed(f"{name}: a gene spec must be an object", {"field": field})
        kind = spec.get("type")
        if kind in ("float", "int"):
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, int | float) or not isinstance(high, int | float) or low > high:
                raise ValidationFailed(f"{name}: needs numeric low <= high", {"field": field})
            if spec.get("log") and low <= 0:
                raise ValidationFailed(f"{name}: a log scale needs low > 0", {"field": field})
            space[name] = {"type": kind, "low": low, "high": high, "log": bool(spec.get("log", False))}
        elif kind == "choice":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValidationFailed(f"{name}: choices must be a non-empty list", {"field": field})
            space[name] = {"type": "choice", "choices": list(choices)}
        else:
            raise ValidationFailed(f"{name}: type must be float, int or choice", {"field": field})
    return space


def rng_for(seed: int, generation: int) -> random.Random:
    return random.Random(f"cvops-ga:{seed}:{generation}")


def _sample_gene(spec: Mapping[str, Any], rng: random.Random) -> Any:
    if spec["type"] == "choice":
        return rng.choice(spec["choices"])
    low, high = spec["low"], spec["high"]
    if spec["type"] == "int":
        return rng.randint(int(low), int(high))
    if spec.get("log"):
        return float(min(high, max(low, math.exp(rng.uniform(math.log(low), math.log(high))))))
    return float(rng.uniform(low, high))


def sample(space: Space, rng: random.Random) -> Genome:
    return {name: _sample_gene(spec, rng) for name, spec in sorted(space.items())}


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome:
    """Uniform crossover: each gene from either parent with probability 1/2."""
    return {k: (a[k] if rng.random() < 0.5 else b[k]) for k in sorted(a)}


def mutate(g: Genome, space: Space, rng: random.Random, rate: float = 0.3, scale: float = 0.2) -> Genome:
    """Each gene mutates with probability ``rate``: numbers take a Gaussian step of ``scale`` of their
    range (in log space for log genes), clipped to the bounds; choices are re-drawn."""
    out = dict(g)
    for name in sorted(space):
        spec = space[name]
        if rng.random() >= rate:
            continue
        if spec["type"] == "choice":
            out[name] = rng.choice(spec["choices"])
            continue
        low, high = spec["low"], spec["high"]
        if spec.get("log"):
            lo, hi = math.log(low), math.log(high)
            v = math.log(max(low, float(out[name]))) + rng.gauss(0.0, scale * (hi - lo))
            out[name] = float(min(high, max(low, math.exp(v))))
        else:
            v = float(out[name]) + rng.gauss(0.0, scale * (high - low))
            v = min(high, max(low, v))
            out[name] = int(round(v)) if spec["type"] == "int" else float(v)
    return out


def tournament(fitness: Sequence[float], rng: random.Random, k: int = 3) -> int:
    """Index of the fittest of ``k`` random contenders (ties: the lower index)."""
    contenders = [rng.randrange(len(fitness)) for _ in range(min(k, len(fitness)))]
    return min(contenders, key=lambda i: (-fitness[i], i))


def initial_population(space: Space, size: int, seed: int) -> list[Genome]:
    rng = rng_for(seed, 0)
    return [sample(space, rng) for _ in range(size)]


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
    """Generation ``generation`` from the previous one and its fitness (elitism + children)."""
    if len(population) != len(fitness) or not population:
        raise ValueError("population and fitness must be non-empty and of equal length")
    rng = rng_for(seed, generation)
    order = sorted(range(len(population)), key=lambda i: (-fitness[i], i))
    nxt = [dict(population[i]) for i in order[: max(0, min(elite, len(population)))]]
    while len(nxt) < len(population):
        a = population[tournament(fitness, rng)]
        b = population[tournament(fitness, rng)]
        nxt.append(mutate(crossover(a, b, rng), space, rng, mutation_rate))
    return nxt
