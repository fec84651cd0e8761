"""Evolve jobs: a seeded genetic search whose trials are child train jobs run through the scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Live
from tests.e2e.helpers import events, preset, shapes_zip, upload_dataset, wait_job
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


@pytest.mark.slow
def test_evolution_runs_trials_through_the_scheduler(live: Live, tmp_path: Path) -> None:
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
    }
    status, job = request(
        live.url,
        "POST",
        "/api/v1/jobs",
        {
            "kind": "evolve",
            "model_id": model["id"],
            "dataset_id": ds["id"],
            "population": 2,
            "generations": 2,
            "seed": 3,
            "search_space": space,
        },
        live.admin,
    )
    assert status == 202, job
    done = wait_job(live.url, live.admin, job["id"], timeout=600)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["trials"] == 4 and len(result["generations"]) == 2
    assert 1e-3 <= result["best_hyperparameters"]["lr"] <= 5e-2
    trials = [e for e in events(live.url, live.admin, f"job-{job['id']}") if e["type"] == "TrialCompleted"]
    assert sorted((t["data"]["generation"], t["data"]["index"]) for t in trials) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    # every trial was a child job of the evolution, run through the scheduler
    status, jobs = request(live.url, "GET", "/api/v1/jobs?kind=train", token=live.admin)
    children = [j for j in jobs["jobs"] if j.get("parent_job_id") == job["id"]]
    assert len(children) == 4 and all(c["status"] == "succeeded" for c in children)
    assert request(live.url, "GET", "/api/v1/scheduler", token=live.admin)[1]["max_in_use_seen"] <= 2
