"""Pure folds over the event log: ``state = reduce(apply, envelopes, initial)``.

Each ``apply_*`` function takes a state and one :class:`~cvops.events.schema.Envelope`, and returns the
(mutated) state; events it does not know are ignored.  Nothing here does I/O, so replaying the same
envelopes always rebuilds the same state, and :func:`state_hash` of it is the same on every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar

import msgspec

from cvops.events import schema as s
from cvops.events.scheduling import SchedulerState, apply_scheduler

S = TypeVar("S")

ModelStatus = Literal["pending", "converting", "ready", "failed", "deleted"]


def fold(apply: Callable[[S, s.Envelope], S], state: S, envelopes: Iterable[s.Envelope]) -> S:
    """``reduce(apply, envelopes, state)``."""
    for env in envelopes:
        state = apply(state, env)
    return state


def state_hash(obj: Any) -> str:
    """sha256 hex of the deterministic msgpack encoding of ``obj`` (stable across runs and processes).
    Non-str dict keys (the scheduler's ``holders: dict[int, str]``) are hashed as their str form: the
    deterministic encoding can only order str keys."""
    builtins = msgspec.to_builtins(obj, str_keys=True)
    return hashlib.sha256(msgspec.msgpack.encode(builtins, order="deterministic")).hexdigest()


def _plain(event: msgspec.Struct) -> dict[str, Any]:
    """An event as a plain dict without its ``type`` tag."""
    out: dict[str, Any] = msgspec.to_builtins(event)
    out.pop("type", None)
    return out


# -------------------------------------------------------------------------------------------- users


class UserRecord(msgspec.Struct, kw_only=True):
    username: str
    role: str
    password_hash: str
    disabled: bool = False
    created_seq: int = 0
    token_version: int = 0  # bumped on role/password/disable/enable so older JWTs stop validating


class UsersState(msgspec.Struct, kw_only=True):
    users: dict[str, UserRecord] = msgspec.field(default_factory=dict)
    # token_version a deleted user had, so a re-created namesake cannot reuse the old tokens
    deleted: dict[str, int] = msgspec.field(default_factory=dict)


USER_TYPES = frozenset(
    {"UserCreated", "RoleChanged", "PasswordChanged", "UserDisabled", "UserEnabled", "UserDeleted"}
)


def apply_users(state: UsersState, env: s.Envelope) -> UsersState:
    if env.type not in USER_TYPES:
        return state
    ev = env.event()
    match ev:
        case s.UserCreated(username=name, role=role, password_hash=ph):
            state.users[name] = UserRecord(
                username=name,
                role=role,
                password_hash=ph,
                created_seq=env.seq,
                token_version=state.deleted.pop(name, -1) + 1,
            )
        case s.RoleChanged(username=name, role=role):
            if (u := state.users.get(name)) is not None:
                u.role = role
                u.token_version += 1
        case s.PasswordChanged(username=name, password_hash=ph):
            if (u := state.users.get(name)) is not None:
                u.password_hash = ph
                u.token_version += 1
        case s.UserDisabled(username=name):
            if (u := state.users.get(name)) is not None:
                u.disabled = True
                u.token_version += 1
        case s.UserEnabled(username=name):
            if (u := state.users.get(name)) is not None:
                u.disabled = False
                u.token_version += 1
        case s.UserDeleted(username=name):
            if (u := state.users.pop(name, None)) is not None:
                state.deleted[name] = u.token_version
        case _:
            pass
    return state


# ------------------------------------------------------------------------------------------- models


class OnnxInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A ready model's ONNX form and the torch form beside it, as the record shows them: composed of
    the :class:`~cvops.events.schema.ModelConverted` event's own Structs (tensor specs, preprocessing);
    the names are the record's (``sha256``, not the event's ``onnx_sha256``)."""

    sha256: str
    bytes: int
    opset: int
    inputs: list[s.TensorSpec]
    outputs: list[s.TensorSpec]
    parameter_count: int
    preprocessing: s.Preprocessing
    torch_sha256: str = ""  # "" = no torch form (e.g. an ONNX upload)
    torch_format: str = ""
    torch_arch: str | None = None

    @classmethod
    def of(cls, ev: s.ModelConverted) -> OnnxInfo:
        # an older version kept a TorchScript upload as the torch form: that is code, never loaded
        script = ev.torch_format == "torchscript"
        return cls(
            sha256=ev.onnx_sha256,
            bytes=ev.onnx_bytes,
            opset=ev.opset,
            inputs=ev.inputs,
            outputs=ev.outputs,
            parameter_count=ev.parameter_count,
            preprocessing=ev.preprocessing,
            torch_sha256="" if script else ev.torch_sha256,
            torch_format="" if script else ev.torch_format,
            torch_arch=ev.arch,
        )


class PretrainedWeights(msgspec.Struct, frozen=True, kw_only=True):
    """The published weights file a pretrained preset was built from, and its sha256 as read."""

    file: str
    sha256: str


class ModelRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    task: str
    status: ModelStatus = "pending"
    source_format: str = ""
    source_sha256: str = ""
    source_bytes: int = 0
    input_shape: list[int] | None = None
    labels: list[str] = msgspec.field(default_factory=list)
    arch: str | None = None
    preset: str | None = None
    num_classes: int | None = None
    image_size: int | None = None
    parent_model_id: str | None = None
    dataset_id: str | None = None
    hyperparameters: dict[str, Any] = msgspec.field(default_factory=dict)
    pretrained: bool = False
    evolution_job_id: str | None = None  # lineage of an evolution trial's model
    trial_job_id: str | None = None
    generation: int | None = None
    trial: int | None = None
    pretrained_weights: PretrainedWeights | None = None
    onnx: OnnxInfo | None = None  # set by ModelConverted
    parity: s.Parity | None = None  # the ModelConverted event's own Parity
    error: str | None = None
    error_details: dict[str, Any] = msgspec.field(default_factory=dict)
    attempts: int = 0
    created_ts: float = 0.0
    updated_ts: float = 0.0
    version: int = 0  # stream version of the last event applied


class ModelsState(msgspec.Struct, kw_only=True):
    models: dict[str, ModelRecord] = msgspec.field(default_factory=dict)


MODEL_TYPES = frozenset(
    {"ModelUploaded", "ModelConversionStarted", "ModelConverted", "ModelRejected", "ModelDeleted"}
)


def apply_models(state: ModelsState, env: s.Envelope) -> ModelsState:
    if env.type not in MODEL_TYPES:
        return state
    ev = env.event()
    if isinstance(ev, s.ModelUploaded):
        state.models[ev.model_id] = ModelRecord(
            id=ev.model_id,
            name=ev.name,
            task=ev.task,
            source_format=ev.source_format,
            source_sha256=ev.source_sha256,
            source_bytes=ev.source_bytes,
            input_shape=list(ev.input_shape) if ev.input_shape is not None else None,
            labels=list(ev.labels),
            arch=ev.arch,
            preset=ev.preset,
            num_classes=ev.num_classes,
            image_size=ev.image_size,
            parent_model_id=ev.parent_model_id,
            dataset_id=ev.dataset_id,
            hyperparameters=dict(ev.hyperparameters),
            pretrained=ev.pretrained,
            evolution_job_id=ev.evolution_job_id,
            trial_job_id=ev.trial_job_id,
            generation=ev.generation,
            trial=ev.trial,
            created_ts=env.ts,
            updated_ts=env.ts,
            version=env.version,
        )
        return state
    model_id: str = getattr(ev, "model_id", "")
    m = state.models.get(model_id)
    if m is None:
        return state
    match ev:
        case s.ModelConversionStarted(attempt=attempt):
            m.status = "converting"
            m.attempts = max(m.attempts, attempt)
            m.error = None
            m.error_details = {}
        case s.ModelConverted():
            m.status = "ready"
            m.onnx = OnnxInfo.of(ev)
            m.parity = ev.parity
            if ev.pretrained_sha256:
                m.pretrained_weights = PretrainedWeights(file=ev.pretrained_file, sha256=ev.pretrained_sha256)
            if ev.labels:
                m.labels = list(ev.labels)
            m.error = None
            m.error_details = {}
        case s.ModelRejected(reason=reason, details=details):
            m.status = "failed"
            m.error = reason
            m.error_details = dict(details)
        case s.ModelDeleted():
            m.status = "deleted"
        case _:
            pass
    m.updated_ts = env.ts
    m.version = env.version
    return state


# ----------------------------------------------------------------------------------------- datasets


class DatasetRecord(msgspec.Struct, kw_only=True):
    id: str
    name: str
    task: str
    format: str
    sha256: str
    bytes: int
    status: Literal["pending", "ready", "failed"] = "pending"
    classes: list[str] = msgspec.field(default_factory=list)
    counts: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    image_stats: dict[str, float] = msgspec.field(default_factory=dict)
    errors: list[str] = msgspec.field(default_factory=list)
    path: str = ""
    error: str | None = None
    created_ts: float = 0.0


class DatasetsState(msgspec.Struct, kw_only=True):
    datasets: dict[str, DatasetRecord] = msgspec.field(default_factory=dict)


DATASET_TYPES = frozenset({"DatasetUploaded", "DatasetValidated", "DatasetRejected"})


def apply_datasets(state: DatasetsState, env: s.Envelope) -> DatasetsState:
    if env.type not in DATASET_TYPES:
        return state
    ev = env.event()
    match ev:
        case s.DatasetUploaded():
            state.datasets[ev.dataset_id] = DatasetRecord(
                id=ev.dataset_id,
                name=ev.name,
                task=ev.task,
                format=ev.format,
                sha256=ev.sha256,
                bytes=ev.bytes,
                created_ts=env.ts,
            )
        case s.DatasetValidated():
            if (d := state.datasets.get(ev.dataset_id)) is not None:
                d.status = "ready"
                d.classes = list(ev.classes)
                d.counts = {k: dict(v) for k, v in ev.counts.items()}
                d.image_stats = dict(ev.image_stats)
                d.errors = list(ev.errors)
                d.path = ev.path
                d.error = None
        case s.DatasetRejected(dataset_id=did, reason=reason):
            if (d := state.datasets.get(did)) is not None:
                d.status = "failed"
                d.error = reason
        case _:
            pass
    return state


# -------------------------------------------------------------------------------------- deployments


class DeploymentRecord(msgspec.Struct, kw_only=True):
    id: str
    model_id: str
    engine: str
    workers: int
    max_batch: int = 8
    max_wait_ms: float = 5.0
    status: Literal["active", "deleted"] = "active"
    created_by: str = ""
    created_ts: float = 0.0
    stats: dict[str, Any] = msgspec.field(default_factory=dict)  # the last InferenceStats


class DeploymentsState(msgspec.Struct, kw_only=True):
    deployments: dict[str, DeploymentRecord] = msgspec.field(default_factory=dict)


DEPLOYMENT_TYPES = frozenset({"DeploymentCreated", "DeploymentDeleted", "InferenceStats"})


def apply_deployments(state: DeploymentsState, env: s.Envelope) -> DeploymentsState:
    if env.type not in DEPLOYMENT_TYPES:
        return state
    ev = env.event()
    match ev:
        case s.DeploymentCreated():
            state.deployments[ev.deployment_id] = DeploymentRecord(
                id=ev.deployment_id,
                model_id=ev.model_id,
                engine=ev.engine,
                workers=ev.workers,
                max_batch=ev.max_batch,
                max_wait_ms=ev.max_wait_ms,
                created_by=ev.created_by,
                created_ts=env.ts,
            )
        case s.DeploymentDeleted(deployment_id=did):
            if (d := state.deployments.get(did)) is not None:
                d.status = "deleted"
        case s.InferenceStats(deployment_id=did):
            if (d := state.deployments.get(did)) is not None:
                d.stats = _plain(ev)
        case _:
            pass
    return state


# ----------------------------------------------------------------------------------------- packages


class PackageRecord(msgspec.Struct, kw_only=True):
    id: str
    model_id: str
    engine: str
    sha256: str
    bytes: int
    manifest: dict[str, str] = msgspec.field(default_factory=dict)
    created_ts: float = 0.0
    created_by: str = ""


class PackagesState(msgspec.Struct, kw_only=True):
    packages: dict[str, PackageRecord] = msgspec.field(default_factory=dict)


PACKAGE_TYPES = frozenset({"PackageBuilt"})


def apply_packages(state: PackagesState, env: s.Envelope) -> PackagesState:
    if env.type not in PACKAGE_TYPES:
        return state
    ev = env.event()
    if isinstance(ev, s.PackageBuilt):
        state.packages[ev.package_id] = PackageRecord(
            id=ev.package_id,
            model_id=ev.model_id,
            engine=ev.engine,
            sha256=ev.sha256,
            bytes=ev.bytes,
            manifest=dict(ev.manifest),
            created_ts=env.ts,
            created_by=env.user,
        )
    return state


# ------------------------------------------------------------------------------------------- system


class SystemState(msgspec.Struct, kw_only=True):
    users: UsersState = msgspec.field(default_factory=UsersState)
    models: ModelsState = msgspec.field(default_factory=ModelsState)
    datasets: DatasetsState = msgspec.field(default_factory=DatasetsState)
    deployments: DeploymentsState = msgspec.field(default_factory=DeploymentsState)
    packages: PackagesState = msgspec.field(default_factory=PackagesState)
    jobs: SchedulerState = msgspec.field(default_factory=SchedulerState)
    last_seq: int = 0
    events: int = 0


def apply_system(state: SystemState, env: s.Envelope) -> SystemState:
    t = env.type
    if t in USER_TYPES:
        apply_users(state.users, env)
    elif t in MODEL_TYPES:
        apply_models(state.models, env)
    elif t in DATASET_TYPES:
        apply_datasets(state.datasets, env)
    elif t in DEPLOYMENT_TYPES:
        apply_deployments(state.deployments, env)
    elif t in PACKAGE_TYPES:
        apply_packages(state.packages, env)
    # the scheduler fold sees every event and ignores what it does not know
    state.jobs = apply_scheduler(state.jobs, env)
    state.last_seq = env.seq
    state.events += 1
    return state


def rebuild(envelopes: Iterable[s.Envelope], tokens: int | None = None) -> SystemState:
    """Fold every envelope into a fresh :class:`SystemState` (``tokens``: GPU tokens of the scheduler)."""
    state = SystemState(jobs=SchedulerState() if tokens is None else SchedulerState(tokens=tokens))
    for env in envelopes:
        apply_system(state, env)
    return state


def summary(state: SystemState) -> dict[str, Any]:
    """Counts for a human: users, models by status, datasets, deployments, packages."""
    by_status: dict[str, int] = {}
    for m in state.models.models.values():
        by_status[m.status] = by_status.get(m.status, 0) + 1
    out: dict[str, Any] = {
        "events": state.events,
        "last_seq": state.last_seq,
        "users": len(state.users.users),
        "models": dict(sorted(by_status.items())),
        "datasets": len(state.datasets.datasets),
        "deployments_active": sum(d.status == "active" for d in state.deployments.deployments.values()),
        "packages": len(state.packages.packages),
    }
    out["jobs"] = len(state.jobs.jobs)
    return out
