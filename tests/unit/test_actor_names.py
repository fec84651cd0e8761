"""The Ray dashboard lists actors by their class name: the card's names, exactly."""

from __future__ import annotations

import pytest

from cvops.actors.benchmarker import Benchmarker
from cvops.actors.eventlog import EventLog
from cvops.actors.evolver import GAEvolver
from cvops.actors.inference import InferenceWorker
from cvops.actors.job_kinds import JOB_ACTORS, job_actor_class
from cvops.actors.jobs import JobActor, typed_job
from cvops.actors.registry import ModelRegistry
from cvops.actors.scheduler import GPUScheduler
from cvops.actors.trainer import Trainer
from cvops.errors import CvopsError
from cvops.jobs_api import BenchmarkJob, EvolveJob, TrainJob, job_spec


def _class_name(actor_class: object) -> str:
    return actor_class.__ray_metadata__.class_name  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(
    ("actor_class", "name"),
    [
        (Trainer, "Trainer"),
        (GAEvolver, "GAEvolver"),
        (Benchmarker, "Benchmarker"),
        (GPUScheduler, "GPUScheduler"),
        (ModelRegistry, "ModelRegistry"),
        (EventLog, "EventLog"),
        (InferenceWorker, "InferenceWorker"),
    ],
)
def test_actor_classes_carry_the_cards_names(actor_class: object, name: str) -> None:
    assert _class_name(actor_class) == name


def test_each_job_kind_has_its_own_actor_class() -> None:
    assert {k: _class_name(c) for k, c in JOB_ACTORS.items()} == {
        "train": "Trainer",
        "evolve": "GAEvolver",
        "benchmark": "Benchmarker",
    }
    for kind, cls in JOB_ACTORS.items():
        assert job_actor_class(kind) is cls
        body_owner = cls.__ray_metadata__.modified_class  # type: ignore[attr-defined]
        assert issubclass(body_owner, JobActor) and body_owner.kind == kind


def test_a_job_spec_turns_back_into_its_typed_request() -> None:
    train = TrainJob(model_id="m1", dataset_id="d1", hyperparameters={"epochs": 2})
    assert typed_job(job_spec(train)) == (train, True)
    trial = {**job_spec(train), "register": False}
    assert typed_job(trial) == (train, False)
    evolve = EvolveJob(model_id="m1", dataset_id="d1", population=4)
    assert typed_job(job_spec(evolve))[0] == evolve
    bench = BenchmarkJob(model_id="m1", engines=["onnxruntime-cpu"], batch_sizes=[1])
    assert typed_job(job_spec(bench))[0] == bench
    # a spec written by an older version with a key the request no longer has still runs
    assert typed_job({**job_spec(bench), "threads": 2})[0] == bench
    with pytest.raises(CvopsError, match="unknown job kind"):
        typed_job({"kind": "paint"})
