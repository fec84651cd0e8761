"""The small folds the actors keep as projections: engine choices (``engine: auto``), an evolution's
finished trials, ended child jobs, the checkpoints a run keeps, and the registry's models + datasets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cvops.actors.registry_datasets import REGISTRY_TYPES, RegistryState, apply_registry
from cvops.events.job_facts import (
    ENDED_TYPES,
    ENGINE_TYPES,
    EngineChoices,
    apply_ended,
    apply_engine_selected,
    apply_trials,
)
from cvops.events.log import EventLog
from cvops.events.projection import Projection
from cvops.events.projections import fold
from cvops.events.schema import (
    CheckpointSaved,
    CheckpointsDiscarded,
    DatasetUploaded,
    EngineSelected,
    Envelope,
    Event,
    JobCancelled,
    JobFailed,
    JobProgressed,
    JobQueued,
    JobSucceeded,
    ModelUploaded,
    TrialCompleted,
    encode_event,
    type_of,
)
from cvops.gc import KeptCheckpoint, apply_kept


def envs(*items: tuple[str, Event]) -> list[Envelope]:
    return [
        Envelope(seq=i, stream=stream, version=i, type=type_of(ev), ts=float(i), data=encode_event(ev))
        for i, (stream, ev) in enumerate(items, start=1)
    ]


def selected(job: str, model: str, engine: str | None) -> EngineSelected:
    return EngineSelected(
        job_id=job,
        model_id=model,
        selected=engine,
        selected_batch=1 if engine else None,
        eligible=[engine] if engine else [],
        rejected={},
        objective="latency",
    )


def test_engine_choice_is_the_latest_selection_per_model() -> None:
    state = fold(
        apply_engine_selected,
        {},
        envs(
            ("job-1", selected("1", "m1", "onnxruntime-cpu")),
            ("job-2", selected("2", "m2", "torch-cpu")),
            ("job-3", selected("3", "m1", "openvino-cpu")),
            ("job-4", selected("4", "m2", None)),  # nothing qualified: the earlier choice stays
            ("job-5", JobProgressed(job_id="5", progress={})),
        ),
    )
    assert {m: ev.selected for m, ev in state.items()} == {"m1": "openvino-cpu", "m2": "torch-cpu"}
    assert state["m1"].selected_batch == 1


def test_trials_by_generation_and_index() -> None:
    t = [
        TrialCompleted(job_id="e", generation=g, index=i, genes={}, fitness=g + i / 10)
        for g, i in ((0, 0), (0, 1))
    ]
    state = fold(
        apply_trials,
        {},
        envs(("job-e", t[0]), ("job-e", JobProgressed(job_id="e", progress={})), ("job-e", t[1])),
    )
    assert state == {(0, 0): t[0], (0, 1): t[1]}


def test_ended_jobs_with_their_status() -> None:
    state = fold(
        apply_ended,
        {},
        envs(
            ("scheduler", JobQueued(job_id="a", position=1)),
            ("scheduler", JobSucceeded(job_id="a", result={})),
            ("scheduler", JobFailed(job_id="b", error="x")),
            ("scheduler", JobCancelled(job_id="c")),
        ),
    )
    assert state == {"a": "succeeded", "b": "failed", "c": "cancelled"}
    assert set(ENDED_TYPES) == {"JobSucceeded", "JobFailed", "JobCancelled"}


def test_kept_checkpoints_follow_saves_and_discards() -> None:
    state = fold(
        apply_kept,
        [],
        envs(
            ("job-t", CheckpointSaved(job_id="t", epoch=0, sha256="a" * 64, metrics={"best_epoch": 0.0})),
            ("job-t", CheckpointSaved(job_id="t", epoch=1, sha256="b" * 64, metrics={})),
            ("job-t", JobProgressed(job_id="t", progress={})),
            ("job-t", CheckpointSaved(job_id="t", epoch=2, sha256="c" * 64, metrics={"best_epoch": 2.0})),
            ("job-t", CheckpointsDiscarded(job_id="t", sha256s=["b" * 64], epochs=[1])),
        ),
    )
    assert state == [
        KeptCheckpoint(epoch=0, sha256="a" * 64, best_epoch=0),
        KeptCheckpoint(epoch=2, sha256="c" * 64, best_epoch=2),
    ]


def test_registry_state_splits_models_and_datasets() -> None:
    model = ModelUploaded(
        model_id="m",
        name="n",
        task="classification",
        source_format="onnx",
        source_sha256="a" * 64,
        source_bytes=1,
    )
    data = DatasetUploaded(
        dataset_id="d", name="n", task="classification", format="yolo", sha256="b" * 64, bytes=1
    )
    state = fold(apply_registry, RegistryState(), envs(("model-m", model), ("dataset-d", data)))
    assert list(state.models.models) == ["m"] and list(state.datasets.datasets) == ["d"]
    assert {"ModelUploaded", "DatasetUploaded"} <= set(REGISTRY_TYPES)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[EventLog]:
    lg = await EventLog.open(tmp_path / "events.db")
    yield lg
    await lg.close()


class _CountingReads:
    """An EventLog that counts the envelopes each read returns (to see a projection read only new ones)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.returned = 0

    async def read(self, *args: object, **kwargs: object) -> list[Envelope]:
        out = await self.log.read(*args, **kwargs)  # type: ignore[arg-type]
        self.returned += len(out)
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self.log, name)


async def test_engine_choices_catch_up_incrementally(log: EventLog) -> None:
    """``engine: auto`` no longer scans the log from 0 on every deploy: each lookup reads only what is new."""
    store = _CountingReads(log)
    engines: Projection[EngineChoices] = Projection(store, apply_engine_selected, {}, types=ENGINE_TYPES)  # type: ignore[arg-type]
    for i in range(5):
        await log.append(f"job-{i}", [selected(str(i), "m1", "onnxruntime-cpu")])
    assert (await engines.catch_up())["m1"].selected == "onnxruntime-cpu"
    assert store.returned == 5
    await log.append("job-x", [JobProgressed(job_id="x", progress={})])
    await log.append("job-y", [selected("y", "m1", "torch-cpu")])
    assert (await engines.catch_up())["m1"].selected == "torch-cpu"
    assert store.returned == 6  # only the new selection was read
    assert (await engines.catch_up()).get("m2") is None
    assert store.returned == 6


async def test_inference_pool_resolves_engine_auto_from_its_projection(log: EventLog) -> None:
    from cvops.actors.inference import InferencePool
    from cvops.config import Settings
    from cvops.errors import ValidationFailed
    from cvops.events.projections import ModelRecord

    pool = InferencePool(Settings(), log, registry=None)  # type: ignore[arg-type]
    m1 = ModelRecord(id="m1", name="m1", task="classification")
    assert await pool._resolve_engine(m1, "torch-cpu") == "torch-cpu"  # named: no lookup
    with pytest.raises(ValidationFailed):
        await pool._resolve_engine(m1, "auto")  # no benchmark yet
    await log.append("job-1", [selected("1", "m1", "onnxruntime-cpu")])
    await log.append("job-2", [selected("2", "m2", "torch-cpu")])
    assert await pool._resolve_engine(m1, "auto") == "onnxruntime-cpu"
    await log.append("job-3", [selected("3", "m1", "openvino-cpu")])
    assert await pool._resolve_engine(m1, "auto") == "openvino-cpu"
    assert pool.engines.position == 3
    # with no max_batch in the request: the benchmark's batch for the engine it chose, else by device
    assert await pool._default_max_batch("m1", "openvino-cpu") == 1
    assert await pool._default_max_batch("m1", "onnxruntime-cpu") == 8
    assert await pool._default_max_batch("m9", "torch-cuda-fp16") == 32
