"""The named actors of a running cvops, as Ray's actor table (what the dashboard shows) lists them:
the card's class names, and the job id in each job actor's name."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import ray

from cvops.actors.eventlog import EventStore
from cvops.actors.registry import Registry
from cvops.actors.scheduler import Scheduler
from cvops.config import Settings
from cvops.errors import CvopsError
from cvops.events.schema import DatasetUploaded, DatasetValidated
from cvops.jobs_api import TrainJob, job_spec
from tests.unit.test_projections import converted, uploaded

DATASET = DatasetUploaded(
    dataset_id="fedcba9876543210",
    name="d",
    task="classification",
    format="imagefolder",
    sha256="b" * 64,
    bytes=1,
)
DATASET_OK = DatasetValidated(
    dataset_id="fedcba9876543210", classes=["a", "b"], counts={"train": {"a": 1, "b": 1}}
)


def _actor_table() -> list[dict[str, Any]]:
    from ray._private import state

    return list(state.actors().values())


async def test_the_dashboard_lists_the_cards_actors_by_name(tmp_path: Path, ray_session: Any) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), gpu_tokens=2)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    store = EventStore.start(str(settings.db_path))
    await store.ping()
    # a ready ONNX model and a ready dataset, as the log records them (the submission checks both)
    await store.append(
        "model-0123456789abcdef", [uploaded("0123456789abcdef"), converted("0123456789abcdef")]
    )
    await store.append("dataset-fedcba9876543210", [DATASET, DATASET_OK])
    registry = await Registry.start(settings)
    scheduler = await Scheduler.start(settings)
    try:
        # a train job of a model with no torch form: its Trainer starts, asks the registry, fails
        spec = job_spec(TrainJob(model_id="0123456789abcdef", dataset_id="fedcba9876543210"))
        job = await scheduler.submit("train", spec, "tester")
        end = time.monotonic() + 60
        while (view := await scheduler.get(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < end, view
            await asyncio.sleep(0.2)
        assert view.status == "failed" and "no torch form" in (view.error or ""), view
        table = _actor_table()
        classes = {a["ActorClassName"] for a in table}
        assert {"EventLog", "ModelRegistry", "GPUScheduler", "Trainer"} <= classes, classes
        names = {a["Name"]: a["ActorClassName"] for a in table if a["Name"]}
        assert (
            names.get("cvops-scheduler") == "GPUScheduler" and names.get("cvops-registry") == "ModelRegistry"
        )
        assert names.get("cvops-eventlog") == "EventLog"
        assert names.get(f"Trainer:{job.id}:1") == "Trainer", names
    finally:
        for facade in (scheduler, registry):
            with contextlib.suppress(CvopsError):
                await facade.stop()
        with contextlib.suppress(CvopsError):
            await store.close()
        for h in (scheduler._h, registry._h, store.handle):
            ray.kill(h, no_restart=True)
