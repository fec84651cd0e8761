"""Evolve jobs: a seeded genetic search whose trials are child train jobs run through the scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Live
from tests.e2e.helpers import events, preset, replay, shapes_zip, upload_dataset, wait_job
from tests.e2e.server import request


def test_evolve_rules(live: Live) -> None:
    body = {"kind": "evolve", "model_id": "0123456789abcdef", "dataset_id": "0123456789abcdef"}
    assert request(live.url, "POST", "/api/v1/jobs", body, live.engineer)[0] == 403
    status, err = request(
        live.url,
        "POST",
        "/api/v1/jobs",
        {**body, "search_space": {"bogus": {"type": "float", "low": 0, "high": 1}}},
        live.admin,
    )
    assert status == 422 and "bogus" in err["error"]["message"]
    assert request(live.url, "POST", "/api/v1/jobs", {**body, "population": 1}, live.admin)[0] == 422


def _concurrency(sched: list[dict[str, Any]], ids: set[str]) -> int:
    """The most of ``ids`` running at once, swept over the scheduler's events in seq order."""
    running = most = 0
    for e in sched:
        if e["data"].get("job_id") not in ids:
            continue
        if e["type"] == "JobStarted":
            running += 1
        elif e["type"] in ("JobSucceeded", "JobFailed", "JobCancelled", "JobInterrupted"):
            running -= 1
        most = max(most, running)
    return most


def _tokens_held(sched: list[dict[str, Any]]) -> int:
    """The most GPU tokens held at once, from the grants and releases (every job, not only trials)."""
    held: set[int] = set()
    most = 0
    for e in sched:
        if e["type"] == "GpuTokenGranted":
            assert e["data"]["token"] not in held, e  # never granted twice
            held.add(e["data"]["token"])
        elif e["type"] == "GpuTokenReleased":
            held.discard(e["data"]["token"])
        most = max(most, len(held))
    return most


@pytest.mark.slow
def test_evolution_runs_trials_through_the_scheduler(live: Live, tmp_path: Path) -> None:
    """2 generations x 4 trials with 2 tokens: the coordinator holds no token, so two trials run at
    once (asserted from the log), and tokens are never over-allocated (the audit of ``replay verify``)."""
    status, model = preset(live.url, live.admin, "tiny_cnn", num_classes=3, name="evo")
    assert status == 200, model
    status, ds = upload_dataset(
        live.url, live.admin, shapes_zip(tmp_path, n_per_class=12), task="classification", name="evo"
    )
    assert status == 200, ds
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "optimizer": {"type": "choice", "choices": ["sgd", "adamw"]},
        "epochs": {"type": "choice", "choices": [1]},
        "batch_size": {"type": "choice", "choices": [16]},
        "num_workers": {"type": "choice", "choices": [0]},
    }
    status, job = request(
        live.url,
        "POST",
        "/api/v1/jobs",
        {
            "kind": "evolve",
            "model_id": model["id"],
            "dataset_id": ds["id"],
            "population": 4,
            "generations": 2,
            "seed": 3,
            "search_space": space,
        },
        live.admin,
    )
    assert status == 202, job
    done = wait_job(live.url, live.admin, job["id"], timeout=600)
    assert done["status"] == "succeeded", done
    assert done["token"] is None  # the coordinator never held one
    result = done["result"]
    assert result["trials"] == 8 and len(result["generations"]) == 2
    assert 1e-3 <= result["best_hyperparameters"]["lr"] <= 5e-2
    job_events = events(live.url, live.admin, f"job-{job['id']}")
    trials = [e for e in job_events if e["type"] == "TrialCompleted"]
    assert sorted((t["data"]["generation"], t["data"]["index"]) for t in trials) == [
        (g, i) for g in range(2) for i in range(4)
    ]
    # progress per trial and per generation, on the evolution's stream (what the websocket carries)
    phases = [e["data"]["progress"].get("phase") for e in job_events if e["type"] == "JobProgressed"]
    assert phases.count("trial") == 8 and phases.count("generation") == 2, phases
    # every trial was a child job of the evolution, run through the scheduler
    status, jobs = request(live.url, "GET", "/api/v1/jobs?kind=train", token=live.admin)
    children = {j["id"] for j in jobs["jobs"] if j.get("parent_job_id") == job["id"]}
    assert len(children) == 8
    assert all(j["status"] == "succeeded" for j in jobs["jobs"] if j["id"] in children)
    sched = events(live.url, live.admin, "scheduler")
    assert _concurrency(sched, children) == 2  # two trials at the same time, never more
    assert not [e for e in sched if e["type"] == "GpuTokenGranted" and e["data"]["job_id"] == job["id"]]
    started = [e for e in sched if e["type"] == "JobStarted" and e["data"]["job_id"] == job["id"]]
    assert [e["data"]["token"] for e in started] == [None]
    assert _tokens_held(sched) <= 2
    assert request(live.url, "GET", "/api/v1/scheduler", token=live.admin)[1]["max_in_use_seen"] <= 2
    proc = replay("verify", "--data-dir", str(live.server.data_dir))
    assert proc.returncode == 0 and proc.stdout.startswith("ok:"), proc.stdout + proc.stderr
