"""The facades hand out typed records (msgpack between processes), and a record's JSON is byte for byte
what the dict it replaced encoded to (same fields, same order)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import msgspec

from cvops.actors import registry as reg
from cvops.actors.inference import DeploymentView, InferencePool
from cvops.config import Settings
from cvops.events.commands import (
    RegisterDataset,
    RegisterModel,
    decode_register_dataset,
    decode_register_model,
)
from cvops.events.projections import DatasetRecord, DeploymentRecord, ModelRecord, OnnxInfo
from cvops.events.schema import Parity, Preprocessing, TensorSpec
from cvops.serving import RouterStats

MODEL = ModelRecord(
    id="m1",
    name="resnet",
    task="classification",
    status="ready",
    source_format="preset",
    input_shape=[1, 3, 224, 224],
    labels=["cat", "dog"],
    preset="resnet18",
    num_classes=2,
    hyperparameters={"lr": 0.001, "epochs": 3},
    onnx=OnnxInfo(
        sha256="a" * 64,
        bytes=123,
        opset=17,
        inputs=[TensorSpec(name="input", shape=["N", 3, 224, 224], dtype="float32")],
        outputs=[TensorSpec(name="logits", shape=["N", 2], dtype="float32")],
        parameter_count=10,
        preprocessing=Preprocessing(image_size=[224, 224]),
        torch_sha256="b" * 64,
        torch_format="state_dict",
        torch_arch="resnet18",
    ),
    parity=Parity(max_abs_diff=1.5e-6, top1_agreement=1.0, tolerance=1e-4, samples=4, passed=True),
    error_details={"k": [1, 2.5]},
    attempts=1,
    created_ts=1700000000.25,
    updated_ts=1700000001.0,
    version=3,
)
COMMAND = RegisterModel(name="x", task="classification", source_format="preset", preset="resnet18")
DATASET_COMMAND = RegisterDataset(
    name="pets", task="classification", format="imagefolder", sha256="c" * 64, bytes=4096
)
DATASET = DatasetRecord(
    id="d1",
    name="pets",
    task="classification",
    format="imagefolder",
    sha256="c" * 64,
    bytes=4096,
    status="ready",
    classes=["cat", "dog"],
    counts={"train": {"cat": 3, "dog": 4}},
    image_stats={"mean_w": 32.0},
    path="datasets/d1",
    created_ts=1700000002.5,
)


def test_records_cross_the_boundary_unchanged_and_encode_as_the_dicts_did() -> None:
    for rec, one, many in ((MODEL, reg._MODEL, reg._MODELS), (DATASET, reg._DATASET, reg._DATASETS)):
        back = one.decode(msgspec.msgpack.encode(rec))
        assert back == rec and type(back) is type(rec)
        assert msgspec.json.encode(back) == msgspec.json.encode(msgspec.to_builtins(rec))
        assert many.decode(msgspec.msgpack.encode([rec, rec])) == [rec, rec]


class _Method:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.args: tuple[Any, ...] = ()

    def remote(self, *args: Any) -> Any:
        self.args = args

        async def done() -> Any:
            return self.result

        return done()


def test_the_registry_facade_returns_structs() -> None:
    one_model, models = msgspec.msgpack.encode(MODEL), msgspec.msgpack.encode([MODEL])
    one_ds, datasets = msgspec.msgpack.encode(DATASET), msgspec.msgpack.encode([DATASET])
    handle = SimpleNamespace(
        get=_Method(one_model),
        wait=_Method(one_model),
        register=_Method(one_model),
        list_models=_Method(models),
        get_dataset=_Method(one_ds),
        wait_dataset=_Method(one_ds),
        register_dataset=_Method(one_ds),
        list_datasets=_Method(datasets),
    )
    facade = reg.Registry(handle)

    async def go() -> None:
        assert await facade.get("m1") == MODEL
        assert await facade.wait("m1", 1.0) == MODEL
        assert await facade.register(COMMAND, "u") == MODEL
        assert await facade.list_models() == [MODEL]
        assert await facade.get_dataset("d1") == DATASET
        assert await facade.wait_dataset("d1", 1.0) == DATASET
        assert await facade.register_dataset(DATASET_COMMAND, "u") == DATASET
        assert await facade.list_datasets() == [DATASET]

    asyncio.run(go())
    assert handle.wait.args == ("m1", 1.0)
    wire, user = handle.register.args  # the command crosses as msgpack and decodes back typed
    assert decode_register_model(wire) == COMMAND and user == "u"
    wire, user = handle.register_dataset.args
    assert decode_register_dataset(wire) == DATASET_COMMAND and user == "u"


def _old_view(rec: DeploymentRecord, stats: RouterStats | None) -> bytes:
    """What ``InferencePool.view`` encoded before it returned a Struct."""
    out: dict[str, Any] = msgspec.to_builtins(rec)
    out["serving"] = stats is not None
    if stats is not None:
        out["router"] = msgspec.to_builtins(stats)
    return msgspec.json.encode(out)


def test_a_deployment_view_encodes_as_the_dict_did() -> None:
    rec = DeploymentRecord(
        id="p1", model_id="m1", engine="onnxruntime-cpu", workers=2, created_by="ann", stats={"requests": 5}
    )
    stats = RouterStats(
        requests=5,
        completed=5,
        rejected=0,
        timed_out=0,
        errors=0,
        retries=0,
        worker_deaths=0,
        queued=0,
        inflight=0,
        workers=2,
        workers_alive=2,
        inflight_per_worker=[0, 0],
        batch_sizes={1: 3, 2: 1},
        p50_ms=1.5,
        p95_ms=2.0,
        p99_ms=2.5,
    )
    pool = InferencePool(Settings(), store=None, registry=None)  # type: ignore[arg-type]
    pool.state.deployments["p1"] = rec
    view = pool.view("p1")
    assert isinstance(view, DeploymentView) and not view.serving
    assert msgspec.json.encode(view) == _old_view(rec, None)
    assert b'"router"' not in msgspec.json.encode(view)
    pool.live["p1"] = SimpleNamespace(router=SimpleNamespace(stats=lambda: stats))  # type: ignore[assignment]
    view = pool.view("p1")
    assert view.serving and view.router == stats
    assert msgspec.json.encode(view) == _old_view(rec, stats)
    assert msgspec.json.encode({"deployments": [view]}) == msgspec.json.encode(
        {"deployments": [msgspec.json.decode(_old_view(rec, stats))]}
    )


def test_the_scheduler_client_returns_job_records_and_job_view_keeps_the_json() -> None:
    from cvops.actors.scheduler_client import SchedulerClient
    from cvops.events.scheduling import JobRecord, job_view

    job = JobRecord(
        id="j1",
        kind="train",
        spec={"kind": "train", "model_id": "m1", "hyperparameters": {"lr": 0.01}},
        submitted_by="ann",
        status="succeeded",
        token=0,
        device="cpu",
        attempt=1,
        progress={"phase": "epoch", "loss": 0.25},
        result={"model_id": "m2", "history": [{"epoch": 1, "acc": 0.5}]},
        submitted_ts=1700000000.5,
        started_ts=1700000001.0,
        ended_ts=1700000002.0,
        queue_seq=7,
        checkpoints=[{"epoch": 1, "sha256": "d" * 64}],
        version=5,
    )
    wire = msgspec.msgpack.encode(job)
    handle = SimpleNamespace(
        get=_Method(wire),
        cancel=_Method(wire),
        submit=_Method(wire),
        list_jobs=_Method(msgspec.msgpack.encode([job])),
    )
    client = SchedulerClient(handle)

    async def go() -> None:
        assert await client.get("j1") == job
        assert await client.cancel("j1", "ann") == job
        assert await client.submit("train", dict(job.spec), "ann") == job
        assert await client.list_jobs(None, "succeeded") == [job]

    asyncio.run(go())
    assert handle.list_jobs.args == (None, "succeeded")
    old: dict[str, Any] = msgspec.to_builtins(job)
    old.pop("queue_seq")
    assert msgspec.json.encode(job_view(msgspec.msgpack.decode(wire, type=JobRecord))) == msgspec.json.encode(
        old
    )
    assert "queue_seq" not in job_view(job)
