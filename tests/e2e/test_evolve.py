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


def _dominates(a: dict[str, float], b: dict[str, float]) -> bool:
    """``a`` is at least as accurate and as fast as ``b``, and better in one."""
    ge = a["accuracy"] >= b["accuracy"] and a["latency"] <= b["latency"]
    return ge and (a["accuracy"] > b["accuracy"] or a["latency"] < b["latency"])


@pytest.mark.slow
def test_multi_objective_evolution_keeps_the_front_as_registered_models(live: Live, tmp_path: Path) -> None:
    """accuracy + latency (measured on each trial's ONNX): the result's front is non-dominated among
    the finished trials, each front trial is a registered model with its lineage (parent, dataset,
    hyperparameters, evolution, trial, generation), and no other trial's model is left behind."""
    status, model = preset(live.url, live.admin, "tiny_cnn", num_classes=3, name="evo-mo")
    assert status == 200, model
    status, ds = upload_dataset(
        live.url,
        live.admin,
        shapes_zip(tmp_path, n_per_class=12, seed=1),
        task="classification",
        name="evo-mo",
    )
    assert status == 200, ds
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "optimizer": {"type": "choice", "choices": ["sgd", "adamw"]},
        "epochs": {"type": "choice", "choices": [1]},
        "batch_size": {"type": "choice", "choices": [16]},
        "num_workers": {"type": "choice", "choices": [0]},
    }
    body = {
        "kind": "evolve",
        "model_id": model["id"],
        "dataset_id": ds["id"],
        "population": 4,
        "generations": 2,
        "seed": 5,
        "search_space": space,
        "objectives": ["accuracy", "latency"],
        "latency_engine": "onnxruntime-cpu",
    }
    status, job = request(live.url, "POST", "/api/v1/jobs", body, live.admin)
    assert status == 202, job
    done = wait_job(live.url, live.admin, job["id"], timeout=900)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["objectives"] == ["accuracy", "latency"] and result["latency_engine"] == "onnxruntime-cpu"
    trials = result["trial_results"]
    assert sorted((t["generation"], t["index"]) for t in trials) == [
        (g, i) for g in range(2) for i in range(4)
    ]
    finished = [t for t in trials if t["state"] == "finished"]
    assert finished and all(
        t["values"]["latency"] > 0 and 0 <= t["values"]["accuracy"] <= 1 for t in finished
    )
    front = result["front"]
    assert front and result["knee"] in front
    keys = {(t["generation"], t["index"]) for t in front}
    for t in front:  # nothing finished dominates a front member; every other finished trial is dominated
        assert not any(_dominates(o["values"], t["values"]) for o in finished), t
    for t in finished:
        if (t["generation"], t["index"]) not in keys:
            assert any(_dominates(f["values"], t["values"]) for f in front), t
    # the front's trials are registered models with their lineage; no other trial's model remains
    for t in front:
        status, rec = request(live.url, "GET", f"/api/v1/models/{t['model_id']}", token=live.admin)
        assert status == 200, rec
        assert rec["parent_model_id"] == model["id"] and rec["dataset_id"] == ds["id"]
        assert rec["hyperparameters"] == t["hyperparameters"]
        assert (rec["evolution_job_id"], rec["trial_job_id"]) == (job["id"], t["job_id"])
        assert (rec["generation"], rec["trial"]) == (t["generation"], t["index"])
        assert rec["status"] == "ready"
    status, listing = request(live.url, "GET", "/api/v1/models", token=live.admin)
    kept = {m["id"] for m in listing["models"] if m.get("evolution_job_id") == job["id"]}
    assert kept == {t["model_id"] for t in front}
    assert all(t["model_id"] is None for t in trials if (t["generation"], t["index"]) not in keys)
    # the trial events carry what the report draws: values, state, the accuracy curve, the model
    recorded = [
        e["data"] for e in events(live.url, live.admin, f"job-{job['id']}") if e["type"] == "TrialCompleted"
    ]
    assert all(r["state"] in ("finished", "pruned", "failed") for r in recorded)
    assert all(len(r["curve"]) == 1 and r["model_id"] for r in recorded if r["state"] == "finished")
    status, rep = request(live.url, "GET", f"/api/v1/jobs/{job['id']}/report?format=json", token=live.admin)
    assert status == 200 and rep["pareto"] is not None, rep
