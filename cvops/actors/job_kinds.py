"""The job kinds' table: which actor class the GPUScheduler creates for a job of each kind.

A leaf of the actors package: it imports the job actor modules (each holds its actor class and its
job body) and nothing imports them but this table, so there is no import cycle between the scheduler
and the jobs (the GAEvolver reaches the scheduler through :mod:`cvops.actors.scheduler_client`)."""

from __future__ import annotations

from typing import Any

from cvops.actors.benchmarker import Benchmarker
from cvops.actors.evolver import GAEvolver
from cvops.actors.trainer import Trainer

JOB_ACTORS: dict[str, Any] = {"train": Trainer, "evolve": GAEvolver, "benchmark": Benchmarker}


def job_actor_class(kind: str) -> Any:
    """The Ray actor class for ``kind`` (KeyError for an unknown kind: plan_submit never lets one in)."""
    return JOB_ACTORS[kind]
