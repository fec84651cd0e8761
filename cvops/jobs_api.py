"""The request bodies of ``POST /api/v1/jobs``: one tagged union on ``kind`` (msgspec ``tag_field``).

:func:`decode_job_request` turns raw bytes into a :data:`JobRequest`:

* bytes that are not JSON (empty, truncated, not UTF-8) → :class:`~cvops.errors.BadRequest` (400);
* JSON of the wrong shape (unknown ``kind``, missing or unknown field, wrong type, out of bounds,
  duplicates, unknown engine, bad constraint) → :class:`~cvops.errors.ValidationFailed` (422) whose
  ``details`` name the field: ``{"field": "batch_sizes[1]", "path": "$.batch_sizes[1]", "reason": ...}``.

:func:`check_job_spec` checks what a spec means rather than its shape (the hyperparameters are valid,
the search space names real genes); the GPUScheduler runs it once for every submission, an evolution's
trials included, before :func:`cvops.events.scheduling.plan_submit` applies the readiness and evolve
rules.  Role checks (who may submit which kind, engineers with default hyperparameters only) belong to
the route.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from cvops.bench_types import Constraints
from cvops.errors import BadRequest, ValidationFailed
from cvops.ga import parse_space
from cvops.ml.hyperparameters import validate_hyperparameters
from cvops.ml.spec import ENGINE_NAMES

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
EngineName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
BatchSize = Annotated[int, msgspec.Meta(ge=1, le=1024)]


class _Job(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"):
    """Base of every job request."""


class TrainJob(_Job, frozen=True, tag="train"):
    """Fine-tune ``model_id`` on ``dataset_id``; empty ``hyperparameters`` = the defaults."""

    model_id: Id
    dataset_id: Id
    hyperparameters: Annotated[dict[str, Any], msgspec.Meta(max_length=64)] = {}


class EvolveJob(_Job, frozen=True, tag="evolve"):
    """A seeded genetic search over ``search_space`` (empty = the default space)."""

    model_id: Id
    dataset_id: Id
    population: Annotated[int, msgspec.Meta(ge=2, le=64)] = 8
    generations: Annotated[int, msgspec.Meta(ge=1, le=50)] = 3
    seed: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] = 0
    search_space: Annotated[dict[str, Any], msgspec.Meta(max_length=32)] = {}
    # what the search optimises: validation accuracy (mAP50-95 for detection), and optionally the p95
    # latency at batch 1 on ``latency_engine`` and the ONNX size in MB (multi-objective: NSGA-II)
    objectives: Annotated[
        list[Literal["accuracy", "latency", "size"]], msgspec.Meta(min_length=1, max_length=3)
    ] = msgspec.field(default_factory=lambda: ["accuracy"])
    latency_engine: EngineName | None = None  # None: the machine's deployment engine
    prune: bool = True  # the median stopping rule on the trials' per-epoch accuracy
    wall_clock_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] | None = None
    patience: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None  # generations without improvement


class BenchmarkJob(_Job, frozen=True, tag="benchmark"):
    """Benchmark ``model_id`` on ``engines`` (None = every engine) and select one."""

    model_id: Id
    engines: Annotated[list[EngineName], msgspec.Meta(min_length=1, max_length=32)] | None = None
    batch_sizes: Annotated[list[BatchSize], msgspec.Meta(min_length=1, max_length=16)] = msgspec.field(
        default_factory=lambda: [1, 8]
    )
    warmup: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    iterations: Annotated[int, msgspec.Meta(ge=1, le=10000)] = 50
    constraints: Constraints = msgspec.field(default_factory=Constraints)
    objective: Literal["latency", "throughput"] = "latency"


JobRequest = TrainJob | EvolveJob | BenchmarkJob
JOB_KINDS: tuple[str, ...] = ("train", "evolve", "benchmark")

_DECODER: msgspec.json.Decoder[JobRequest] = msgspec.json.Decoder(JobRequest)
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>\$[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def _error_location(message: str) -> tuple[str | None, str, str]:
    """``(field, path, reason)`` from a msgspec ValidationError message; field None = the whole body."""
    m = _AT.match(message)
    reason = m.group("reason") if m else message
    path = (m.group("path") if m else None) or "$"
    named = _NAMED.search(reason)
    if named:
        path = f"{path}.{named.group('name')}"
    field = path[2:] if path.startswith("$.") else (path.lstrip("$") or None)
    return field, path, reason


def _fail(field: str, reason: str, **extra: Any) -> ValidationFailed:
    return ValidationFailed(
        f"invalid job request: {field}: {reason}",
        {"field": field, "path": f"$.{field}", "reason": reason, **extra},
    )


def _check(req: JobRequest) -> None:
    if isinstance(req, EvolveJob):
        if len(set(req.objectives)) != len(req.objectives):
            raise _fail("objectives", "contains duplicates")
        if "accuracy" not in req.objectives:
            raise _fail("objectives", "must include accuracy")
        if req.latency_engine is not None and req.latency_engine not in ENGINE_NAMES:
            raise _fail("latency_engine", f"unknown engine {req.latency_engine!r}", known=list(ENGINE_NAMES))
    if isinstance(req, BenchmarkJob):
        if req.engines is not None:
            for i, name in enumerate(req.engines):
                if name not in ENGINE_NAMES:
                    raise _fail(f"engines[{i}]", f"unknown engine {name!r}", known=list(ENGINE_NAMES))
            if len(set(req.engines)) != len(req.engines):
                raise _fail("engines", "contains duplicates")
        if len(set(req.batch_sizes)) != len(req.batch_sizes):
            raise _fail("batch_sizes", "contains duplicates")
        for key, value in msgspec.structs.asdict(req.constraints).items():
            if value is None:
                continue
            try:
                msgspec.structs.replace(Constraints(), **{key: value}).validate()
            except ValidationFailed as exc:
                raise _fail(f"constraints.{key}", exc.message) from exc


def decode_job_request(data: bytes) -> JobRequest:
    """Decode and validate a ``POST /jobs`` body; 400 for non-JSON, 422 naming the field otherwise."""
    try:
        req = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        field, path, reason = _error_location(str(exc))
        raise ValidationFailed(
            f"invalid job request: {field or 'body'}: {reason}",
            {"field": field, "path": path, "reason": reason},
        ) from exc
    except msgspec.DecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", {"reason": str(exc)}) from exc
    _check(req)
    return req


def job_spec(req: JobRequest) -> dict[str, Any]:
    """The JSON builtins of ``req`` (including ``kind``): the ``spec`` of ``JobSubmitted``."""
    return msgspec.to_builtins(req)  # type: ignore[no-any-return]


def check_job_spec(kind: str, spec: Mapping[str, Any]) -> None:
    """422 naming the field when a ``train`` spec's hyperparameters are invalid (``details.field`` is the
    hyperparameter) or an ``evolve`` spec's search space is (``search_space.<gene>``).  The one place
    hyperparameters are validated; other kinds and unknown kinds pass (``plan_submit`` refuses those)."""
    if kind == "train":
        validate_hyperparameters(spec.get("hyperparameters") or {})
    elif kind == "evolve":
        parse_space(spec.get("search_space"))


def job_request_schema() -> dict[str, Any]:
    """JSON Schema of the request union (for the OpenAPI document)."""
    return msgspec.json.schema(JobRequest)
