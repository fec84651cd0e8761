"""ModelRegistry actor: models and datasets, and its facade :class:`Registry` (async methods for event
loops, ``*_sync`` ones for job bodies in worker threads).  Uploads and presets are recorded, then converted
(models) or extracted and validated (datasets) in the Ray tasks of :mod:`cvops.actors.conversion`, which
run in their own worker process (``max_calls=1``, memory-capped), so a crashing or hostile file cannot
take the registry down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import msgspec
import ray

from cvops.actors.common import NAMESPACE, call, call_sync, get_actor, unwrap
from cvops.actors.conversion import convert_task
from cvops.actors.eventlog import EventStore
from cvops.actors.registry_datasets import (
    REGISTRY_TYPES,
    DatasetRecords,
    RegistryState,
    apply_registry,
)
from cvops.blobs import BlobStore
from cvops.config import Settings
from cvops.errors import ConcurrencyError, Conflict, CvopsError, NotFound, ValidationFailed
from cvops.events import projections as proj
from cvops.events.commands import (
    RegisterDataset,
    RegisterModel,
    decode_register_model,
    encode_command,
)
from cvops.events.projection import Projection
from cvops.events.schema import (
    Event,
    ModelConversionStarted,
    ModelConverted,
    ModelDeleted,
    ModelRejected,
)
from cvops.ml.conversion import ConversionRequest

log = logging.getLogger(__name__)

ACTOR_NAME = "cvops-registry"
MAX_ATTEMPTS = 3
# uploads whose original file is dropped once cvops has written the verified ONNX and torch form
UPLOAD_FORMATS_DROPPED = ("torchscript", "torch_export", "state_dict", "ultralytics", "tensorflow")


def source_dropped(m: proj.ModelRecord) -> bool:
    """A converted upload's original file is no longer kept (only what cvops wrote from it is)."""
    return m.status == "ready" and m.parent_model_id is None and m.source_format in UPLOAD_FORMATS_DROPPED


def model_stream(model_id: str) -> str:
    return f"model-{model_id}"


# ------------------------------------------------------------------------------------------ actor


@ray.remote(num_cpus=0, max_restarts=-1)
class ModelRegistry(DatasetRecords):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = EventStore.connect()
        self.blobs = BlobStore(settings.blob_root)
        self.records: Projection[RegistryState] = Projection(
            self.store, apply_registry, RegistryState(), types=REGISTRY_TYPES
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        self.started = False
        self.start_lock = asyncio.Lock()
        self.conversions = asyncio.Semaphore(max(1, settings.max_conversions))

    @property
    def models(self) -> proj.ModelsState:
        return self.records.state.models

    async def _sync(self) -> None:
        await self.records.catch_up()

    async def _append(self, stream: str, events: list[Event], expected: int | None, user: str = "") -> None:
        await self.records.fold_appended(await self.store.append(stream, events, expected, user=user))

    async def start(self) -> int:
        async with self.start_lock:
            if not self.started:
                await self._start()
        return len(self.models.models)

    async def _start(self) -> None:
        await self._sync()
        for m in list(self.models.models.values()):
            if m.status in ("pending", "converting"):
                if m.attempts >= MAX_ATTEMPTS:
                    await self._append(
                        model_stream(m.id),
                        [
                            ModelRejected(
                                model_id=m.id,
                                reason=f"conversion did not finish after {m.attempts} attempts",
                            )
                        ],
                        m.version,
                    )
                else:
                    self._spawn_convert(m.id)
        for d in list(self.datasets.datasets.values()):
            if d.status == "pending":
                self._spawn_dataset(d.id)
        for m in list(self.models.models.values()):
            if source_dropped(m) and m.source_sha256:
                self._release(m.source_sha256)  # originals kept by an older version
        self.started = True  # only once the rebuild and the resumptions went through

    # --------------------------------------------------------------------------------- models
    def _model(self, model_id: str) -> proj.ModelRecord:
        m = self.models.models.get(model_id)
        if m is None or m.status == "deleted":
            raise NotFound(f"no model {model_id!r}", {"model_id": model_id})
        return m

    def _view(self, m: proj.ModelRecord) -> bytes:
        """A record as it leaves the actor: msgpack bytes, decoded by the :class:`Registry` facade."""
        return msgspec.msgpack.encode(m)

    async def _ensure_started(self) -> None:
        """Ray restarts this actor after a crash (max_restarts=-1): rebuild and resume conversions."""
        if not self.started:
            await self.start()

    async def register(self, command: bytes, user: str) -> bytes:
        """Record an upload / preset / trained model (a msgpack :class:`RegisterModel`) and start
        converting it."""
        await self._ensure_started()
        cmd = decode_register_model(command)
        cmd.check()
        model_id = cmd.model_id or uuid.uuid4().hex[:16]
        await self._append(model_stream(model_id), [cmd.to_event(model_id)], 0, user)
        self._spawn_convert(model_id)
        return self._view(self._model(model_id))

    def _spawn_convert(self, model_id: str) -> None:
        if model_id not in self.running:
            self.running[model_id] = asyncio.create_task(self._convert(model_id))

    async def _convert(self, model_id: str) -> None:
        try:
            m = self._model(model_id)
            attempt = m.attempts + 1
            await self._append(
                model_stream(model_id),
                [ModelConversionStarted(model_id=model_id, attempt=attempt)],
                m.version,
            )
            req = msgspec.structs.replace(
                msgspec.convert(self._model(model_id), ConversionRequest, from_attributes=True),
                model_id=model_id,
            )
            try:
                async with self.conversions:
                    converted = await self._run_conversion(req)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a rejection with its reason
                inner = unwrap(exc)
                if isinstance(inner, CvopsError):
                    reason, details = inner.message, inner.details
                else:
                    reason, details = f"conversion failed: {type(inner).__name__}: {str(inner)[:500]}", {}
                if isinstance(inner, ray.exceptions.WorkerCrashedError | ray.exceptions.OutOfMemoryError):
                    reason = "conversion crashed (out of memory or a hostile model)"
                # before the rejection is visible: a caller that sees "failed" finds no file left
                self._forget_source(model_id)
                await self._append(
                    model_stream(model_id),
                    [ModelRejected(model_id=model_id, reason=reason, details=details)],
                    self._model(model_id).version,
                )
                return
            event = msgspec.structs.replace(converted, model_id=model_id)
            await self._append(model_stream(model_id), [event], self._model(model_id).version)
            m = self._model(model_id)
            if source_dropped(m) and m.source_sha256:
                self._release(m.source_sha256)  # the upload itself is never loaded again
        except CvopsError as exc:
            log.warning("conversion of %s could not be recorded: %s", model_id, exc)
        finally:
            self.running.pop(model_id, None)

    async def _run_conversion(self, req: ConversionRequest) -> ModelConverted:
        """The conversion task under a wall-clock limit; past it the task is killed and the model rejected."""
        limit = self.settings.conversion_timeout_s
        ref = convert_task.remote(self.settings, req)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=limit)
        except TimeoutError:
            ray.cancel(ref, force=True)
            raise ValidationFailed(
                f"conversion took longer than {limit:g} s and was stopped (CVOPS_CONVERSION_TIMEOUT_S)",
                {"timeout_s": limit},
            ) from None

    def _forget_source(self, model_id: str) -> None:
        """A rejected upload leaves no file behind (unless something else uses the same bytes)."""
        m = self.models.models.get(model_id)
        if m is not None and m.source_sha256:
            self._release(m.source_sha256, skip_model=model_id)

    def _in_use(self, sha: str, skip_model: str = "", skip_dataset: str = "") -> bool:
        """Blobs are content-addressed: the same bytes may back several records."""
        for x in self.models.models.values():
            if x.id == skip_model or x.status in ("failed", "deleted"):
                continue
            if x.onnx is not None and sha in (x.onnx.sha256, x.onnx.torch_sha256):
                return True
            if sha == x.source_sha256 and not source_dropped(x):
                return True
        return any(
            d.sha256 == sha and d.id != skip_dataset and d.status != "failed"
            for d in self.datasets.datasets.values()
        )

    def _release(self, sha: str, skip_model: str = "", skip_dataset: str = "") -> bool:
        if self._in_use(sha, skip_model, skip_dataset):
            return False
        return self.blobs.delete(sha)

    async def release_blob(self, sha: str) -> bool:
        """Delete an upload's blob that no record references (the gateway's rejected uploads)."""
        await self._ensure_started()
        await self._sync()
        return self._release(sha)

    async def get(self, model_id: str) -> bytes:
        await self._ensure_started()
        await self._sync()
        return self._view(self._model(model_id))

    async def list_models(self) -> bytes:
        await self._sync()
        return msgspec.msgpack.encode(
            [
                m
                for m in sorted(self.models.models.values(), key=lambda m: m.created_ts)
                if m.status != "deleted"
            ]
        )

    async def wait(self, model_id: str, timeout: float) -> bytes:
        def settled(state: RegistryState) -> bool:
            m = state.models.models.get(model_id)
            return m is None or m.status in ("ready", "failed", "deleted")

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        await self.records.wait_until(settled, timeout)
        task = self.running.get(model_id)
        if task is not None:  # the conversion's last step, dropping the upload, follows its event
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), max(0.0, end - loop.time()))
        return self._view(self._model(model_id))

    async def delete(self, model_id: str, user: str) -> None:
        # a conversion may append to the stream meanwhile: read the current version, retry on a race
        for _ in range(5):
            await self._sync()
            m = self._model(model_id)
            try:
                await self._append(model_stream(model_id), [ModelDeleted(model_id=model_id)], m.version, user)
                return
            except ConcurrencyError:
                continue
        raise Conflict(
            f"model {model_id} changed while it was being deleted; try again", {"model_id": model_id}
        )

    async def state_hash(self) -> str:
        await self._sync()
        return proj.state_hash([self.models, self.datasets])

    async def stop(self) -> None:
        for t in self.running.values():
            t.cancel()


_MODEL = msgspec.msgpack.Decoder(proj.ModelRecord)
_MODELS = msgspec.msgpack.Decoder(list[proj.ModelRecord])
_DATASET = msgspec.msgpack.Decoder(proj.DatasetRecord)
_DATASETS = msgspec.msgpack.Decoder(list[proj.DatasetRecord])


class Registry:
    """Public facade over the registry actor (models and datasets).  Records cross the process boundary
    as msgpack bytes and come out of here as :class:`~cvops.events.projections.ModelRecord` and
    :class:`~cvops.events.projections.DatasetRecord` Structs."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @classmethod
    async def start(cls, settings: Settings) -> Registry:
        handle = ModelRegistry.options(  # type: ignore[attr-defined]
            name=ACTOR_NAME, namespace=NAMESPACE, get_if_exists=True, max_concurrency=1000
        ).remote(settings)
        await call(handle.start.remote())
        return cls(handle)

    @classmethod
    def connect(cls) -> Registry:
        return cls(get_actor(ACTOR_NAME))

    async def register(self, command: RegisterModel, user: str) -> proj.ModelRecord:
        return _MODEL.decode(await call(self._h.register.remote(encode_command(command), user)))

    async def get(self, model_id: str) -> proj.ModelRecord:
        return _MODEL.decode(await call(self._h.get.remote(model_id)))

    async def list_models(self) -> list[proj.ModelRecord]:
        return _MODELS.decode(await call(self._h.list_models.remote()))

    async def wait(self, model_id: str, timeout: float) -> proj.ModelRecord:
        return _MODEL.decode(await call(self._h.wait.remote(model_id, timeout)))

    async def delete(self, model_id: str, user: str) -> None:
        await call(self._h.delete.remote(model_id, user))

    async def state_hash(self) -> str:
        return await call(self._h.state_hash.remote())  # type: ignore[no-any-return]

    async def release_blob(self, sha: str) -> bool:
        return await call(self._h.release_blob.remote(sha))  # type: ignore[no-any-return]

    async def register_dataset(self, command: RegisterDataset, user: str) -> proj.DatasetRecord:
        return _DATASET.decode(await call(self._h.register_dataset.remote(encode_command(command), user)))

    async def get_dataset(self, dataset_id: str) -> proj.DatasetRecord:
        return _DATASET.decode(await call(self._h.get_dataset.remote(dataset_id)))

    async def list_datasets(self) -> list[proj.DatasetRecord]:
        return _DATASETS.decode(await call(self._h.list_datasets.remote()))

    async def wait_dataset(self, dataset_id: str, timeout: float) -> proj.DatasetRecord:
        return _DATASET.decode(await call(self._h.wait_dataset.remote(dataset_id, timeout)))

    async def stop(self) -> None:
        await call(self._h.stop.remote())

    # ------------------------------------------------------------------ sync (job bodies' threads)
    def register_sync(self, command: RegisterModel, user: str) -> proj.ModelRecord:
        return _MODEL.decode(call_sync(self._h.register.remote(encode_command(command), user)))

    def get_sync(self, model_id: str) -> proj.ModelRecord:
        return _MODEL.decode(call_sync(self._h.get.remote(model_id)))

    def wait_sync(self, model_id: str, timeout: float) -> proj.ModelRecord:
        return _MODEL.decode(call_sync(self._h.wait.remote(model_id, timeout)))

    def delete_sync(self, model_id: str, user: str) -> None:
        call_sync(self._h.delete.remote(model_id, user))

    def get_dataset_sync(self, dataset_id: str) -> proj.DatasetRecord:
        return _DATASET.decode(call_sync(self._h.get_dataset.remote(dataset_id)))
