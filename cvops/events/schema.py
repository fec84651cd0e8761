"""Every event type of cvops, and the Envelope that carries one in the log.

Rules (DESIGN.md §2): events are immutable, tagged msgspec Structs named in the past tense; all of them
form one tagged union decoded by one Decoder.  New fields get defaults; a changed meaning gets a new tag
(``X.v2``) and an upcaster in :data:`UPCASTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

# --------------------------------------------------------------------------------------------- base


class Event(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of every event; the tag (the class name) is the event ``type`` in the log."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One row of the log."""

    seq: int
    stream: str
    version: int
    type: str
    ts: float
    data: bytes
    user: str = ""
    correlation_id: str = ""
    causation_id: str = ""

    def event(self) -> AnyEvent:
        return decode_event(self.type, self.data)


# -------------------------------------------------------------------------------------------- users


class UserCreated(Event, frozen=True):
    username: str
    role: str
    password_hash: str


class RoleChanged(Event, frozen=True):
    username: str
    role: str


class PasswordChanged(Event, frozen=True):
    username: str
    password_hash: str


class UserDisabled(Event, frozen=True):
    username: str


class UserEnabled(Event, frozen=True):
    username: str


class UserDeleted(Event, frozen=True):
    username: str


# ------------------------------------------------------------------------------------------- models


class TensorSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    shape: list[int | str]
    dtype: str


class Preprocessing(msgspec.Struct, frozen=True, kw_only=True):
    image_size: list[int] = msgspec.field(default_factory=lambda: [224, 224])  # [height, width]
    mean: list[float] = msgspec.field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = msgspec.field(default_factory=lambda: [0.229, 0.224, 0.225])
    layout: str = "NCHW"
    resize: str = "resize"  # "resize" (classification) | "letterbox" (detection)


class Parity(msgspec.Struct, frozen=True, kw_only=True):
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    samples: int
    passed: bool


class ModelSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where a model comes from, declared once: :class:`ModelUploaded` is exactly these fields (plus its
    tag), and the ``RegisterModel`` command (:mod:`cvops.events.commands`) is these with a model id that
    may be left for the registry to draw."""

    model_id: str
    name: str
    task: str  # classification | detection
    source_format: str  # onnx | torchscript | torch_export | state_dict | tensorflow | preset
    source_sha256: str
    source_bytes: int
    input_shape: list[int] | None = None
    labels: list[str] = []
    arch: str | None = None
    preset: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    parent_model_id: str | None = None
    dataset_id: str | None = None
    hyperparameters: dict[str, Any] = {}
    pretrained: bool = False  # a preset with its published weights
    # lineage of a model an evolution's trial trained (None for every other model)
    evolution_job_id: str | None = None
    trial_job_id: str | None = None
    generation: int | None = None
    trial: int | None = None


class ModelUploaded(Event, ModelSource, frozen=True):
    """A model was registered: an upload, a preset or a training result (the fields: :class:`ModelSource`)."""


class ModelConversionStarted(Event, frozen=True):
    model_id: str
    attempt: int = 1


class ConvertedForm(msgspec.Struct, frozen=True, kw_only=True):
    """What a conversion wrote and checked, declared once: :class:`ModelConverted` is exactly these
    fields (plus its tag), and the conversion pipeline's ``ConversionResult`` is these plus its
    diagnostics (:mod:`cvops.ml.converted`)."""

    model_id: str
    onnx_sha256: str
    onnx_bytes: int
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameter_count: int
    preprocessing: Preprocessing
    parity: Parity
    labels: list[str] = []
    # the torch form the torch-* engines run: a blob and its format ("" = none, e.g. ONNX uploads)
    torch_sha256: str = ""
    torch_format: str = ""
    arch: str | None = None
    # the published weights file a pretrained preset was built from, and its sha256 as read
    pretrained_file: str = ""
    pretrained_sha256: str = ""


class ModelConverted(Event, ConvertedForm, frozen=True):
    """A model's ONNX form is written and passed its parity check (the fields: :class:`ConvertedForm`)."""


class ModelRejected(Event, frozen=True):
    model_id: str
    reason: str
    details: dict[str, Any] = {}


class ModelDeleted(Event, frozen=True):
    model_id: str


class UploadRejected(Event, frozen=True):
    """An upload refused before it became a model/dataset (size, type, hostile content)."""

    kind: str  # model | dataset
    reason: str
    details: dict[str, Any] = {}


# ----------------------------------------------------------------------------------------- datasets


class DatasetSource(msgspec.Struct, frozen=True, kw_only=True):
    """An uploaded dataset zip, declared once: :class:`DatasetUploaded` is exactly these fields (plus its
    tag), and the ``RegisterDataset`` command (:mod:`cvops.events.commands`) is these without an id yet."""

    dataset_id: str
    name: str
    task: str
    format: str  # imagefolder | yolo
    sha256: str
    bytes: int


class DatasetUploaded(Event, DatasetSource, frozen=True):
    """A dataset zip was stored (the fields: :class:`DatasetSource`)."""


class DatasetValidated(Event, frozen=True):
    dataset_id: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    image_stats: dict[str, float] = {}
    errors: list[str] = []
    path: str = ""  # extracted folder, relative to the data dir


class DatasetRejected(Event, frozen=True):
    dataset_id: str
    reason: str
    details: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------- jobs


class JobSubmitted(Event, frozen=True):
    job_id: str
    kind: str  # train | evolve | benchmark
    spec: dict[str, Any]
    submitted_by: str = ""
    parent_job_id: str | None = None


class JobQueued(Event, frozen=True):
    job_id: str
    position: int = 0


class JobStarted(Event, frozen=True):
    job_id: str
    token: int | None  # None: a job that holds no GPU token (an evolution's coordinator)
    device: str
    attempt: int = 1


class JobProgressed(Event, frozen=True):
    job_id: str
    progress: dict[str, Any]


class JobSucceeded(Event, frozen=True):
    job_id: str
    result: dict[str, Any]


class JobFailed(Event, frozen=True):
    job_id: str
    error: str
    details: dict[str, Any] = {}


class JobCancelled(Event, frozen=True):
    job_id: str
    by: str = ""


class JobInterrupted(Event, frozen=True):
    job_id: str
    reason: str


class GpuTokenGranted(Event, frozen=True):
    token: int
    job_id: str


class GpuTokenReleased(Event, frozen=True):
    token: int
    job_id: str


class CheckpointSaved(Event, frozen=True):
    job_id: str
    epoch: int
    sha256: str
    metrics: dict[str, float] = {}


class CheckpointsDiscarded(Event, frozen=True):
    """Older checkpoints of a run dropped by the keep policy (CVOPS_KEEP_CHECKPOINTS); appended before
    their blobs are deleted, so the log never names a checkpoint blob that is gone."""

    job_id: str
    sha256s: list[str]
    epochs: list[int] = []


class BenchmarkMeasured(Event, frozen=True):
    job_id: str
    model_id: str
    results: list[dict[str, Any]]  # one per engine (available or not)
    machine: dict[str, Any] = {}


class EngineSelected(Event, frozen=True):
    job_id: str
    model_id: str
    selected: str | None
    selected_batch: int | None
    eligible: list[str]
    rejected: dict[str, str]  # engine -> violated constraint
    objective: str
    constraints: dict[str, float] = {}


class TrialCompleted(Event, frozen=True):
    job_id: str
    generation: int
    index: int
    genes: dict[str, Any]
    fitness: float  # the trial's validation accuracy (0 when it failed)
    child_job_id: str = ""
    # added with multi-objective evolutions; defaults keep older logs decoding (a trial then "finished")
    state: str = "finished"  # finished | pruned | failed
    values: dict[str, float] = {}  # objective -> value: accuracy, latency (p95 ms, batch 1), size (ONNX MB)
    curve: list[float] = []  # validation accuracy after each epoch (what the median rule compares)
    model_id: str = ""  # the trial's registered model ("" = none, or not yet)


# -------------------------------------------------------------------------------------- deployments


class DeploymentCreated(Event, frozen=True):
    deployment_id: str
    model_id: str
    engine: str
    workers: int
    max_batch: int = 8
    max_wait_ms: float = 5.0
    created_by: str = ""


class DeploymentDeleted(Event, frozen=True):
    deployment_id: str


class InferenceStats(Event, frozen=True):
    deployment_id: str
    window_start: float
    window_end: float
    requests: int
    errors: int = 0
    rejected: int = 0
    timed_out: int = 0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    mean_batch: float = 0.0


class PackageBuilt(Event, frozen=True):
    package_id: str
    model_id: str
    engine: str
    sha256: str
    bytes: int
    manifest: dict[str, str] = {}


# ------------------------------------------------------------------------------------------- codec

AnyEvent = (
    UserCreated
    | RoleChanged
    | PasswordChanged
    | UserDisabled
    | UserEnabled
    | UserDeleted
    | ModelUploaded
    | ModelConversionStarted
    | ModelConverted
    | ModelRejected
    | ModelDeleted
    | UploadRejected
    | DatasetUploaded
    | DatasetValidated
    | DatasetRejected
    | JobSubmitted
    | JobQueued
    | JobStarted
    | JobProgressed
    | JobSucceeded
    | JobFailed
    | JobCancelled
    | JobInterrupted
    | GpuTokenGranted
    | GpuTokenReleased
    | CheckpointSaved
    | CheckpointsDiscarded
    | BenchmarkMeasured
    | EngineSelected
    | TrialCompleted
    | DeploymentCreated
    | DeploymentDeleted
    | InferenceStats
    | PackageBuilt
)

EVENT_TYPES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in AnyEvent.__args__  # type: ignore[attr-defined]
}

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[AnyEvent] = msgspec.msgpack.Decoder(AnyEvent)

# tag -> function(raw msgpack bytes) -> current event; for tags that no longer have a class.
UPCASTERS: dict[str, Callable[[bytes], AnyEvent]] = {}


def type_of(event: Event) -> str:
    return event.__struct_config__.tag  # type: ignore[return-value]


def encode_event(event: Event) -> bytes:
    """msgpack bytes including the tag, so the bytes alone decode back to the event."""
    return _ENCODER.encode(event)


def decode_event(type_: str, data: bytes) -> AnyEvent:
    up = UPCASTERS.get(type_)
    if up is not None:
        return up(data)
    return _DECODER.decode(data)


def encode_envelopes(envs: list[Envelope]) -> bytes:
    return _ENCODER.encode(envs)


_ENV_DECODER = msgspec.msgpack.Decoder(list[Envelope])


def decode_envelopes(data: bytes) -> list[Envelope]:
    return _ENV_DECODER.decode(data)
