"""InferencePool: per deployment, ``workers`` InferenceWorker actors (default: min(CVOPS_INFERENCE_WORKERS,
cores)), each holding one engine session; the gateway-side facade owns the deployments (event-sourced, restored on restart) and
one BatchingRouter per deployment, so a request makes exactly one hop: gateway → worker actor.

Decoding, preprocessing and postprocessing run in the worker processes: the gateway only moves bytes,
so one heavy image never stalls the other users, and decoding is spread over the workers' processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import ray
from ray.exceptions import RayActorError

from cvops import errors
from cvops.actors.common import NAMESPACE, call, worker_priority
from cvops.config import Settings
from cvops.errors import Conflict, CvopsError, GatewayTimeout, NotFound, ValidationFailed
from cvops.events import projections as proj
from cvops.events.job_facts import ENGINE_TYPES, EngineChoices, apply_engine_selected
from cvops.events.projection import Projection
from cvops.events.schema import DeploymentCreated, DeploymentDeleted, Preprocessing
from cvops.events.store import Store
from cvops.ml.spec import DEFAULT_MAX_WAIT_MS, default_max_batch
from cvops.ml.video import VIDEO_TYPES, media_type
from cvops.serving import BatchingRouter, WorkerDied
from cvops.views import DeploymentView

if TYPE_CHECKING:
    from cvops.actors.registry import Registry

log = logging.getLogger(__name__)

STATS_EVERY_S = 60.0


def deployment_stream(deployment_id: str) -> str:
    return f"deployment-{deployment_id}"


def _gpu_preprocessor(settings: Settings, device: str, pre: Preprocessing) -> Any:
    """A GpuPreprocessor for a CUDA engine when GPU decoding is on and possible here, else None."""
    if device != "cuda" or not settings.gpu_decode:
        return None
    from cvops.ml.gpu_preprocess import GpuPreprocessor, gpu_decode_reason

    reason = gpu_decode_reason()
    if reason:
        log.warning("JPEGs are decoded on the CPU: %s", reason)
        return None
    return GpuPreprocessor(pre)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class InferenceWorker:
    """Holds one engine session for one deployment; ``predict`` runs one batch."""

    def __init__(
        self, settings: Settings, model_msgpack: bytes, engine: str, threads: int, max_batch: int
    ) -> None:
        """``model_msgpack``: the :class:`~cvops.events.projections.ModelRecord` as msgpack bytes."""
        worker_priority()
        from cvops.blobs import BlobStore
        from cvops.ml.engines import get_engine
        from cvops.ml.inference import Predictor
        from cvops.ml.torch_source import build_torch_source

        blobs = BlobStore(settings.blob_root)
        model = msgspec.msgpack.decode(model_msgpack, type=proj.ModelRecord)
        onnx = model.onnx
        if onnx is None:
            raise ValidationFailed(f"model {model.id} has no ONNX form (status {model.status})")
        pre = onnx.preprocessing
        eng = get_engine(engine)
        if hasattr(eng, "plan_cache"):  # TensorRT: the deployment's workers build one plan, then reuse it
            from cvops.ml.plan_cache import PlanCache

            eng.plan_cache = PlanCache.beside_blobs(settings.blob_root)
        has_torch = bool(onnx.torch_sha256)
        eng.load(
            blobs.path(onnx.sha256),
            torch_module_factory=(lambda: build_torch_source(model, blobs)) if has_torch else None,
            threads=threads,
            max_batch=max_batch,
        )
        self.predictor = Predictor(
            eng,
            model.task,
            model.labels,
            pre,
            threads=threads,
            video_timeout_s=settings.video_deadline_s,
            gpu=_gpu_preprocessor(settings, eng.device, pre),
        )

    # No Ray task event per batch: traffic is counted in metrics, not recorded (DESIGN.md §2), and the
    # GCS would otherwise keep up to 100k task records of it (+50 MiB in a 4-minute soak at 550 req/s).
    @ray.method(enable_task_events=False)
    def predict(self, items: list[tuple[bytes, str, int]]) -> list[dict[str, Any]]:
        return self.predictor.predict_images(items)

    def ping(self) -> int:
        return os.getpid()


class _WorkerHandle:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def call(self, items: list[tuple[bytes, str, int]]) -> list[dict[str, Any]]:
        try:
            return await self.handle.predict.remote(items)  # type: ignore[no-any-return]
        except RayActorError as exc:
            raise WorkerDied(str(exc)[:200]) from exc


class _Deployment:
    def __init__(
        self,
        record: proj.DeploymentRecord,
        workers: list[Any],
        router: BatchingRouter[Any, Any],
        task: str = "classification",
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.record = record
        self.workers = workers
        self.router = router
        self.task = task
        self.preprocessing = preprocessing or Preprocessing()
        self.window_start = time.time()


def gpu_share(engine: str, workers: int) -> float:
    """GPU engines ask Ray for a share of one GPU (so the GPU is visible to them); CPU engines none."""
    if not any(tag in engine for tag in ("cuda", "tensorrt")):
        return 0.0
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    return 0.0 if gpus == 0 else round(min(1.0, 1.0 / max(1, workers)), 4)


def threads_per_worker(workers: int) -> int:
    """Size engine threads so the pool does not oversubscribe the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def machine_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a container's cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def default_workers(settings: Settings, cores: int | None = None) -> int:
    """Workers for a deployment whose request names none: ``min(CVOPS_INFERENCE_WORKERS, cores)``.
    A deployment that names ``workers`` gets exactly that many.

    Why the cap, measured (scripts/bench_serving.py): each worker decodes and preprocesses its batch
    in its own process, so on a CPU engine about one worker per core with one engine thread each is
    best — on 2 cores 1 worker x 2 threads gave half the throughput, and 3, 4 or 10 workers no more
    than 2 while 10 made batches smaller, held 5x the memory and took 5x longer to deploy.  A GPU engine
    is fed by the same CPU-side decoding (8 workers on 16 cores served resnet50 on torch-cuda at ~1,600
    req/s, 4 workers ~900).  More worker processes than cores also trip Ray's "Nx the maximum expected
    startup concurrency" warning (docs/operations.md).
    """
    return max(1, min(settings.inference_workers, cores if cores is not None else machine_cores()))


class InferencePool:
    """Gateway-side owner of deployments; see the module docstring."""

    def __init__(self, settings: Settings, store: Store, registry: Registry) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.deployments: Projection[proj.DeploymentsState] = Projection(
            store, proj.apply_deployments, proj.DeploymentsState(), prefix="deployment-"
        )
        # the engine each model's latest benchmark selected (``engine: auto``), caught up incrementally
        self.engines: Projection[EngineChoices] = Projection(
            store, apply_engine_selected, {}, types=ENGINE_TYPES
        )
        self.live: dict[str, _Deployment] = {}
        self.lock = asyncio.Lock()
        self.stats_task: asyncio.Task[None] | None = None
        self.metrics: Any = None

    @property
    def state(self) -> proj.DeploymentsState:
        return self.deployments.state

    async def _sync(self) -> None:
        await self.deployments.catch_up()

    async def start(self) -> None:
        """Rebuild from the log and bring every active deployment back, with no user action."""
        await self._sync()
        for rec in list(self.state.deployments.values()):
            if rec.status == "active":
                try:
                    await self._bring_up(rec)
                except CvopsError as exc:
                    log.warning("deployment %s could not be restored: %s", rec.id, exc)
        self.stats_task = asyncio.create_task(self._stats_loop())

    async def _resolve_engine(self, model: proj.ModelRecord, engine: str) -> str:
        if engine != "auto":
            return engine
        chosen = (await self.engines.catch_up()).get(model.id)
        if chosen is None or chosen.selected is None:
            raise ValidationFailed(
                "engine 'auto' needs a finished benchmark of this model; run a benchmark job first",
                {"field": "engine", "model_id": model.id},
            )
        return chosen.selected

    async def _default_max_batch(self, model_id: str, engine: str) -> int:
        chosen = (await self.engines.catch_up()).get(model_id)
        if chosen is None:
            return default_max_batch(engine, None, None)
        return default_max_batch(engine, chosen.selected, chosen.selected_batch)

    async def _bring_up(self, rec: proj.DeploymentRecord) -> _Deployment:
        model = await self.registry.get(rec.model_id)
        if model.status != "ready":
            raise ValidationFailed(f"model {rec.model_id} is {model.status}, not ready")
        model_msgpack = msgspec.msgpack.encode(model)
        threads = threads_per_worker(rec.workers)
        workers = [
            InferenceWorker.options(  # type: ignore[attr-defined]
                name=f"cvops-infer-{rec.id}-{i}",
                namespace=NAMESPACE,
                get_if_exists=True,
                num_gpus=gpu_share(rec.engine, rec.workers),
            ).remote(self.settings, model_msgpack, rec.engine, threads, rec.max_batch)
            for i in range(rec.workers)
        ]
        try:
            await asyncio.gather(*(call(w.ping.remote()) for w in workers))
        except (CvopsError, RayActorError, ray.exceptions.RayTaskError) as exc:
            for w in workers:
                ray.kill(w, no_restart=True)
            inner = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
            if isinstance(inner, CvopsError):
                raise inner from None
            raise ValidationFailed(
                f"engine {rec.engine} could not load the model: {str(inner)[:300]}"
            ) from exc
        holder: list[_Deployment] = []

        def on_died(index: int) -> None:
            # Ray restarts the actor (max_restarts=-1); route to it again once it answers
            if holder:
                asyncio.get_running_loop().create_task(self._revive(holder[0], index))

        router: BatchingRouter[Any, Any] = BatchingRouter(
            [_WorkerHandle(w) for w in workers],
            queue_limit=self.settings.queue_limit,
            max_batch=rec.max_batch,
            max_wait_ms=rec.max_wait_ms,
            timeout_s=self.settings.inference_timeout_s,
            on_worker_died=on_died,
        )
        pre = model.onnx.preprocessing if model.onnx is not None else Preprocessing()
        dep = _Deployment(rec, workers, router, model.task, pre)
        holder.append(dep)
        self.live[rec.id] = dep
        return dep

    async def _revive(self, dep: _Deployment, index: int, timeout_s: float = 300.0) -> None:
        """Wait for Ray to restart worker ``index`` (it reloads its engine), then route to it again."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        handle = dep.workers[index]
        while loop.time() < end and self.live.get(dep.record.id) is dep:
            try:
                await asyncio.wait_for(call(handle.ping.remote()), 30)
            except (CvopsError, RayActorError, TimeoutError) as exc:
                log.debug("worker %s/%d not back yet: %s", dep.record.id, index, exc)
                await asyncio.sleep(1.0)
                continue
            dep.router.replace_worker(index, _WorkerHandle(handle))
            log.info("inference worker %s/%d is back", dep.record.id, index)
            return

    async def create(
        self,
        model_id: str,
        engine: str,
        workers: int | None,
        max_batch: int | None,
        max_wait_ms: float | None,
        user: str,
    ) -> DeploymentView:
        """``max_batch`` None: the batch the model's benchmark selected for this engine, else by device
        (:func:`cvops.serving.default_max_batch`); ``max_wait_ms`` None: 5 ms."""
        from cvops.ml.engines import ENGINE_NAMES

        model = await self.registry.get(model_id)
        if model.status != "ready":
            raise ValidationFailed(f"model {model_id} is {model.status}, not ready", {"field": "model_id"})
        if engine != "auto" and engine not in ENGINE_NAMES:
            raise ValidationFailed(
                f"unknown engine {engine!r}", {"field": "engine", "known": ["auto", *ENGINE_NAMES]}
            )
        engine = await self._resolve_engine(model, engine)
        if max_batch is None:
            max_batch = await self._default_max_batch(model_id, engine)
        if max_wait_ms is None:
            max_wait_ms = DEFAULT_MAX_WAIT_MS
        n = workers or default_workers(self.settings)
        dep_id = uuid.uuid4().hex[:16]
        event = DeploymentCreated(
            deployment_id=dep_id,
            model_id=model_id,
            engine=engine,
            workers=n,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            created_by=user,
        )
        fields = ("model_id", "engine", "workers", "max_batch", "max_wait_ms", "created_by")
        rec = proj.DeploymentRecord(id=dep_id, **{f: getattr(event, f) for f in fields})
        async with self.lock:
            dep = await self._bring_up(rec)  # fails before anything is recorded if the engine cannot load
            try:
                envs = await self.store.append(deployment_stream(dep_id), [event], 0, user=user)
            except BaseException:
                self.live.pop(dep_id, None)  # not in the log: it must not serve
                await self._tear_down(dep)
                raise
            await self.deployments.fold_appended(envs)
        return self.view(dep_id)

    def view(self, dep_id: str) -> DeploymentView:
        rec = self.state.deployments.get(dep_id)
        if rec is None or rec.status == "deleted":
            raise NotFound(f"no deployment {dep_id!r}", {"deployment_id": dep_id})
        live = self.live.get(dep_id)
        return DeploymentView(
            **msgspec.structs.asdict(rec),
            serving=live is not None,
            router=live.router.stats() if live is not None else msgspec.UNSET,
        )

    async def list_deployments(self) -> list[DeploymentView]:
        await self._sync()
        return [self.view(d) for d, r in self.state.deployments.items() if r.status == "active"]

    async def get(self, dep_id: str) -> DeploymentView:
        await self._sync()
        return self.view(dep_id)

    async def delete(self, dep_id: str, user: str) -> None:
        async with self.lock:
            await self._sync()
            rec = self.state.deployments.get(dep_id)
            if rec is None or rec.status == "deleted":
                raise NotFound(f"no deployment {dep_id!r}", {"deployment_id": dep_id})
            version = await self.store.stream_version(deployment_stream(dep_id))
            envs = await self.store.append(
                deployment_stream(dep_id), [DeploymentDeleted(deployment_id=dep_id)], version, user=user
            )
            await self.deployments.fold_appended(envs)
            dep = self.live.pop(dep_id, None)
        if dep is not None:
            await self._tear_down(dep)

    async def _tear_down(self, dep: _Deployment) -> None:
        await dep.router.close()
        for w in dep.workers:
            try:
                ray.kill(w, no_restart=True)
            except (RayActorError, ValueError) as exc:
                log.debug("worker gone: %s", exc)

    async def predict(self, dep_id: str, body: bytes, content_type: str, top_k: int) -> dict[str, Any]:
        dep = self.live.get(dep_id)
        if dep is None:
            if dep_id in self.state.deployments and self.state.deployments[dep_id].status == "active":
                raise Conflict(f"deployment {dep_id} is not serving (its engine could not be loaded)")
            raise NotFound(f"no deployment {dep_id!r}", {"deployment_id": dep_id})
        if media_type(content_type) in VIDEO_TYPES and self.fans_out_video(dep_id):
            return await self.predict_video(dep_id, body, top_k)
        result: dict[str, Any] = await dep.router.submit((body, content_type, top_k))
        return result

    def fans_out_video(self, dep_id: str) -> bool:
        """Whether a video for this deployment is decoded here and spread over its workers (several
        workers) rather than decoded and run by one worker."""
        dep = self.live.get(dep_id)
        return dep is not None and len(dep.workers) > 1

    async def predict_video(self, dep_id: str, body: bytes, top_k: int) -> dict[str, Any]:
        """Decode the video once here and spread its frames over the deployment's workers in batches
        (through the same router as images), keeping their order; a one-worker deployment decodes the
        video in its worker instead (:meth:`cvops.ml.inference.Predictor.predict_video`)."""
        from cvops.ml.video import VIDEO_MAX_FRAMES, decode_video, fan_out_frames

        dep = self.live.get(dep_id)
        if dep is None:
            raise NotFound(f"no deployment {dep_id!r}", {"deployment_id": dep_id})
        rec, pre = dep.record, dep.preprocessing
        timeout = self.settings.video_deadline_s
        fit = (int(pre.image_size[0]), int(pre.image_size[-1])) if pre.resize == "letterbox" else None
        key = "detections" if dep.task == "detection" else "predictions"

        async def submit(data: bytes, ctype: str) -> dict[str, Any]:
            out: dict[str, Any] = await dep.router.submit((data, ctype, top_k))
            if "error" in out:
                raise errors.from_dict(out)
            return out

        try:
            video = await asyncio.to_thread(
                decode_video, body, VIDEO_MAX_FRAMES, 1, fit, time.monotonic() + timeout
            )
            frames = await fan_out_frames(video, submit, in_flight=len(dep.workers) * rec.max_batch)
        except GatewayTimeout as e:
            raise GatewayTimeout(
                f"video decoding did not finish within {timeout:g} s (CVOPS_VIDEO_TIMEOUT_S); "
                "send a shorter or smaller video",
                {**e.details, "timeout_s": timeout},
            ) from None
        if not frames:
            raise ValidationFailed("the video has no decodable frames")
        return {
            "frames": [{"index": i, key: r[key]} for i, r in frames],
            "fps": video.fps,
            "width": video.width,
            "height": video.height,
        }

    def router_of(self, dep_id: str) -> BatchingRouter[Any, Any] | None:
        dep = self.live.get(dep_id)
        return dep.router if dep is not None else None

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            await self.flush_stats()

    async def flush_stats(self) -> int:
        """One InferenceStats event per deployment that served requests in the window."""
        n = 0
        async with self.lock:  # never between a delete's version read and its append
            for dep_id, dep in list(self.live.items()):
                window = dep.router.drain_window()
                if window.requests == 0 and window.rejected == 0:
                    continue
                try:
                    await self.store.append(deployment_stream(dep_id), [window.to_event(dep_id)])
                    n += 1
                except CvopsError as exc:
                    log.warning("stats for %s not recorded: %s", dep_id, exc)
        return n

    async def stop(self) -> None:
        if self.stats_task is not None:
            self.stats_task.cancel()
        try:
            await self.flush_stats()
        except CvopsError as exc:
            log.warning("final stats not recorded: %s", exc)
        for dep in list(self.live.values()):
            await dep.router.close()
        self.live.clear()
