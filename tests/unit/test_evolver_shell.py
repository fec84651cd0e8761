"""The GAEvolver's shell with a fake scheduler and registry over an in-memory log: median pruning
cancels the trials of generation 1 that fall below generation 0's median after epoch 1 (and only
those; none with ``prune: false``), and at the end only the best trial's model remains."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from cvops.actors import evolver
from cvops.actors.jobs import JobCancelled
from cvops.actors.trainer import trained_model_id
from cvops.errors import NotFound
from cvops.events.memory import LogCore
from cvops.events.scheduling import SCHEDULER_STREAM, job_stream
from cvops.events.schema import Envelope, Event, JobProgressed, JobSucceeded, TrialCompleted
from cvops.events.schema import JobCancelled as JobCancelledEvent
from cvops.jobs_api import EvolveJob

SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
    "epochs": {"type": "choice", "choices": [2]},
}


def accuracy(genes: dict[str, Any]) -> float:
    return round(float(genes["lr"]) * 10, 6)  # a fake trial's accuracy: a pure function of its genes


class Store:
    def __init__(self) -> None:
        self.core = LogCore()

    def append(
        self, stream: str, events: Sequence[Event], expected_version: int | None = None
    ) -> list[Envelope]:
        return self.core.append(stream, events, expected_version)

    def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]:
        return self.core.read(after, limit, stream, prefix, types, until_seq)

    def wait_for(self, after: int, timeout: float) -> int:
        if self.core.last_seq <= after and timeout > 0:
            time.sleep(min(timeout, 0.01))
        return self.core.last_seq


class Scheduler:
    """Gen-0 trials and trials at or above gen 0's median succeed at once; the others stay running
    after their first epoch until cancelled (a trial nobody prunes would run forever: the test's
    deadline then cancels the evolution)."""

    def __init__(self, store: Store, registry: Registry, median: list[float]) -> None:
        self.store, self.registry, self.median = store, registry, median
        self.jobs: dict[str, SimpleNamespace] = {}

    def submit_child_sync(self, kind: str, spec: dict[str, Any], user: str, job_id: str, parent: str) -> Any:
        acc = accuracy(spec["hyperparameters"])
        gen = int(spec["trial"]["generation"])
        self.store.append(
            job_stream(job_id),
            [
                JobProgressed(
                    job_id=job_id, progress={"phase": "epoch", "epoch": 1, "epochs": 2, "val_accuracy": acc}
                )
            ],
        )
        rec = SimpleNamespace(status="running", result=None, acc=acc)
        self.jobs[job_id] = rec
        if gen == 0 or acc >= self.median[0]:
            self.store.append(
                job_stream(job_id),
                [
                    JobProgressed(
                        job_id=job_id,
                        progress={"phase": "epoch", "epoch": 2, "epochs": 2, "val_accuracy": acc},
                    )
                ],
            )
            model = trained_model_id(job_id)
            self.registry.models[model] = spec["trial"]
            rec.status, rec.result = "succeeded", {"best_val_accuracy": acc, "model_id": model}
            self.store.append(SCHEDULER_STREAM, [JobSucceeded(job_id=job_id, result=rec.result)])
        return rec

    def cancel_sync(self, job_id: str, by: str) -> Any:
        rec = self.jobs[job_id]
        if rec.status == "running":
            rec.status = "cancelled"
            self.store.append(SCHEDULER_STREAM, [JobCancelledEvent(job_id=job_id, by=by)])
        return rec

    def get_sync(self, job_id: str) -> Any:
        return self.jobs[job_id]


class Registry:
    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []

    def get_sync(self, model_id: str) -> Any:
        return SimpleNamespace(task="classification")

    def wait_sync(self, model_id: str, timeout: float) -> Any:
        if model_id not in self.models:
            raise NotFound(f"no model {model_id}")
        return SimpleNamespace(id=model_id, status="ready", onnx={"bytes": 1})

    def delete_sync(self, model_id: str, user: str) -> None:
        del self.models[model_id]
        self.deleted.append(model_id)


class Ctx:
    def __init__(self, job: EvolveJob, store: Store) -> None:
        self.job_id, self.job, self.store = "evo1", job, store
        self.stream = job_stream(self.job_id)
        self.settings = SimpleNamespace(evolve_prune=True, gpu_memory_mb=None)
        self.deadline = time.monotonic() + 20

    def should_stop(self) -> bool:
        return time.monotonic() > self.deadline

    def emit(self, events: list[Event]) -> None:
        self.store.append(self.stream, events)

    def progress(self, p: dict[str, Any], force: bool = False) -> None:
        self.store.append(self.stream, [JobProgressed(job_id=self.job_id, progress=p)])


def _run(
    monkeypatch: pytest.MonkeyPatch, prune: bool
) -> tuple[dict[str, Any], list[TrialCompleted], Registry]:
    from cvops.tuning.evolution import propose
    from cvops.tuning.space import parse_space

    job = EvolveJob(
        model_id="m", dataset_id="d", population=4, generations=2, seed=0, search_space=SPACE, prune=prune
    )
    gen0 = propose(parse_space(SPACE), [], seed=0, generation=0, size=4)
    median = [statistics.median(accuracy(g) for g in gen0)]
    store, registry = Store(), Registry()
    scheduler = Scheduler(store, registry, median if prune else [-1.0])
    monkeypatch.setattr(evolver.Registry, "connect", classmethod(lambda cls: registry))
    monkeypatch.setattr(evolver.SchedulerClient, "connect", classmethod(lambda cls: scheduler))
    ctx = Ctx(job, store)
    try:
        result = evolver.run_evolve_job(ctx)  # type: ignore[arg-type]
    except JobCancelled:
        pytest.fail("the evolution waited on a trial it should have pruned")
    trials = [e.event() for e in store.core.read(stream=ctx.stream, types=["TrialCompleted"])]
    return result, [t for t in trials if isinstance(t, TrialCompleted)], registry


def test_median_rule_prunes_generation_1_trials_below_generation_0s_median(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result, trials, registry = _run(monkeypatch, prune=True)
    gen0 = [t for t in trials if t.generation == 0]
    gen1 = [t for t in trials if t.generation == 1]
    assert len(gen0) == 4 and len(gen1) == 4 and all(t.state == "finished" for t in gen0)
    median = statistics.median(t.values["accuracy"] for t in gen0)
    for t in gen1:
        expect = "pruned" if accuracy(t.genes) < median else "finished"
        assert t.state == expect, (t, median)
        if expect == "pruned":
            assert t.curve == [accuracy(t.genes)] and t.values == {} and t.model_id == ""
    assert result["states"]["pruned"] == sum(t.state == "pruned" for t in gen1) >= 1
    # only the best trial's model remains; every other finished trial's model was deleted
    best = max(
        (t for t in trials if t.state == "finished"),
        key=lambda t: (t.values["accuracy"], -t.generation, -t.index),
    )
    assert set(registry.models) == {best.model_id} and result["best"]["model_id"] == best.model_id
    assert len(registry.deleted) == sum(t.state == "finished" for t in trials) - 1


def test_prune_false_runs_every_trial_to_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    result, trials, _ = _run(monkeypatch, prune=False)
    assert len(trials) == 8 and all(t.state == "finished" for t in trials)
    assert result["stop_reason"] == "generations"
