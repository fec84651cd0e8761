"""GAEvolver: the actor of an evolve job and its body. The evolution holds no GPU token (it runs no
model; the scheduler starts it tokenless).  Each trial is a child train job submitted through the
GPUScheduler, so the token limit holds for trials, and a generation's trials run as many at once as
tokens are free.  Each finished trial is a TrialCompleted event (and a JobProgressed per trial and per
generation, which the websocket carries); a resumed evolution rebuilds its populations from those and
never re-runs a trial.

Child job ids are deterministic (``<job>-g<gen>i<index>``), so a trial submitted before a crash is
found again, not submitted twice.  Trials train without registering a model (``register: false``);
the result names the best hyperparameters found.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import ray

from cvops.actors.jobs import JobActor, JobCancelled, JobContext
from cvops.actors.scheduler_client import SchedulerClient
from cvops.errors import CvopsError
from cvops.events.job_facts import ENDED_TYPES, TRIAL_TYPES, EndedJobs, Trials, apply_ended, apply_trials
from cvops.events.projection import SyncProjection
from cvops.events.scheduling import SCHEDULER_STREAM
from cvops.events.schema import TrialCompleted
from cvops.ga import initial_population, next_generation, parse_space
from cvops.jobs_api import EvolveJob

log = logging.getLogger(__name__)

POLL_S = 0.5
TERMINAL = ("succeeded", "failed", "cancelled")


def child_id(job_id: str, generation: int, index: int) -> str:
    return f"{job_id[:16]}-g{generation}i{index}"


def _finished_trials(ctx: JobContext) -> Trials:
    trials: SyncProjection[Trials] = SyncProjection(
        ctx.store, apply_trials, {}, stream=ctx.stream, types=TRIAL_TYPES
    )
    return trials.catch_up()


def _stop_or_ended(ctx: JobContext, child_ids: list[str], ended: EndedJobs) -> bool:
    return ctx.should_stop() or any(c in ended for c in child_ids)


def run_evolve_job(ctx: JobContext) -> dict[str, Any]:
    job = ctx.job
    assert isinstance(job, EvolveJob)
    space = parse_space(dict(job.search_space))
    size, generations, seed = job.population, job.generations, job.seed
    scheduler = SchedulerClient.connect()
    done = _finished_trials(ctx)
    # the child jobs that ended, kept current from the scheduler's stream (one cursor for the whole run)
    ended: SyncProjection[EndedJobs] = SyncProjection(
        ctx.store, apply_ended, {}, stream=SCHEDULER_STREAM, types=ENDED_TYPES
    )
    population = initial_population(space, size, seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], str] | None = None
    t0 = time.monotonic()
    fitness: list[float] = [0.0] * size
    for gen in range(generations):
        if gen > 0:
            population = next_generation(population, fitness, space, seed, gen)
        fitness = [0.0] * size
        waiting: dict[int, str] = {}
        for i, genome in enumerate(population):
            trial = done.get((gen, i))
            if trial is not None:
                fitness[i] = trial.fitness
                continue
            cid = child_id(ctx.job_id, gen, i)
            child_spec = {
                "kind": "train",
                "model_id": job.model_id,
                "dataset_id": job.dataset_id,
                "hyperparameters": genome,
                "register": False,
            }
            scheduler.submit_child_sync("train", child_spec, f"evolve:{ctx.job_id}", cid, ctx.job_id)
            waiting[i] = cid
        while waiting:
            # wakes when the log moves (a trial ends at once); the cancel flag is seen within POLL_S
            ended.wait_until(partial(_stop_or_ended, ctx, list(waiting.values())), POLL_S)
            if ctx.should_stop():
                for cid in waiting.values():
                    try:
                        scheduler.cancel_sync(cid, f"evolve:{ctx.job_id}")
                    except CvopsError as exc:
                        log.debug("trial %s already ended: %s", cid, exc)
                raise JobCancelled(ctx.job_id)
            for i, cid in list(waiting.items()):
                if cid not in ended.state:
                    continue
                trial_job = scheduler.get_sync(cid)
                if trial_job.status not in TERMINAL:  # not expected: the scheduler folds up to the head first
                    time.sleep(POLL_S)
                    continue
                result = trial_job.result or {}
                fit = (
                    float(result.get("best_val_accuracy") or 0.0) if trial_job.status == "succeeded" else 0.0
                )
                fitness[i] = fit
                ctx.emit(
                    [
                        TrialCompleted(
                            job_id=ctx.job_id,
                            generation=gen,
                            index=i,
                            genes=population[i],
                            fitness=fit,
                            child_job_id=cid,
                        )
                    ]
                )
                del waiting[i]
                ctx.progress(
                    {
                        "phase": "trial",
                        "generation": gen,
                        "index": i,
                        "fitness": fit,
                        "remaining": len(waiting),
                    },
                    force=True,
                )
        for i in range(size):
            if best is None or fitness[i] > best[0]:
                best = (fitness[i], population[i], child_id(ctx.job_id, gen, i))
        history.append({"generation": gen, "best": max(fitness), "mean": sum(fitness) / size})
        ctx.progress(
            {
                "phase": "generation",
                "generation": gen,
                "generations": generations,
                "best_fitness": max(fitness),
            },
            force=True,
        )
    assert best is not None
    return {
        "best_fitness": best[0],
        "best_hyperparameters": best[1],
        "best_trial_job_id": best[2],
        "generations": history,
        "trials": size * generations,
        "seconds": time.monotonic() - t0,
    }


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)  # type: ignore[call-overload]
class GAEvolver(JobActor):
    """The actor of one evolve job attempt (it runs no model itself: its trials are train jobs)."""

    kind = "evolve"
    body = staticmethod(run_evolve_job)
