"""Jobs over real HTTP: benchmark (selection, unavailable engines, deterministic reports), training
(lineage, accuracy, progress events), cancellation, the token limit, roles, and bad bodies."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.e2e.conftest import Live
from tests.e2e.helpers import (
    API,
    events,
    get_bytes,
    get_job,
    preset,
    replay,
    scheduler,
    shapes_zip,
    upload_dataset,
    wait_idle,
    wait_job,
    wait_model,
)
from tests.e2e.server import request

TRAIN_HP = {
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.01,
    "image_size": 32,
    "num_workers": 0,
    "augment_scale_crop": False,
}
BENCH = {
    "kind": "benchmark",
    "engines": ["onnxruntime-cpu", "torch-cpu", "onnxruntime-cuda"],
    "batch_sizes": [1, 4],
    "warmup": 2,
    "iterations": 20,
}


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.fixture(scope="module")
def model(live: Live) -> dict[str, Any]:
    status, rec = preset(live.url, live.admin, "tiny_cnn", name="tiny-jobs", num_classes=3)
    assert status == 200, rec
    return rec  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dataset(live: Live, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = shapes_zip(tmp_path_factory.mktemp("jobs-ds"), n_per_class=150, size=32, seed=3)
    status, rec = upload_dataset(live.url, live.admin, data, name="shapes-jobs")
    assert status == 200 and rec["status"] == "ready", rec
    return rec  # type: ignore[no-any-return]


def submit(live: Live, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    return request(live.url, "POST", f"{API}/jobs", body, token or live.admin)


# ------------------------------------------------------------------------------------ bad bodies


def test_bad_job_bodies_are_422_naming_the_field(live: Live, model: dict[str, Any]) -> None:
    mid = model["id"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "benchmark", "model_id": mid, "batch_sizes": [1, 0]}, "batch_sizes[1]"),
        ({"kind": "benchmark", "model_id": mid, "engines": ["onnxruntime-cpu", "warp-drive"]}, "engines[1]"),
        ({"kind": "benchmark", "model_id": mid, "engines": ["torch-cpu", "torch-cpu"]}, "engines"),
        ({"kind": "benchmark", "model_id": mid, "iterations": 0}, "iterations"),
        ({"kind": "benchmark", "model_id": mid, "colour": "red"}, "colour"),
        ({"kind": "benchmark"}, "model_id"),
        ({"kind": "train", "model_id": mid}, "dataset_id"),
        ({"kind": "teleport", "model_id": mid}, "kind"),
    ]
    for body, field in cases:
        status, reply = submit(live, body)
        assert status == 422, (body, reply)
        assert reply["error"]["details"]["field"] == field, (body, reply)
    # a model that does not exist, and hyperparameters that are out of range
    status, reply = submit(live, {"kind": "benchmark", "model_id": "0000000000000000"})
    assert status == 404, reply
    status, reply = request(live.url, "POST", f"{API}/jobs", raw=b"{nope", token=live.admin,
                            headers={"Content-Type": "application/json"})  # fmt: skip
    assert status == 400, reply


def test_bad_hyperparameters_are_422(live: Live, model: dict[str, Any], dataset: dict[str, Any]) -> None:
    base = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"]}
    for hp, field in (
        ({"epochs": 0}, "epochs"),
        ({"lr": 5.0}, "lr"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ):
        status, reply = submit(live, {**base, "hyperparameters": hp})
        assert status == 422 and reply["error"]["details"]["field"] == field, (hp, reply)


def test_a_job_needs_a_ready_model_and_dataset(live: Live, dataset: dict[str, Any]) -> None:
    """The scheduler's plan_submit owns the readiness rule: 404 for no such record, 422 naming the
    field while the model is still converting; engineers are refused by role before any of it."""
    status, pending = preset(live.url, live.admin, "tiny_cnn", wait=False, name="not-yet", num_classes=3)
    assert status == 202 and pending["status"] in ("pending", "converting"), pending
    train = {"kind": "train", "model_id": pending["id"], "dataset_id": dataset["id"]}
    status, reply = submit(live, train)
    assert status == 422 and reply["error"]["details"]["field"] == "model_id", reply
    assert "not ready" in reply["error"]["message"], reply
    status, reply = submit(live, {**BENCH, "model_id": pending["id"]}, live.engineer)
    assert status == 403, reply
    assert wait_model(live.url, live.admin, pending["id"])["status"] == "ready"
    status, reply = submit(live, {**train, "dataset_id": "0000000000000000"})
    assert status == 404 and reply["error"]["details"] == {"dataset_id": "0000000000000000"}, reply


# ----------------------------------------------------------------------------------------- roles


def test_roles_for_jobs(live: Live, model: dict[str, Any], dataset: dict[str, Any]) -> None:
    status, reply = submit(live, {**BENCH, "model_id": model["id"]}, live.engineer)
    assert status == 403 and reply["error"]["code"] == "forbidden", reply
    train = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"]}
    status, reply = submit(live, {**train, "hyperparameters": {"epochs": 2}}, live.engineer)
    assert status == 403, reply
    status, reply = submit(live, train, live.viewer)
    assert status == 403, reply
    status, job = submit(live, train, live.engineer)  # the defaults: allowed
    assert status == 202 and job["kind"] == "train" and job["status"] in ("queued", "running"), job
    assert job["submitted_by"] == "eve"
    status, body = request(live.url, "POST", f"{API}/jobs/{job['id']}/cancel", token=live.engineer)
    assert status == 202, body
    done = wait_job(live.url, live.admin, job["id"], timeout=120)
    assert done["status"] == "cancelled", done
    status, body = request(live.url, "POST", f"{API}/jobs/{job['id']}/cancel", token=live.engineer)
    assert status == 409, body
    wait_idle(live.url, live.admin)


# ------------------------------------------------------------------------------------- benchmark


def test_benchmark_job_selects_an_eligible_engine_and_reports(live: Live, model: dict[str, Any]) -> None:
    status, job = submit(live, {**BENCH, "model_id": model["id"]})
    assert status == 202, job
    done = wait_job(live.url, live.admin, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["selected"] in result["eligible"], result
    assert set(result["eligible"]) <= {"onnxruntime-cpu", "torch-cpu", "onnxruntime-cuda"}
    assert {"onnxruntime-cpu", "torch-cpu"} <= set(result["eligible"]), result
    assert result["selected_batch"] in (1, 4)
    if not _cuda():
        assert "onnxruntime-cuda" in result["rejected"], result
        assert "unavailable" in result["rejected"]["onnxruntime-cuda"]
        cuda = result["engines"]["onnxruntime-cuda"]
        assert cuda["available"] is False and cuda["reason"], cuda
    for engine in ("onnxruntime-cpu", "torch-cpu"):
        lat = result["engines"][engine]
        assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"], lat
    for view in ("simple", "technical"):
        for fmt, ctype in (("json", "application/json"), ("md", "text/markdown"), ("html", "text/html")):
            path = f"{API}/jobs/{job['id']}/report?view={view}&format={fmt}"
            s1, b1, t1 = get_bytes(live.url, path, live.engineer)
            s2, b2, _ = get_bytes(live.url, path, live.admin)
            assert s1 == 200 and s2 == 200, (view, fmt, b1[:300])
            assert t1.startswith(ctype), t1
            assert b1 == b2, f"report {view}/{fmt} is not deterministic"
            assert result["selected"].encode() in b1
            if fmt == "json":
                json.loads(b1)
    s_simple = get_bytes(live.url, f"{API}/jobs/{job['id']}/report?view=simple&format=json", live.admin)[1]
    s_tech = get_bytes(live.url, f"{API}/jobs/{job['id']}/report?view=technical&format=json", live.admin)[1]
    assert s_simple != s_tech
    for q in ("view=fancy", "format=pdf"):
        status, body = request(live.url, "GET", f"{API}/jobs/{job['id']}/report?{q}", token=live.admin)
        assert status == 400, body
    status, body = request(live.url, "GET", f"{API}/jobs/{job['id']}/report", token=live.viewer)
    assert status == 403
    evs = events(live.url, live.admin, f"job-{job['id']}")
    types = [e["type"] for e in evs]
    assert "BenchmarkMeasured" in types and "EngineSelected" in types, types


# -------------------------------------------------------------------------------------- training


def test_train_job_registers_a_better_model(
    live: Live, model: dict[str, Any], dataset: dict[str, Any]
) -> None:
    wait_idle(live.url, live.admin)
    t0 = time.monotonic()
    body = {
        "kind": "train",
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "hyperparameters": TRAIN_HP,
    }
    status, job = submit(live, body)
    assert status == 202, job
    done = wait_job(live.url, live.admin, job["id"], timeout=300)
    took = time.monotonic() - t0
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["epochs_done"] == 3 and len(result["history"]) == 3, result
    assert result["best_val_accuracy"] > 0.5, result  # chance: 1/3
    # the job ended at registration; the model converts to ONNX on its own
    new = wait_model(live.url, live.admin, result["model_id"])
    assert new["status"] == "ready", new
    assert new["parent_model_id"] == model["id"] and new["dataset_id"] == dataset["id"], new
    assert new["hyperparameters"]["epochs"] == 3 and new["hyperparameters"]["lr"] == 0.01
    assert new["labels"] == dataset["classes"]
    assert new["parity"]["passed"] is True
    # a train job has a report too (its curves, the checkpoint chosen and the lineage)
    status, reply = request(live.url, "GET", f"{API}/jobs/{job['id']}/report", token=live.admin)
    assert status == 200 and reply["report"] == "training", reply
    assert [e["epoch"] for e in reply["epochs"]] == [1, 2, 3] and reply["lineage"]["model"]["id"] == result[
        "model_id"
    ]
    evs = events(live.url, live.admin, f"job-{job['id']}")
    progressed = [e for e in evs if e["type"] == "JobProgressed"]
    epochs = [e["data"]["progress"] for e in progressed if e["data"]["progress"].get("phase") == "epoch"]
    assert [p["epoch"] for p in epochs] == [1, 2, 3], epochs
    assert sum(e["type"] == "CheckpointSaved" for e in evs) == 3
    assert took < 120, f"training took {took:.1f} s"


def test_a_train_job_frees_its_token_before_its_model_converts(
    live: Live, model: dict[str, Any], dataset: dict[str, Any]
) -> None:
    """A training job ends when its model is registered: with both tokens busy, the third job starts
    while the model of the job whose token it took is still converting (asserted from the log)."""
    wait_idle(live.url, live.admin)
    hp = {**TRAIN_HP, "epochs": 1}
    body = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"], "hyperparameters": hp}
    ids = []
    for _ in range(3):
        status, job = submit(live, body)
        assert status == 202, job
        ids.append(job["id"])
    done = [wait_job(live.url, live.admin, j, timeout=300) for j in ids]
    assert [d["status"] for d in done] == ["succeeded"] * 3, done
    models = {d["id"]: d["result"]["model_id"] for d in done}
    for d in done:
        assert d["result"]["model_status"] in ("pending", "converting", "ready"), d["result"]
        assert wait_model(live.url, live.admin, d["result"]["model_id"])["status"] == "ready"
    sched = [e for e in events(live.url, live.admin, "scheduler") if e["data"].get("job_id") in ids]
    third_granted = next(e for e in sched if e["type"] == "GpuTokenGranted" and e["data"]["job_id"] == ids[2])
    token = third_granted["data"]["token"]
    # the job that gave that token back just before, and the seq of its model's conversion
    freed_by = [
        e["data"]["job_id"]
        for e in sched
        if e["type"] == "GpuTokenReleased" and e["data"]["token"] == token and e["seq"] < third_granted["seq"]
    ][-1]
    converted = [
        e for e in events(live.url, live.admin, f"model-{models[freed_by]}") if e["type"] == "ModelConverted"
    ]
    assert converted, models[freed_by]
    assert third_granted["seq"] < converted[0]["seq"], (third_granted, converted[0])
    ended = next(e for e in sched if e["type"] == "JobSucceeded" and e["data"]["job_id"] == freed_by)
    assert ended["seq"] < converted[0]["seq"]
    proc = replay("verify", "--data-dir", str(live.server.data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cancel_a_running_training_frees_its_token(
    live: Live, model: dict[str, Any], dataset: dict[str, Any]
) -> None:
    wait_idle(live.url, live.admin)
    hp = {**TRAIN_HP, "epochs": 500}
    body = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"], "hyperparameters": hp}
    status, job = submit(live, body)
    assert status == 202, job
    wait_job(live.url, live.admin, job["id"], timeout=120, until=("running", "succeeded", "failed"))
    end = time.monotonic() + 120
    while not get_job(live.url, live.admin, job["id"])["progress"] and time.monotonic() < end:
        time.sleep(0.5)
    assert scheduler(live.url, live.admin)["in_use"] == 1
    status, reply = request(live.url, "POST", f"{API}/jobs/{job['id']}/cancel", token=live.admin)
    assert status == 202, reply
    done = wait_job(live.url, live.admin, job["id"], timeout=120)
    assert done["status"] == "cancelled", done
    assert done["cancelled_by"] == "admin"
    view = wait_idle(live.url, live.admin, timeout=30)
    assert view["in_use"] == 0 and view["holders"] == [] and len(view["free"]) == view["tokens"]


def test_never_more_jobs_running_than_tokens(live: Live, model: dict[str, Any]) -> None:
    wait_idle(live.url, live.admin)
    body = {**BENCH, "engines": ["onnxruntime-cpu"], "iterations": 200, "model_id": model["id"]}
    ids = []
    for _ in range(3):
        status, job = submit(live, body)
        assert status == 202, job
        ids.append(job["id"])
    view = scheduler(live.url, live.admin)
    assert view["tokens"] == 2 and view["in_use"] <= 2
    queued = [j for j in ids if get_job(live.url, live.admin, j)["status"] == "queued"]
    assert queued, "with 2 tokens the third job must wait"
    status, reply = request(live.url, "GET", f"{API}/jobs/{queued[-1]}/report", token=live.admin)
    assert status == 404, reply  # not finished: no report yet
    running_seen = 0
    end = time.monotonic() + 300
    while time.monotonic() < end:
        view = scheduler(live.url, live.admin)
        assert view["in_use"] <= 2 and len(view["holders"]) <= 2, view
        # one consistent snapshot (reading the jobs one by one could see a finished job still running)
        listing = request(live.url, "GET", f"{API}/jobs?kind=benchmark", token=live.admin)[1]["jobs"]
        by_id = {j["id"]: j["status"] for j in listing}
        statuses = [by_id[j] for j in ids]
        running = sum(j["status"] == "running" for j in listing)
        assert running <= 2, statuses
        running_seen = max(running_seen, running)
        if all(s in ("succeeded", "failed", "cancelled") for s in statuses):
            break
        time.sleep(0.2)
    assert statuses == ["succeeded"] * 3, statuses
    assert running_seen >= 1
    assert scheduler(live.url, live.admin)["max_in_use_seen"] <= 2
    proc = replay("verify", "--data-dir", str(live.server.data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok:"), proc.stdout


def test_job_listing_and_unknown_job(live: Live) -> None:
    status, listing = request(live.url, "GET", f"{API}/jobs?kind=benchmark", token=live.engineer)
    assert status == 200 and all(j["kind"] == "benchmark" for j in listing["jobs"])
    status, body = request(live.url, "GET", f"{API}/jobs/ffffffffffffffff", token=live.admin)
    assert status == 404, body
    status, body = request(live.url, "GET", f"{API}/jobs/ffffffffffffffff/report", token=live.admin)
    assert status == 404, body
    status, body = request(live.url, "POST", f"{API}/jobs/ffffffffffffffff/cancel", token=live.admin)
    assert status == 404, body


def test_an_idle_server_does_not_spin(live: Live) -> None:
    """After jobs and non-scheduler events (users, models), the actors wait instead of polling."""
    import psutil

    wait_idle(live.url, live.admin)
    request(live.url, "GET", f"{API}/models", token=live.admin)
    actors = {}
    for p in live.server.descendants():
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        for name in ("GPUScheduler", "EventLog", "ModelRegistry"):
            if f"ray::{name}" in title:
                actors[name] = p
    assert "GPUScheduler" in actors and "EventLog" in actors, list(actors)
    before = {n: sum(p.cpu_times()[:2]) for n, p in actors.items()}
    time.sleep(6.0)
    used = {n: sum(p.cpu_times()[:2]) - before[n] for n, p in actors.items()}
    assert all(u < 1.0 for u in used.values()), used  # a busy loop burns ~6 s of CPU here
