"""The GA's operators: pure functions of a space, genomes, scores and a seeded RNG.

Every proposal ``index`` of generation ``generation`` draws from its own :func:`rng_for` ``(seed,
generation, index)``, so the same seed proposes the same genomes in the same order, and a resumed run
that re-proposes one generation gets exactly the genomes it had before.

* :func:`initial_population`: the default genome first (the baseline a user would train by hand), then a
  Latin-hypercube sample (every gene's range is covered in equal strata);
* :func:`tournament`: the best of ``k`` random contenders by score (higher is better);
* :func:`crossover`: BLX-α for numbers (in the gene's own scale), uniform for categories and bools;
* :func:`mutate`: a Gaussian step in the unit cube (log genes in log space), categories re-drawn among the
  others, bools flipped; :func:`mutation_step` shrinks the step as the parents converge;
* :func:`breed`: children of tournament-selected parents, never a duplicate of ``exclude`` or of each
  other (elitism is the caller's survival step: see :mod:`cvops.tuning.evolution`).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cvops.tuning.space import (
    BoolGene,
    CategoricalGene,
    FloatGene,
    Genome,
    IntGene,
    SearchSpace,
    default_genome,
    from_unit,
    genome_key,
    to_unit,
)

MAX_ATTEMPTS = 64  # tries for a child that is not a duplicate before a fresh random sample is tried


def rng_for(seed: int, generation: int, index: int) -> random.Random:
    """The RNG of proposal ``index`` of ``generation`` (index -1: the generation's shared draws)."""
    return random.Random(f"cvops-tuning:{seed}:{generation}:{index}")


def _reflect(u: float) -> float:
    """``u`` folded back into [0, 1] (a step past a bound bounces instead of piling up on it)."""
    return 1.0 - abs((u % 2.0) - 1.0)


def _value_at(space: SearchSpace, name: str, u: float) -> Any:
    gene = space.genes[name]
    if isinstance(gene, FloatGene):
        return float(from_unit(gene, u))
    if isinstance(gene, IntGene):
        return int(from_unit(gene, u))
    if isinstance(gene, CategoricalGene):
        return gene.choices[min(len(gene.choices) - 1, int(u * len(gene.choices)))]
    return u >= 0.5


def sample_genome(space: SearchSpace, rng: random.Random) -> Genome:
    """A uniform draw (in each gene's own scale)."""
    return {name: _value_at(space, name, rng.random()) for name in space.names()}


def initial_population(
    space: SearchSpace,
    size: int,
    seed: int,
    *,
    include_default: bool = True,
    exclude: Iterable[Mapping[str, Any]] = (),
) -> list[Genome]:
    """Generation 0: the default genome (if ``include_default``), then a Latin-hypercube sample; no
    duplicates (of each other or of ``exclude``) unless the space has fewer genomes than ``size``."""
    names = space.names()
    shared = rng_for(seed, 0, -1)
    strata = {name: shared.sample(range(size), size) for name in names}
    seen = {genome_key(g) for g in exclude}
    out: list[Genome] = []
    for i in range(size):
        rng = rng_for(seed, 0, i)
        if i == 0 and include_default:
            candidate = default_genome(space)
        else:
            candidate = {
                name: _value_at(space, name, (strata[name][i] + rng.random()) / size) for name in names
            }
        for _ in range(MAX_ATTEMPTS):
            if genome_key(candidate) not in seen:
                break
            candidate = sample_genome(space, rng)
        seen.add(genome_key(candidate))
        out.append(candidate)
    return out


def tournament(scores: Sequence[float], rng: random.Random, k: int = 2) -> int:
    """Index of the best of ``k`` random contenders (higher score wins; ties: the lower index)."""
    if not scores:
        raise ValueError("a tournament needs contenders")
    contenders = [rng.randrange(len(scores)) for _ in range(max(1, k))]
    return min(contenders, key=lambda i: (-scores[i], i))


def crossover(
    a: Mapping[str, Any], b: Mapping[str, Any], space: SearchSpace, rng: random.Random, alpha: float = 0.5
) -> Genome:
    """BLX-α for numeric genes (a uniform draw in the parents' interval widened by ``alpha`` of its width
    on each side, in the unit cube, reflected into the bounds); uniform for categories and bools."""
    child: Genome = {}
    for name in space.names():
        gene = space.genes[name]
        if isinstance(gene, FloatGene | IntGene):
            ua, ub = to_unit(gene, a[name]), to_unit(gene, b[name])
            lo, hi = min(ua, ub), max(ua, ub)
            width = hi - lo
            child[name] = _value_at(
                space, name, _reflect(rng.uniform(lo - alpha * width, hi + alpha * width))
            )
        else:
            child[name] = a[name] if rng.random() < 0.5 else b[name]
    return child


def mutate(
    genome: Mapping[str, Any],
    space: SearchSpace,
    rng: random.Random,
    step: float,
    rate: float | None = None,
) -> Genome:
    """Each gene mutates with probability ``rate`` (default ``1 / len(genes)``), and at least one always
    does: a numeric gene moves by N(0, ``step``) in the unit cube (its own scale), reflected into its
    bounds; a category becomes another choice; a bool flips."""
    names = space.names()
    if not names:
        return dict(genome)
    p = 1.0 / len(names) if rate is None else rate
    forced = rng.randrange(len(names))
    out = dict(genome)
    for i, name in enumerate(names):
        hit = rng.random() < p
        if not (hit or i == forced):
            continue
        gene = space.genes[name]
        if isinstance(gene, FloatGene | IntGene):
            out[name] = _value_at(space, name, _reflect(to_unit(gene, out[name]) + rng.gauss(0.0, step)))
        elif isinstance(gene, CategoricalGene):
            others = [c for c in gene.choices if not (type(c) is type(out[name]) and c == out[name])]
            if others:
                out[name] = rng.choice(others)
        elif isinstance(gene, BoolGene):
            out[name] = not out[name]
    return out


def mutation_step(
    parents: Sequence[Mapping[str, Any]], space: SearchSpace, *, base: float = 0.25, floor: float = 0.02
) -> float:
    """The mutation step (a standard deviation in the unit cube): twice the parents' mean spread (standard
    deviation) per numeric gene, clipped to [``floor``, ``base``]: wide while they are diverse, small
    once they converge."""
    numeric = [n for n in space.names() if isinstance(space.genes[n], FloatGene | IntGene)]
    if len(parents) < 2 or not numeric:
        return base
    spreads = []
    for name in numeric:
        gene = space.genes[name]
        assert isinstance(gene, FloatGene | IntGene)
        spreads.append(statistics.pstdev(to_unit(gene, p[name]) for p in parents))
    return min(base, max(floor, 2.0 * math.fsum(spreads) / len(spreads)))


def breed(
    parents: Sequence[Mapping[str, Any]],
    scores: Sequence[float],
    space: SearchSpace,
    *,
    seed: int,
    generation: int,
    n: int,
    exclude: Iterable[Mapping[str, Any]] = (),
    first_index: int = 0,
    crossover_rate: float = 0.9,
    alpha: float = 0.5,
    step: float | None = None,
    mutation_rate: float | None = None,
    tournament_size: int = 2,
) -> list[Genome]:
    """``n`` children of ``parents`` (higher ``scores`` are fitter): tournament, crossover (with
    probability ``crossover_rate``), then mutation.  Child ``i`` draws only from ``rng_for(seed,
    generation, first_index + i)``.  A child that duplicates ``exclude``, a parent or an earlier child is
    re-drawn with a growing step, then sampled afresh; duplicates remain only when the space is exhausted.
    ``mutation_rate``: see :func:`mutate`; ``step``: default :func:`mutation_step` of the parents."""
    if len(parents) != len(scores) or not parents:
        raise ValueError("parents and scores must be non-empty and of equal length")
    seen = {genome_key(g) for g in exclude} | {genome_key(p) for p in parents}
    base_step = mutation_step(parents, space) if step is None else step
    children: list[Genome] = []
    for i in range(n):
        rng = rng_for(seed, generation, first_index + i)
        child: Genome = {}
        for attempt in range(2 * MAX_ATTEMPTS):
            if attempt < MAX_ATTEMPTS:
                a = parents[tournament(scores, rng, tournament_size)]
                b = parents[tournament(scores, rng, tournament_size)]
                child = crossover(a, b, space, rng, alpha) if rng.random() < crossover_rate else dict(a)
                child = mutate(child, space, rng, min(0.5, base_step * 1.25 ** (attempt // 4)), mutation_rate)
            else:
                child = sample_genome(space, rng)
            if genome_key(child) not in seen:
                break
        seen.add(genome_key(child))
        children.append(child)
    return children


def elites(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first (ties: the lower index)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[: max(0, k)]
