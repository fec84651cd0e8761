#!/usr/bin/env python
"""cvops' GA (``cvops.tuning``) against Optuna's TPE, random search and an ultralytics-style mutation tuner.

    nice python scripts/bench_evolver.py                      # everything, 10 seeds (a few minutes, CPU)
    nice python scripts/bench_evolver.py --skip-digits --seeds 20
    nice python scripts/bench_evolver.py --only digits --digits-trials 40 --digits-population 8  # ~6 min

Every tuner gets the same trial budget and the same seeds (0 .. seeds-1), and every tuner's first trial is
the space's default genome (what a user would have trained by hand); the table shows the best fitness
found after N/2 and after N trials (higher is better), as mean ± standard deviation over the seeds, the
median and the worst seed.

(a) ``digits``: a small CNN on scikit-learn's 8x8 digits (600 training images, 600 validation images), a
    few epochs on CPU, one thread; the fitness is validation accuracy.  The genes: lr (log), weight
    decay (log), optimizer, momentum, label smoothing, batch size, channels (int).  Every trial trains
    from the same torch seed, so the fitness is a deterministic function of the genome.
(b) ``rastrigin`` / ``ackley`` over a mixed space: four linear floats, one log-scale float (coordinate
    log10(y) + 3), an integer gene (a coordinate on the integer grid) and a categorical (a penalty of
    0 / 1 / 2 / 4); fitness = -f, optimum 0.  Shifted (as the CEC benchmarks do) so the optimum is not
    at the centre of the ranges, where a sampler's prior (TPE's is centred) would find it for free;
    ``--unshifted`` for the textbook functions.
(c) multi-objective: a mixed ZDT1 (two objectives to minimise, an int and a categorical gene added to
    g); the hypervolume (reference point below) of every tuner's evaluated points: cvops' NSGA-II
    (``cvops.tuning.evolution.propose`` with two objectives) against Optuna's NSGASampler and random.

The tuners:
* ``cvops-ga``: ``cvops.tuning.evolution.propose`` (generation 0 = the default genome + a Latin
  hypercube; then tournament, BLX-α / uniform crossover, self-scaling mutation, (μ+λ) elitism, no
  duplicates), population ``--population`` (8, an evolve job's default) x N / population generations;
* ``optuna-tpe``: ``optuna.samplers.TPESampler(seed)`` with its defaults (10 random startup trials);
* ``random``: uniform draws (log genes in log space);
* ``mutation``: ultralytics' ``Tuner._mutate`` (8.4): the default genome first, then a fitness-weighted
  parent among the best 9, Gaussian noise sigma 0.2 (decaying while stale) on a random half of the genes
  in *linear* [0, 1] coordinates, clipped; categories and bools ride on the same coordinate.  (Its
  covariance step after 30 trials is left out.)

Goal (issue 13): cvops-ga no worse than optuna-tpe, better than random and mutation.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cvops.tuning.evolution import TrialOutcome, propose  # noqa: E402
from cvops.tuning.nsga2 import hypervolume  # noqa: E402
from cvops.tuning.space import (  # noqa: E402
    BoolGene,
    CategoricalGene,
    FloatGene,
    IntGene,
    SearchSpace,
    default_genome,
    genome_key,
    parse_space,
)

Genome = dict[str, Any]
Evaluate = Callable[[Genome], float]

# ------------------------------------------------------------------------------------------- problems

PENALTY = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 4.0}


def mixed_space(bound: float, int_bound: int) -> SearchSpace:
    genes: dict[str, Any] = {
        f"x{i}": {"type": "float", "low": -bound, "high": bound, "default": bound * 0.49} for i in range(4)
    }
    genes["y"] = {"type": "float", "low": 1e-5, "high": 1.0, "log": True, "default": 0.03}
    genes["k"] = {"type": "int", "low": -int_bound, "high": int_bound, "default": int_bound // 2}
    genes["c"] = {"type": "categorical", "choices": ["a", "b", "c", "d"], "default": "c"}
    return parse_space(genes, hyperparameters=False)


# the optimum's x and k: off the centre and on the other side of the default genome (x = 0.49 x bound)
SHIFTED = {"rastrigin": (-1.8, -2), "ackley": (-11.5, -9)}
SHIFT = dict(SHIFTED)


def _coords(g: Genome, shift: tuple[float, int]) -> list[float]:
    sx, sk = shift
    return [g[f"x{i}"] - sx for i in range(4)] + [math.log10(g["y"]) + 3.0, float(g["k"] - sk)]


def rastrigin(g: Genome) -> float:
    z = _coords(g, SHIFT["rastrigin"])
    f = 10 * len(z) + sum(v * v - 10 * math.cos(2 * math.pi * v) for v in z)
    return -(f + PENALTY[g["c"]])


def ackley(g: Genome) -> float:
    z = _coords(g, SHIFT["ackley"])
    n = len(z)
    f = (
        -20 * math.exp(-0.2 * math.sqrt(sum(v * v for v in z) / n))
        - math.exp(sum(math.cos(2 * math.pi * v) for v in z) / n)
        + 20
        + math.e
    )
    return -(f + PENALTY[g["c"]])


ZDT_SPACE = parse_space(
    {
        **{f"x{i}": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5} for i in range(5)},
        "k": {"type": "int", "low": 0, "high": 9, "default": 5},
        "c": {"type": "categorical", "choices": ["a", "b", "c", "d"], "default": "c"},
    },
    hyperparameters=False,
)
ZDT_REFERENCE = (1.1, 6.0)


def zdt1(g: Genome) -> tuple[float, float]:
    f1 = g["x0"]
    rest = [g[f"x{i}"] for i in range(1, 5)] + [g["k"] / 9.0]
    h = 1.0 + 9.0 * sum(rest) / len(rest) + PENALTY[g["c"]] / 2
    return f1, h * (1.0 - math.sqrt(f1 / h))


DIGITS_SPACE = parse_space(
    {
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True, "default": 1e-3},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True, "default": 1e-4},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"], "default": "adamw"},
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "default": 0.9},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "default": 0.0},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128], "default": 32},
        "channels": {"type": "int", "low": 2, "high": 24, "default": 8},
    },
    hyperparameters=False,
)


class Digits:
    """A small CNN on sklearn's digits; ``__call__`` trains one genome and returns validation accuracy."""

    def __init__(self, epochs: int) -> None:
        import torch
        from sklearn.datasets import load_digits

        torch.set_num_threads(1)
        x, y = load_digits(return_X_y=True)
        order = np.random.default_rng(0).permutation(len(x))
        x = (x[order] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        y = y[order]
        self.train = (torch.from_numpy(x[:600]), torch.from_numpy(y[:600]))
        self.val = (torch.from_numpy(x[600:1200]), torch.from_numpy(y[600:1200]))
        self.epochs = epochs
        self.cache: dict[Any, float] = {}

    def __call__(self, g: Genome) -> float:
        key = genome_key(g)
        if key not in self.cache:
            self.cache[key] = self._train(g)
        return self.cache[key]

    def _train(self, g: Genome) -> float:
        import torch
        from torch import nn

        torch.manual_seed(0)
        c = int(g["channels"])
        model = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 16, 10),
        )
        lr, wd = g["lr"], g["weight_decay"]
        opt: torch.optim.Optimizer
        if g["optimizer"] == "sgd":
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=g["momentum"], weight_decay=wd)
        elif g["optimizer"] == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(g["momentum"], 0.999), weight_decay=wd)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(g["momentum"], 0.999), weight_decay=wd)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=g["label_smoothing"])
        xs, ys = self.train
        bs = int(g["batch_size"])
        gen = torch.Generator().manual_seed(0)
        for _ in range(self.epochs):
            perm = torch.randperm(len(xs), generator=gen)
            for i in range(0, len(xs), bs):
                idx = perm[i : i + bs]
                opt.zero_grad()
                loss = loss_fn(model(xs[idx]), ys[idx])
                if not torch.isfinite(loss):
                    return 0.0
                loss.backward()
                opt.step()
        with torch.no_grad():
            pred = model(self.val[0]).argmax(1)
        return float((pred == self.val[1]).float().mean())


# --------------------------------------------------------------------------------------------- tuners


def run_cvops(space: SearchSpace, evaluate: Evaluate, n: int, seed: int, population: int) -> list[float]:
    trials: list[TrialOutcome] = []
    for gen in range(math.ceil(n / population)):
        for i, genes in enumerate(propose(space, trials, seed=seed, generation=gen, size=population)):
            if len(trials) < n:
                trials.append(
                    TrialOutcome(generation=gen, index=i, genes=genes, values={"accuracy": evaluate(genes)})
                )
    return [t.values["accuracy"] for t in trials]


def _optuna_params(trial: Any, space: SearchSpace) -> Genome:
    out: Genome = {}
    for name in space.names():
        gene = space.genes[name]
        if isinstance(gene, FloatGene):
            out[name] = trial.suggest_float(name, gene.low, gene.high, log=gene.log)
        elif isinstance(gene, IntGene):
            out[name] = trial.suggest_int(name, gene.low, gene.high)
        elif isinstance(gene, CategoricalGene):
            out[name] = trial.suggest_categorical(name, list(gene.choices))
        else:
            out[name] = trial.suggest_categorical(name, [False, True])
    return out


def run_tpe(space: SearchSpace, evaluate: Evaluate, n: int, seed: int, population: int) -> list[float]:
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(default_genome(space))  # every tuner's first trial is the default genome
    study.optimize(lambda t: evaluate(_optuna_params(t, space)), n_trials=n)
    return [float(t.value) for t in study.trials if t.value is not None]


def _uniform(space: SearchSpace, rng: random.Random) -> Genome:
    out: Genome = {}
    for name in space.names():
        gene = space.genes[name]
        if isinstance(gene, FloatGene):
            lo, hi = (math.log(gene.low), math.log(gene.high)) if gene.log else (gene.low, gene.high)
            v = rng.uniform(lo, hi)
            out[name] = min(gene.high, max(gene.low, math.exp(v) if gene.log else v))
        elif isinstance(gene, IntGene):
            out[name] = rng.randint(gene.low, gene.high)
        elif isinstance(gene, CategoricalGene):
            out[name] = rng.choice(gene.choices)
        else:
            out[name] = rng.random() < 0.5
    return out


def run_random(space: SearchSpace, evaluate: Evaluate, n: int, seed: int, population: int) -> list[float]:
    rng = random.Random(seed)
    return [evaluate(default_genome(space))] + [evaluate(_uniform(space, rng)) for _ in range(n - 1)]


def _encode(space: SearchSpace, g: Genome) -> np.ndarray:
    """Linear [0, 1] coordinates, as ultralytics' tuner keeps them (no log scale)."""
    u = []
    for name in space.names():
        gene, v = space.genes[name], g[name]
        if isinstance(gene, FloatGene):
            u.append((v - gene.low) / (gene.high - gene.low))
        elif isinstance(gene, IntGene):
            u.append((v - gene.low) / max(1, gene.high - gene.low))
        elif isinstance(gene, CategoricalGene):
            u.append((gene.choices.index(v) + 0.5) / len(gene.choices))
        else:
            u.append(0.75 if v else 0.25)
    return np.array(u)


def _decode(space: SearchSpace, u: np.ndarray) -> Genome:
    out: Genome = {}
    for i, name in enumerate(space.names()):
        gene, x = space.genes[name], float(u[i])
        if isinstance(gene, FloatGene):
            out[name] = min(gene.high, max(gene.low, round(gene.low + x * (gene.high - gene.low), 5 + 3)))
        elif isinstance(gene, IntGene):
            out[name] = int(round(gene.low + x * (gene.high - gene.low)))
        elif isinstance(gene, CategoricalGene):
            out[name] = gene.choices[min(len(gene.choices) - 1, int(x * len(gene.choices)))]
        else:
            assert isinstance(gene, BoolGene)
            out[name] = x >= 0.5
    return out


def run_mutation(space: SearchSpace, evaluate: Evaluate, n: int, seed: int, population: int) -> list[float]:
    rng = np.random.default_rng(seed)
    genes = default_genome(space)
    history: list[tuple[float, np.ndarray]] = []
    seen: set[Any] = set()
    for _ in range(n):
        if history:
            fit = np.array([f for f, _ in history])
            stale = len(history) - 1 - int(np.argmax(fit))
            order = np.argsort(-fit)[:9]
            x = np.stack([history[i][1] for i in order])
            w = fit[order] - fit[order].min() + 1e-6
            scale = 0.2 * (1 - 0.2 * min(stale / 25, 1))
            for attempt in range(200):
                parent = x[rng.choice(len(x), p=w / w.sum())]
                if attempt < 100:
                    mask = rng.random(len(parent)) < 0.5
                    u = np.clip(parent + mask * rng.standard_normal(len(parent)) * scale, 0, 1)
                else:
                    u = rng.random(len(parent))
                genes = _decode(space, u)
                if genome_key(genes) not in seen:
                    break
        seen.add(genome_key(genes))
        history.append((evaluate(genes), _encode(space, genes)))
    return [f for f, _ in history]


TUNERS: dict[str, Callable[[SearchSpace, Evaluate, int, int, int], list[float]]] = {
    "cvops-ga": run_cvops,
    "optuna-tpe": run_tpe,
    "random": run_random,
    "mutation": run_mutation,
}

# -------------------------------------------------------------------------------------- multi-objective


def mo_cvops(n: int, seed: int, population: int) -> list[tuple[float, float]]:
    trials: list[TrialOutcome] = []
    objectives = ("accuracy", "latency")  # accuracy = -f1 (maximised), latency = f2
    for gen in range(math.ceil(n / population)):
        for i, g in enumerate(
            propose(ZDT_SPACE, trials, seed=seed, generation=gen, size=population, objectives=objectives)
        ):
            if len(trials) < n:
                f1, f2 = zdt1(g)
                trials.append(
                    TrialOutcome(generation=gen, index=i, genes=g, values={"accuracy": -f1, "latency": f2})
                )
    return [(-t.values["accuracy"], t.values["latency"]) for t in trials]


def mo_optuna(n: int, seed: int, population: int) -> list[tuple[float, float]]:
    import optuna

    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(lambda t: zdt1(_optuna_params(t, ZDT_SPACE)), n_trials=n)
    return [(float(t.values[0]), float(t.values[1])) for t in study.trials if t.values]


def mo_random(n: int, seed: int, population: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [zdt1(_uniform(ZDT_SPACE, rng)) for _ in range(n)]


# ------------------------------------------------------------------------------------------------ report


def best_after(values: Sequence[float], k: int) -> float:
    return max(values[:k])


def summary(xs: Sequence[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return (
        f"{statistics.fmean(xs):9.4f} ± {sd:7.4f}  median {statistics.median(xs):9.4f}  worst {min(xs):9.4f}"
    )


def bench(
    name: str, space: SearchSpace, evaluate: Evaluate, n: int, seeds: int, population: int
) -> dict[str, list[float]]:
    print(f"\n## {name}: {n} trials, population {population}, {seeds} seeds (best fitness, higher is better)")
    print(f"{'tuner':12} {'best after N/2':>50}   |  {'best after N':>50}   {'s/run':>6}")
    finals: dict[str, list[float]] = {}
    for tuner, run in TUNERS.items():
        half, full, secs = [], [], []
        for seed in range(seeds):
            t0 = time.perf_counter()
            values = run(space, evaluate, n, seed, population)
            secs.append(time.perf_counter() - t0)
            assert len(values) == n, (tuner, len(values))
            half.append(best_after(values, n // 2))
            full.append(best_after(values, n))
        finals[tuner] = full
        print(f"{tuner:12} {summary(half)}   |  {summary(full)}   {statistics.fmean(secs):6.2f}", flush=True)
    ga = finals["cvops-ga"]
    for other in ("optuna-tpe", "random", "mutation"):
        wins = sum(a > b for a, b in zip(ga, finals[other], strict=True))
        ties = sum(a == b for a, b in zip(ga, finals[other], strict=True))
        delta = statistics.fmean(ga) - statistics.fmean(finals[other])
        print(
            f"  cvops-ga vs {other:10}: mean difference {delta:+.4f}; better on {wins}/{seeds} seeds, tied on {ties}"
        )
    return finals


def bench_mo(n: int, seeds: int, population: int) -> None:
    print(f"\n## mixed ZDT1, 2 objectives: {n} trials, population {population}, {seeds} seeds")
    print(f"hypervolume of all evaluated points, reference {ZDT_REFERENCE} (higher is better)")
    runs = {"cvops-nsga2": mo_cvops, "optuna-nsga2": mo_optuna, "random": mo_random}
    hv: dict[str, list[float]] = {}
    for name, run in runs.items():
        hv[name] = [hypervolume(run(n, seed, population), ZDT_REFERENCE) for seed in range(seeds)]
        print(f"{name:12} {summary(hv[name])}", flush=True)
    ga = hv["cvops-nsga2"]
    for other in ("optuna-nsga2", "random"):
        wins = sum(a > b for a, b in zip(ga, hv[other], strict=True))
        print(
            f"  cvops-nsga2 vs {other:12}: mean difference {statistics.fmean(ga) - statistics.fmean(hv[other]):+.4f}; "
            f"better on {wins}/{seeds} seeds"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--only", choices=["digits", "functions", "mo"], default=None)
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--trials", type=int, default=80, help="budget on the test functions")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--digits-trials", type=int, default=24)
    ap.add_argument("--digits-population", type=int, default=6)
    ap.add_argument("--digits-epochs", type=int, default=2)
    ap.add_argument("--mo-trials", type=int, default=100)
    ap.add_argument("--unshifted", action="store_true", help="optima at the centre of the ranges")
    args = ap.parse_args()
    if args.unshifted:
        SHIFT.update({name: (0.0, 0) for name in SHIFT})

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    if args.only in (None, "functions"):
        bench("rastrigin (mixed)", mixed_space(5.12, 5), rastrigin, args.trials, args.seeds, args.population)
        bench("ackley (mixed)", mixed_space(32.768, 30), ackley, args.trials, args.seeds, args.population)
    if args.only in (None, "mo"):
        bench_mo(args.mo_trials, args.seeds, args.population)
    if args.only == "digits" or (args.only is None and not args.skip_digits):
        digits = Digits(args.digits_epochs)
        bench(
            f"digits CNN ({args.digits_epochs} epochs, val accuracy)",
            DIGITS_SPACE,
            digits,
            args.digits_trials,
            args.seeds,
            args.digits_population,
        )
        print(f"  ({len(digits.cache)} distinct genomes trained)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
