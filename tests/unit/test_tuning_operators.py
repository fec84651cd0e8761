"""GA operators: children within bounds, valid categories, no duplicates, determinism by seed, and an
evolution that converges on known landscapes (single objective and NSGA-II)."""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cvops.tuning.evolution import TrialOutcome, best_trial, front, generation_progress, propose
from cvops.tuning.nsga2 import dominates, oriented
from cvops.tuning.operators import (
    breed,
    crossover,
    initial_population,
    mutate,
    mutation_step,
    rng_for,
    tournament,
)
from cvops.tuning.space import FloatGene, SearchSpace, default_genome, genome_key, in_space, parse_space

MIXED = parse_space(
    {
        "x": {"type": "float", "low": -5.0, "high": 5.0, "default": 3.0},
        "y": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "default": 0.5},
        "n": {"type": "int", "low": 0, "high": 7, "default": 4},
        "c": {"type": "categorical", "choices": ["a", "b", "c", 1, 2.5], "default": "b"},
        "f": {"type": "bool", "default": False},
    },
    hyperparameters=False,
)


def _fit(g: dict[str, Any]) -> float:  # best at x = 1, y = 1e-2, n = 2, c = "a", f = True
    return -(
        (g["x"] - 1) ** 2
        + abs(math.log10(g["y"]) + 2)
        + abs(g["n"] - 2)
        + (0 if g["c"] == "a" else 1)
        + (0 if g["f"] else 1)
    )


genomes = st.fixed_dictionaries(
    {
        "x": st.floats(-5.0, 5.0),
        "y": st.floats(1e-4, 1.0),
        "n": st.integers(0, 7),
        "c": st.sampled_from(["a", "b", "c", 1, 2.5]),
        "f": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(a=genomes, b=genomes, seed=st.integers(0, 2**32 - 1), step=st.floats(0.0, 1.0), alpha=st.floats(0, 1))
def test_children_stay_in_the_space(a: dict, b: dict, seed: int, step: float, alpha: float) -> None:
    rng = random.Random(seed)
    child = crossover(a, b, MIXED, rng, alpha)
    assert in_space(MIXED, child)
    assert in_space(MIXED, mutate(child, MIXED, rng, step))
    for name in ("c", "f"):  # uniform crossover: categories and bools come from a parent
        assert child[name] in (a[name], b[name])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 24), gens=st.integers(1, 4))
def test_proposals_are_valid_unique_and_seeded(seed: int, size: int, gens: int) -> None:
    def run() -> list[TrialOutcome]:
        trials: list[TrialOutcome] = []
        for g in range(gens):
            for i, genes in enumerate(propose(MIXED, trials, seed=seed, generation=g, size=size)):
                trials.append(
                    TrialOutcome(generation=g, index=i, genes=genes, values={"accuracy": _fit(genes)})
                )
        return trials

    trials = run()
    assert len(trials) == size * gens
    assert all(in_space(MIXED, t.genes) for t in trials)
    assert len({genome_key(t.genes) for t in trials}) == len(trials)  # no genome is ever tried twice
    assert trials == run()  # the same seed proposes the same genomes in the same order


def test_each_proposal_depends_only_on_its_own_index() -> None:
    parents = initial_population(MIXED, 6, seed=1)
    scores = [_fit(g) for g in parents]
    eight = breed(parents, scores, MIXED, seed=1, generation=3, n=8)
    assert eight[:4] == breed(parents, scores, MIXED, seed=1, generation=3, n=4)
    assert breed(parents, scores, MIXED, seed=1, generation=3, n=4, first_index=4) == eight[4:]
    assert eight != breed(parents, scores, MIXED, seed=2, generation=3, n=8)
    assert eight != breed(parents, scores, MIXED, seed=1, generation=4, n=8)
    assert rng_for(1, 2, 3).random() == rng_for(1, 2, 3).random() != rng_for(1, 2, 4).random()


def test_generation_zero_starts_from_the_default_and_covers_each_range() -> None:
    pop = initial_population(MIXED, 10, seed=5)
    assert pop[0] == default_genome(MIXED)
    xs = sorted(g["x"] for g in pop[1:])  # Latin hypercube: one x per tenth of the range (bar the default's)
    cells = {int(x + 5.0) for x in xs}
    assert len(cells) == 9
    assert initial_population(MIXED, 10, seed=5, include_default=False)[0] != pop[0]


def test_tiny_discrete_space_is_not_an_endless_loop() -> None:
    space = parse_space({"f": {"type": "bool"}}, hyperparameters=False)
    pop = initial_population(space, 4, seed=0)  # only 2 genomes exist: duplicates are unavoidable
    assert len(pop) == 4 and {g["f"] for g in pop} == {True, False}
    assert len(breed(pop, [1, 2, 3, 4], space, seed=0, generation=1, n=3)) == 3


def test_tournament_picks_the_best_contender() -> None:
    rng = random.Random(0)
    assert tournament([0.1, 0.9], rng, k=64) == 1
    assert tournament([0.5], rng) == 0
    wins = [tournament([0.0, 1.0, 2.0, 3.0], rng, k=2) for _ in range(2000)]
    assert wins.count(3) > wins.count(2) > wins.count(1) > wins.count(0)  # selection pressure


def test_log_genes_mutate_in_their_own_scale() -> None:
    space = SearchSpace(genes={"y": FloatGene(low=1e-6, high=1.0, log=True, default=1e-3)})
    rng = random.Random(0)
    moved = [mutate({"y": 1e-3}, space, rng, step=0.05)["y"] for _ in range(2000)]
    decades = [abs(math.log10(v) + 3) for v in moved]
    assert max(decades) < 1.5  # a step is 5% of six decades, not of [0, 1] (which would jump to ~0.05)
    assert sum(v < 1e-3 for v in moved) > 800  # as likely down as up in log space


def test_mutation_step_shrinks_as_parents_converge() -> None:
    wide = initial_population(MIXED, 12, seed=3)
    narrow = [{**g, "x": 1.0 + 0.01 * i, "y": 0.01, "n": 2} for i, g in enumerate(wide)]
    assert mutation_step(wide, MIXED) == 0.25
    assert mutation_step(narrow, MIXED) == 0.02
    assert mutation_step(narrow[:1], MIXED) == 0.25


def test_evolution_improves_and_elitism_keeps_the_best() -> None:
    trials: list[TrialOutcome] = []
    best_by_gen: list[float] = []
    for g in range(12):
        for i, genes in enumerate(propose(MIXED, trials, seed=11, generation=g, size=8)):
            trials.append(TrialOutcome(generation=g, index=i, genes=genes, values={"accuracy": _fit(genes)}))
        best_by_gen.append(max(t.values["accuracy"] for t in trials))
    assert best_by_gen == generation_progress(trials, ["accuracy"])
    assert best_by_gen[-1] > best_by_gen[0] and best_by_gen[-1] > -0.6
    best = best_trial(trials)
    assert best is not None and best.values["accuracy"] == best_by_gen[-1]


def test_failed_and_pruned_trials_never_parent_nor_repeat() -> None:
    trials = [
        TrialOutcome(generation=0, index=i, genes=g, state="failed")
        for i, g in enumerate(initial_population(MIXED, 4, seed=0))
    ]
    nxt = propose(MIXED, trials, seed=0, generation=1, size=4)
    assert not {genome_key(g) for g in nxt} & {genome_key(t.genes) for t in trials}
    trials[0] = TrialOutcome(generation=0, index=0, genes=trials[0].genes, values={"accuracy": 0.5})
    trials[1] = TrialOutcome(
        generation=0, index=1, genes=trials[1].genes, state="pruned", values={"accuracy": 0.9}
    )
    assert best_trial(trials) == trials[0]


def test_multi_objective_evolution_returns_a_non_dominated_front() -> None:
    def values(g: dict[str, Any]) -> dict[str, float]:  # accuracy rises with x, latency too: a trade-off
        return {"accuracy": (g["x"] + 5) / 10 - 0.1 * abs(g["n"] - 2), "latency": 1 + (g["x"] + 5) ** 2}

    objectives = ["accuracy", "latency"]
    trials: list[TrialOutcome] = []
    for g in range(6):
        for i, genes in enumerate(
            propose(MIXED, trials, seed=4, generation=g, size=8, objectives=objectives)
        ):
            trials.append(TrialOutcome(generation=g, index=i, genes=genes, values=values(genes)))
    result = front(trials, objectives)  # type: ignore[arg-type]
    assert result is not None and len(result.trials) >= 3
    pts = [oriented(t.values, objectives) for t in result.trials]
    assert not any(dominates(p, q) for p in pts for q in pts)
    everyone = [oriented(t.values, objectives) for t in trials]
    assert all(not any(dominates(q, p) for q in everyone) for p in pts)
    assert 0 <= result.knee < len(result.trials)
    hv = generation_progress(trials, objectives)  # type: ignore[arg-type]
    assert hv == sorted(hv) and hv[-1] > hv[0]  # the front only grows


def test_a_resumed_evolution_proposes_what_it_proposed_before() -> None:
    """The actor rebuilds its trials from the log after a crash: a generation re-proposed from the
    trials of the earlier generations (its own half-finished trials included or not) is the same."""
    trials: list[TrialOutcome] = []
    proposed: list[list[dict[str, Any]]] = []
    for g in range(4):
        genomes = propose(MIXED, trials, seed=9, generation=g, size=6)
        proposed.append(genomes)
        for i, genes in enumerate(genomes):
            state = "pruned" if i == 5 else "failed" if i == 4 else "finished"
            trials.append(
                TrialOutcome(
                    generation=g, index=i, genes=genes, state=state, values={"accuracy": _fit(genes)}
                )
            )
    for g in range(4):
        crashed_mid_generation = [
            t for t in trials if t.generation < g or (t.generation == g and t.index < 3)
        ]
        assert propose(MIXED, crashed_mid_generation, seed=9, generation=g, size=6) == proposed[g]
