"""POST /api/v1/jobs request bodies: the tagged union, its bounds, and the 400/422 split."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from cvops.errors import BadRequest, ValidationFailed
from cvops.jobs_api import (
    BenchmarkJob,
    EvolveJob,
    TrainJob,
    decode_job_request,
    job_request_schema,
    job_spec,
)


def enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def invalid(obj: Any) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as err:
        decode_job_request(enc(obj))
    assert err.value.status == 422
    return err.value


def test_each_kind_decodes_to_its_struct_with_documented_defaults() -> None:
    train = decode_job_request(enc({"kind": "train", "model_id": "m1", "dataset_id": "d1"}))
    assert train == TrainJob(model_id="m1", dataset_id="d1") and train.hyperparameters == {}
    evolve = decode_job_request(enc({"kind": "evolve", "model_id": "m1", "dataset_id": "d1", "seed": 7}))
    assert isinstance(evolve, EvolveJob)
    assert (evolve.population, evolve.generations, evolve.seed, evolve.search_space) == (8, 3, 7, {})
    assert (evolve.objectives, evolve.latency_engine, evolve.prune, evolve.wall_clock_s, evolve.patience) == (
        ["accuracy"],
        None,
        True,
        None,
        None,
    )
    multi = decode_job_request(
        enc(
            {
                "kind": "evolve",
                "model_id": "m1",
                "dataset_id": "d1",
                "objectives": ["accuracy", "latency", "size"],
                "latency_engine": "onnxruntime-cpu",
                "prune": False,
                "wall_clock_s": 60,
                "patience": 2,
            }
        )
    )
    assert isinstance(multi, EvolveJob) and multi.objectives == ["accuracy", "latency", "size"]
    assert (multi.latency_engine, multi.prune, multi.wall_clock_s, multi.patience) == (
        "onnxruntime-cpu",
        False,
        60,
        2,
    )
    bench = decode_job_request(enc({"kind": "benchmark", "model_id": "m1"}))
    assert isinstance(bench, BenchmarkJob)
    assert (bench.engines, bench.batch_sizes, bench.warmup, bench.iterations, bench.objective) == (
        None,
        [1, 8],
        10,
        50,
        "latency",
    )


def test_job_spec_round_trips_and_carries_the_kind() -> None:
    body = {
        "kind": "benchmark",
        "model_id": "abc123",
        "engines": ["onnxruntime-cpu", "torch-cpu"],
        "batch_sizes": [1, 4, 1024],
        "iterations": 10000,
        "warmup": 0,
        "constraints": {"max_p95_ms": 50, "min_top1_agreement": 0.99},
        "objective": "throughput",
    }
    req = decode_job_request(enc(body))
    spec = job_spec(req)
    assert spec["kind"] == "benchmark" and spec["constraints"]["max_p95_ms"] == 50
    assert msgspec.convert(spec, BenchmarkJob) == req
    assert decode_job_request(msgspec.json.encode(spec)) == req


def test_malformed_json_is_a_400_not_a_422() -> None:
    for body in (b"", b"{", b'{"kind": "train",', b"\xff\xfe", b"not json"):
        with pytest.raises(BadRequest) as err:
            decode_job_request(body)
        assert err.value.status == 400 and not isinstance(err.value, ValidationFailed)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_id": "m"}, "kind"),
        ({"kind": "paint", "model_id": "m"}, "kind"),
        ({"kind": "train", "model_id": "m"}, "dataset_id"),
        ({"kind": "train", "model_id": "", "dataset_id": "d"}, "model_id"),
        ({"kind": "train", "model_id": "../etc", "dataset_id": "d"}, "model_id"),
        ({"kind": "train", "model_id": "m", "dataset_id": "d", "lr": 0.1}, "lr"),
        ({"kind": "train", "model_id": "m", "dataset_id": "d", "hyperparameters": []}, "hyperparameters"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "population": 1}, "population"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "generations": 0}, "generations"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "seed": -1}, "seed"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "objectives": ["speed"]}, "objectives[0]"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "objectives": []}, "objectives"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "objectives": ["latency"]}, "objectives"),
        (
            {"kind": "evolve", "model_id": "m", "dataset_id": "d", "objectives": ["accuracy", "accuracy"]},
            "objectives",
        ),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "latency_engine": "npu"}, "latency_engine"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "prune": "no"}, "prune"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "wall_clock_s": 0}, "wall_clock_s"),
        ({"kind": "evolve", "model_id": "m", "dataset_id": "d", "patience": 0}, "patience"),
        ({"kind": "benchmark", "model_id": "m", "iterations": 0}, "iterations"),
        ({"kind": "benchmark", "model_id": "m", "iterations": 10001}, "iterations"),
        ({"kind": "benchmark", "model_id": "m", "iterations": "50"}, "iterations"),
        ({"kind": "benchmark", "model_id": "m", "warmup": -1}, "warmup"),
        ({"kind": "benchmark", "model_id": "m", "batch_sizes": []}, "batch_sizes"),
        ({"kind": "benchmark", "model_id": "m", "batch_sizes": [1, 1025]}, "batch_sizes[1]"),
        ({"kind": "benchmark", "model_id": "m", "batch_sizes": [0]}, "batch_sizes[0]"),
        ({"kind": "benchmark", "model_id": "m", "batch_sizes": [4, 4]}, "batch_sizes"),
        ({"kind": "benchmark", "model_id": "m", "engines": []}, "engines"),
        ({"kind": "benchmark", "model_id": "m", "engines": ["torch-cpu", "warp-drive"]}, "engines[1]"),
        ({"kind": "benchmark", "model_id": "m", "engines": ["torch-cpu", "torch-cpu"]}, "engines"),
        ({"kind": "benchmark", "model_id": "m", "objective": "fastest"}, "objective"),
        ({"kind": "benchmark", "model_id": "m", "constraints": {"max_p95_ms": -1}}, "constraints.max_p95_ms"),
        (
            {"kind": "benchmark", "model_id": "m", "constraints": {"min_top1_agreement": 2}},
            "constraints.min_top1_agreement",
        ),
        ({"kind": "benchmark", "model_id": "m", "constraints": {"speed": 1}}, "constraints.speed"),
        ({"kind": "benchmark", "model_id": "m", "dataset_id": "d"}, "dataset_id"),
    ],
)
def test_invalid_requests_are_422_naming_the_field(body: dict[str, Any], field: str) -> None:
    err = invalid(body)
    assert err.details["field"] == field, err.details
    assert err.details["path"] == f"$.{field}"
    assert err.details["reason"] and field.split("[")[0].split(".")[0] in err.message
    assert json.dumps(err.to_dict())  # the gateway can serialise it


def test_a_body_that_is_not_an_object_is_422_for_the_whole_body() -> None:
    bodies: list[Any] = [[], "train", 3, None]
    for body in bodies:
        err = invalid(body)
        assert err.details["field"] is None and err.details["path"] == "$"


def test_hyperparameter_and_search_space_sizes_are_bounded() -> None:
    big = {f"k{i}": i for i in range(65)}
    assert (
        invalid({"kind": "train", "model_id": "m", "dataset_id": "d", "hyperparameters": big}).details[
            "field"
        ]
        == "hyperparameters"
    )
    space = {f"k{i}": [0, 1] for i in range(33)}
    assert (
        invalid({"kind": "evolve", "model_id": "m", "dataset_id": "d", "search_space": space}).details[
            "field"
        ]
        == "search_space"
    )


def test_schema_lists_the_three_kinds() -> None:
    schema = job_request_schema()
    text = json.dumps(schema)
    for name in ("TrainJob", "EvolveJob", "BenchmarkJob"):
        assert name in schema["$defs"]
    assert '"discriminator"' in text and '"benchmark"' in text
