"""GAEvolver: the actor of an evolve job and its body, the imperative shell around :mod:`cvops.tuning`.

The evolution holds no GPU token (it runs no model; the scheduler starts it tokenless).  Each trial is
a child train job submitted through the GPUScheduler, so the token limit holds for trials, and a
generation's trials run as many at once as tokens are free.  What it decides is a pure function of its
recorded trials (``TrialCompleted`` events, read back by :mod:`cvops.tuning.records`):

* generation ``g``'s genomes: :func:`cvops.tuning.evolution.propose` over the trials of generations
  ``< g`` (the task's default space when the request names none; NSGA-II for several objectives);
* pruning: after each epoch of a running trial (its ``phase: epoch`` progress), the median rule against
  the curves of the trials of generations ``< g``; a pruned trial is cancelled through the scheduler (its
  token goes back) and recorded ``state: pruned``;
* budgets: generations, ``wall_clock_s`` (running trials are then cancelled) and ``patience``
  (generations without improvement of the best accuracy, or of the front's hypervolume);
* objectives: accuracy from the trial's result; ``size`` (ONNX MB) and ``latency`` (p95 ms at batch 1 on
  ``latency_engine``, measured with :func:`cvops.bench.run_benchmark`) once the trial's model is ready.

Every trial registers its model (lineage: parent model, dataset, hyperparameters, evolution, trial,
generation); when the evolution ends the models of the trials that are not the best (single objective)
or on the front (multi) are deleted, so exactly the winners remain.  Child job ids are deterministic
(``<job>-g<gen>i<index>``) and so are their model ids, so a resumed evolution finds its trials again,
never re-runs a finished one, and cleans up after an interrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import ray

from cvops.actors.jobs import JobActor, JobCancelled, JobContext
from cvops.actors.registry import Registry
from cvops.actors.scheduler_client import SchedulerClient
from cvops.actors.trainer import trained_model_id
from cvops.errors import CvopsError
from cvops.events.job_facts import ENDED_TYPES, TRIAL_TYPES, EndedJobs, Trials, apply_ended, apply_trials
from cvops.events.projection import SyncProjection
from cvops.events.projections import ModelRecord
from cvops.events.scheduling import SCHEDULER_STREAM, job_stream
from cvops.events.schema import Envelope, JobProgressed, TrialCompleted
from cvops.jobs_api import EvolveJob
from cvops.tuning.budget import Budget, over_time, stop_reason
from cvops.tuning.evolution import generation_progress, propose, reference_point
from cvops.tuning.nsga2 import Objective
from cvops.tuning.pruning import MedianRule, should_prune
from cvops.tuning.records import (
    earlier_curves,
    epoch_curve,
    evolution_result,
    outcomes,
    trial_accuracy,
    winners,
)
from cvops.tuning.space import parse_space

log = logging.getLogger(__name__)

POLL_S = 0.5
TERMINAL = ("succeeded", "failed", "cancelled")
MODEL_READY_S = 600.0  # how long a trial's model may take to convert before the trial counts as failed
PRUNE_MIN_TRIALS = 4


def child_id(job_id: str, generation: int, index: int) -> str:
    return f"{job_id[:16]}-g{generation}i{index}"


def deployment_engine() -> str:
    """The engine this machine serves models with: CUDA's ONNX Runtime where a GPU is, else the CPU's."""
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "onnxruntime-cuda"
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        pass
    return "onnxruntime-cpu"


def _finished_trials(ctx: JobContext) -> Trials:
    trials: SyncProjection[Trials] = SyncProjection(
        ctx.store, apply_trials, {}, stream=ctx.stream, types=TRIAL_TYPES
    )
    return trials.catch_up()


def _stop_or_ended(ctx: JobContext, child_ids: list[str], ended: EndedJobs) -> bool:
    return ctx.should_stop() or any(c in ended for c in child_ids)


def _apply_progress(state: list[dict[str, Any]], env: Envelope) -> list[dict[str, Any]]:
    ev = env.event()
    if isinstance(ev, JobProgressed) and ev.progress.get("phase") == "epoch":
        state.append(dict(ev.progress))
    return state


class Trial:
    """A running trial as the shell sees it: its child job and its epoch records so far."""

    def __init__(self, ctx: JobContext, generation: int, index: int, genes: dict[str, Any]) -> None:
        self.generation, self.index, self.genes = generation, index, genes
        self.job_id = child_id(ctx.job_id, generation, index)
        self.epochs: SyncProjection[list[dict[str, Any]]] = SyncProjection(
            ctx.store, _apply_progress, [], stream=job_stream(self.job_id), types=("JobProgressed",)
        )
        self.prune_requested = False

    def curve(self, task: str) -> list[float]:
        return epoch_curve(self.epochs.catch_up(), task)

    def prunable_curve(self, task: str) -> list[float]:
        """The curve so far, or [] after the trial's last epoch (stopping it then saves nothing and
        would race its model's registration)."""
        records = self.epochs.catch_up()
        curve = epoch_curve(records, task)
        total = max((int(r.get("epochs") or 0) for r in records), default=0)
        return [] if total and len(curve) >= total else curve


def measure_latency(ctx: JobContext, rec: ModelRecord, engine: str) -> float:
    """p95 latency in ms at batch 1 of ``rec``'s ONNX on ``engine``, by the Benchmarker's method."""
    from cvops.bench import BenchmarkConfig, run_benchmark

    onnx = rec.onnx
    if onnx is None:
        raise CvopsError(f"model {rec.id} has no ONNX form")
    dims = onnx.inputs[0].shape
    size = onnx.preprocessing.image_size
    shape = [1, int(dims[1]) if isinstance(dims[1], int) else 3, int(size[0]), int(size[-1])]
    config = BenchmarkConfig(engines=[engine], batch_sizes=[1], warmup=10, iterations=50, agreement_samples=1)
    result = run_benchmark(
        ctx.blobs.path(onnx.sha256),
        config,
        input_shape=shape,
        reference_engine=engine,
        should_stop=ctx.should_stop,
        memory_limit_mb=ctx.settings.gpu_memory_mb,
    )
    if result.stopped or ctx.should_stop():
        raise JobCancelled(ctx.job_id)
    res = result.results[0]
    if not res.available or not res.batches:
        raise CvopsError(f"engine {engine} cannot run the model: {res.reason}")
    return float(res.batches[0].latency.p95_ms)


class Evolution:
    """One attempt of an evolve job: submits, watches, prunes and records its trials."""

    def __init__(self, ctx: JobContext) -> None:
        job = ctx.job
        assert isinstance(job, EvolveJob)
        self.ctx, self.job = ctx, job
        self.registry = Registry.connect()
        self.task = self.registry.get_sync(job.model_id).task
        self.space = parse_space(
            dict(job.search_space), task="detection" if self.task == "detection" else "classification"
        )
        self.objectives: tuple[Objective, ...] = tuple(job.objectives)
        self.budget = Budget(
            generations=job.generations, wall_clock_s=job.wall_clock_s, patience=job.patience
        )
        prune = job.prune and ctx.settings.evolve_prune
        self.rule = MedianRule(enabled=prune, min_trials=PRUNE_MIN_TRIALS, min_epochs=1)
        self.engine = job.latency_engine or deployment_engine()
        self.scheduler = SchedulerClient.connect()
        self.done = _finished_trials(ctx)
        # the child jobs that ended, kept current from the scheduler's stream (one cursor for the whole run)
        self.ended: SyncProjection[EndedJobs] = SyncProjection(
            ctx.store, apply_ended, {}, stream=SCHEDULER_STREAM, types=ENDED_TYPES
        )
        self.t0 = time.monotonic()
        self.user = f"evolve:{ctx.job_id}"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> dict[str, Any]:
        reason = "generations"
        reference: tuple[float, ...] | None = None
        for gen in range(self.job.generations):
            found = outcomes(self.done)
            if gen > 0:
                if reference is None and len(self.objectives) > 1:  # fixed once, from generation 0
                    reference = reference_point([t for t in found if t.generation == 0], self.objectives)
                progress = generation_progress(
                    [t for t in found if t.generation < gen], self.objectives, reference
                )
                why = stop_reason(self.budget, progress[:gen], self.elapsed())
                if why is not None:
                    reason = why
                    break
            genomes = propose(
                self.space,
                found,
                seed=self.job.seed,
                generation=gen,
                size=self.job.population,
                objectives=self.objectives,
            )
            if self.run_generation(gen, genomes):
                reason = "wall_clock"
                break
        self.ctx.progress({"phase": "cleanup"}, force=True)
        self.keep_only_winners()
        result = evolution_result(self.done, self.objectives, reference=reference, stop_reason=reason)
        result["seconds"] = self.elapsed()
        result["latency_engine"] = self.engine if "latency" in self.objectives else None
        return result

    def run_generation(self, gen: int, genomes: Sequence[dict[str, Any]]) -> bool:
        """Run the generation's unrecorded trials; True when the wall-clock budget cut it short."""
        earlier = earlier_curves(self.done, gen)
        waiting: dict[int, Trial] = {}
        for i, genome in enumerate(genomes):
            if (gen, i) in self.done:
                continue
            trial = Trial(self.ctx, gen, i, dict(genome))
            spec = {
                "kind": "train",
                "model_id": self.job.model_id,
                "dataset_id": self.job.dataset_id,
                "hyperparameters": dict(genome),
                "trial": {"evolution_job_id": self.ctx.job_id, "generation": gen, "index": i},
            }
            self.scheduler.submit_child_sync("train", spec, self.user, trial.job_id, self.ctx.job_id)
            waiting[i] = trial
        timed_out = False
        while waiting:
            # wakes when the log moves (a trial ends at once); epochs and the cancel flag within POLL_S
            self.ended.wait_until(
                partial(_stop_or_ended, self.ctx, [t.job_id for t in waiting.values()]), POLL_S
            )
            if self.ctx.should_stop():
                self.cancel(list(waiting.values()))
                raise JobCancelled(self.ctx.job_id)
            if not timed_out and over_time(self.budget, self.elapsed()):
                timed_out = True
                self.cancel(list(waiting.values()))
            for i, trial in list(waiting.items()):
                if trial.job_id in self.ended.state:
                    if self.finish(trial, len(waiting) - 1):
                        del waiting[i]
                elif not trial.prune_requested and should_prune(
                    self.rule, trial.prunable_curve(self.task), earlier
                ):
                    self.cancel([trial])
        fits = [self.done[(gen, i)].fitness for i in range(len(genomes)) if (gen, i) in self.done]
        self.ctx.progress(
            {
                "phase": "generation",
                "generation": gen,
                "generations": self.job.generations,
                "best_fitness": max(fits, default=0.0),
            },
            force=True,
        )
        return timed_out

    def cancel(self, trials: Sequence[Trial]) -> None:
        for trial in trials:
            trial.prune_requested = True
            try:
                self.scheduler.cancel_sync(trial.job_id, self.user)
            except CvopsError as exc:
                log.debug("trial %s already ended: %s", trial.job_id, exc)

    def finish(self, trial: Trial, remaining: int) -> bool:
        """Record an ended trial (False: the scheduler has not folded its end yet)."""
        child = self.scheduler.get_sync(trial.job_id)
        if child.status not in TERMINAL:  # not expected: the scheduler folds up to the head first
            time.sleep(POLL_S)
            return False
        curve = trial.curve(self.task)
        result = child.result or {}
        model_id = str(result.get("model_id") or "")
        values: dict[str, float] = {}
        if child.status == "succeeded":
            state = "finished"
            values["accuracy"] = trial_accuracy(result, self.task)
            try:
                values.update(self.measure(model_id))
            except CvopsError as exc:
                log.warning("trial %s: its model could not be measured: %s", trial.job_id, exc)
                state = "failed"
        else:
            state = "pruned" if child.status == "cancelled" else "failed"
        fitness = values.get("accuracy", max(curve, default=0.0) if state == "pruned" else 0.0)
        ev = TrialCompleted(
            job_id=self.ctx.job_id,
            generation=trial.generation,
            index=trial.index,
            genes=trial.genes,
            fitness=fitness,
            child_job_id=trial.job_id,
            state=state,
            values=values if state == "finished" else {},
            curve=curve,
            model_id=model_id,
        )
        self.ctx.emit([ev])
        self.done[(trial.generation, trial.index)] = ev
        self.ctx.progress(
            {
                "phase": "trial",
                "generation": trial.generation,
                "index": trial.index,
                "state": state,
                "fitness": fitness,
                "values": values,
                "remaining": remaining,
            },
            force=True,
        )
        return True

    def measure(self, model_id: str) -> dict[str, float]:
        """``size`` and ``latency`` of a finished trial's model, once it is ready (nothing to wait for
        when accuracy is the only objective)."""
        wanted = [o for o in self.objectives if o != "accuracy"]
        if not wanted:
            return {}
        if not model_id:
            raise CvopsError("the trial registered no model")
        rec = self.registry.wait_sync(model_id, MODEL_READY_S)
        if rec.status != "ready" or not rec.onnx:
            raise CvopsError(f"model {model_id} is {rec.status}: {rec.error or ''}")
        out: dict[str, float] = {}
        if "size" in wanted:
            out["size"] = float(rec.onnx.bytes) / 1e6
        if "latency" in wanted:
            out["latency"] = measure_latency(self.ctx, rec, self.engine)
        return out

    def keep_only_winners(self) -> None:
        """Delete the model of every trial that is not a winner (the best, or on the front), including
        models a pruned or cancelled trial registered as it ended; wait for each to settle first."""
        keep = set(winners(outcomes(self.done), self.objectives))
        for key in sorted(self.done):
            ev = self.done[key]
            model_id = ev.model_id or trained_model_id(ev.child_job_id or child_id(self.ctx.job_id, *key))
            try:
                rec = self.registry.wait_sync(model_id, MODEL_READY_S)
            except CvopsError:  # never registered, or already deleted
                continue
            if key in keep:
                continue
            try:
                self.registry.delete_sync(rec.id, self.user)
            except CvopsError as exc:
                log.warning("trial model %s was not deleted: %s", model_id, exc)


def run_evolve_job(ctx: JobContext) -> dict[str, Any]:
    return Evolution(ctx).run()


@ray.remote(num_cpus=0, max_concurrency=4, max_restarts=0)  # type: ignore[call-overload]
class GAEvolver(JobActor):
    """The actor of one evolve job attempt (it runs no model itself: its trials are train jobs)."""

    kind = "evolve"
    body = staticmethod(run_evolve_job)
