"""The ModelRegistry's dataset half: register a dataset upload, extract and validate it in a Ray task
(:func:`cvops.actors.conversion.dataset_task`), record DatasetValidated / DatasetRejected, read back.

A base class of :class:`cvops.actors.registry.ModelRegistry` (one actor holds models and datasets: a
model's blobs and a dataset's may be the same bytes); the actor provides the log and the blob release."""

from __future__ import annotations

import asyncio
import logging
import uuid

import msgspec

from cvops.actors.common import unwrap
from cvops.actors.conversion import dataset_task
from cvops.actors.eventlog import EventStore
from cvops.config import Settings
from cvops.errors import CvopsError, NotFound
from cvops.events import projections as proj
from cvops.events.commands import decode_register_dataset
from cvops.events.projection import Projection
from cvops.events.schema import DatasetRejected, Envelope, Event

log = logging.getLogger(__name__)


def dataset_stream(dataset_id: str) -> str:
    return f"dataset-{dataset_id}"


class RegistryState(msgspec.Struct, kw_only=True):
    """What the registry actor folds from the log: its models and its datasets."""

    models: proj.ModelsState = msgspec.field(default_factory=proj.ModelsState)
    datasets: proj.DatasetsState = msgspec.field(default_factory=proj.DatasetsState)


REGISTRY_TYPES = sorted(proj.MODEL_TYPES | proj.DATASET_TYPES)


def apply_registry(state: RegistryState, env: Envelope) -> RegistryState:
    if env.stream.startswith("model-"):
        state.models = proj.apply_models(state.models, env)
    else:
        state.datasets = proj.apply_datasets(state.datasets, env)
    return state


class DatasetRecords:
    """Dataset commands and queries of the registry actor."""

    settings: Settings
    store: EventStore
    records: Projection[RegistryState]
    running: dict[str, asyncio.Task[None]]

    @property
    def datasets(self) -> proj.DatasetsState:
        return self.records.state.datasets

    async def _sync(self) -> None:
        raise NotImplementedError

    async def _append(self, stream: str, events: list[Event], expected: int | None, user: str = "") -> None:
        raise NotImplementedError

    async def _ensure_started(self) -> None:
        raise NotImplementedError

    def _release(self, sha: str, skip_model: str = "", skip_dataset: str = "") -> bool:
        raise NotImplementedError

    def _dataset(self, dataset_id: str) -> proj.DatasetRecord:
        d = self.datasets.datasets.get(dataset_id)
        if d is None:
            raise NotFound(f"no dataset {dataset_id!r}", {"dataset_id": dataset_id})
        return d

    async def register_dataset(self, command: bytes, user: str) -> bytes:
        """Record an uploaded dataset (a msgpack :class:`RegisterDataset`) and start validating it."""
        await self._ensure_started()
        cmd = decode_register_dataset(command)
        cmd.check()
        dataset_id = uuid.uuid4().hex[:16]
        await self._append(dataset_stream(dataset_id), [cmd.to_event(dataset_id)], 0, user)
        self._spawn_dataset(dataset_id)
        return msgspec.msgpack.encode(self._dataset(dataset_id))

    def _spawn_dataset(self, dataset_id: str) -> None:
        key = f"dataset:{dataset_id}"
        if key not in self.running:
            self.running[key] = asyncio.create_task(self._validate(dataset_id, key))

    async def _validate(self, dataset_id: str, key: str) -> None:
        try:
            d = self._dataset(dataset_id)
            version = await self.store.stream_version(dataset_stream(dataset_id))
            try:
                validated = await dataset_task.remote(self.settings, d)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a rejection with its reason
                inner = unwrap(exc)
                reason = (
                    inner.message
                    if isinstance(inner, CvopsError)
                    else f"{type(inner).__name__}: {str(inner)[:500]}"
                )
                details = inner.details if isinstance(inner, CvopsError) else {}
                self._release(d.sha256, skip_dataset=dataset_id)  # before the rejection is visible
                await self._append(
                    dataset_stream(dataset_id),
                    [DatasetRejected(dataset_id=dataset_id, reason=reason, details=details)],
                    version,
                )
                return
            event = msgspec.structs.replace(validated, dataset_id=dataset_id)
            await self._append(dataset_stream(dataset_id), [event], version)
        except CvopsError as exc:
            log.warning("validation of %s could not be recorded: %s", dataset_id, exc)
        finally:
            self.running.pop(key, None)

    async def get_dataset(self, dataset_id: str) -> bytes:
        await self._sync()
        return msgspec.msgpack.encode(self._dataset(dataset_id))

    async def list_datasets(self) -> bytes:
        await self._sync()
        return msgspec.msgpack.encode(sorted(self.datasets.datasets.values(), key=lambda d: d.created_ts))

    async def wait_dataset(self, dataset_id: str, timeout: float) -> bytes:
        def settled(state: RegistryState) -> bool:
            d = state.datasets.datasets.get(dataset_id)
            return d is None or d.status in ("ready", "failed")

        await self.records.wait_until(settled, timeout)
        return msgspec.msgpack.encode(self._dataset(dataset_id))
