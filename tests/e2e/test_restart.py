"""Crash and restart: a training killed with -9 resumes from its checkpoint on the next start and
succeeds; a deployment serves again after a SIGTERM restart with no user action."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests.e2e.helpers import (
    API,
    events,
    predict_png,
    preset,
    replay,
    shapes_zip,
    upload_dataset,
    wait_job,
    wait_model,
)
from tests.e2e.server import Server, request

pytestmark = pytest.mark.slow

EPOCHS = 30


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _restart(server: Server, sig: int) -> str:
    children = server.descendants()
    server.stop(sig)
    deadline = time.monotonic() + 60
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(children), [" ".join(p.cmdline())[:100] for p in _alive(children)]
    server.start()
    return server.token()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("restart") / "data").start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture(scope="module")
def assets(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    token = server.token()
    status, model = preset(server.url, token, "tiny_cnn", name="restart-tiny", num_classes=3)
    assert status == 200, model
    data = shapes_zip(tmp_path_factory.mktemp("restart-ds"), n_per_class=60, size=32, seed=5)
    status, ds = upload_dataset(server.url, token, data, name="restart-shapes")
    assert status == 200, ds
    return {"model": model, "dataset": ds}


def _scheduler_events(server: Server, token: str, job_id: str) -> list[str]:
    return [
        e["type"]
        for e in events(server.url, token, "scheduler")
        if e["data"].get("job_id") == job_id and e["type"].startswith("Job")
    ]


def test_kill9_mid_training_resumes_from_the_checkpoint(server: Server, assets: dict[str, Any]) -> None:
    token = server.token()
    hp = {"epochs": EPOCHS, "batch_size": 16, "lr": 0.01, "num_workers": 0, "augment_scale_crop": False}
    body = {
        "kind": "train",
        "model_id": assets["model"]["id"],
        "dataset_id": assets["dataset"]["id"],
        "hyperparameters": hp,
    }
    status, job = request(server.url, "POST", f"{API}/jobs", body, token)
    assert status == 202, job
    jid = job["id"]
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if any(e["type"] == "CheckpointSaved" for e in events(server.url, token, f"job-{jid}")):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("no checkpoint within 300 s")
    current = request(server.url, "GET", f"{API}/jobs/{jid}", token=token)[1]
    assert current["status"] == "running", current  # still mid-training when the server dies

    token = _restart(server, signal.SIGKILL)

    done = wait_job(server.url, token, jid, timeout=600)
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["epochs_done"] == EPOCHS, result
    assert result["resumed_from_epoch"] is not None and result["resumed_from_epoch"] >= 1, result
    assert done["interruptions"] >= 1 and done["attempt"] >= 2, done
    types = _scheduler_events(server, token, jid)
    first_start = types.index("JobStarted")
    interrupted = types.index("JobInterrupted")
    assert first_start < interrupted < len(types) - 1, types
    assert types.count("JobStarted") >= 2 and types[-1] == "JobSucceeded", types
    assert types[interrupted + 1 :].count("JobStarted") >= 1, types
    job_events = events(server.url, token, f"job-{jid}")
    resumed = [
        e
        for e in job_events
        if e["type"] == "JobProgressed" and e["data"]["progress"].get("phase") == "resumed"
    ]
    assert resumed and resumed[0]["data"]["progress"]["from_epoch"] == result["resumed_from_epoch"], resumed
    epochs = sorted(
        {
            e["data"]["progress"]["epoch"]
            for e in job_events
            if e["type"] == "JobProgressed" and e["data"]["progress"].get("phase") == "epoch"
        }
    )
    assert epochs == list(range(1, EPOCHS + 1)), epochs
    new = wait_model(server.url, token, result["model_id"])  # the job ended at registration
    assert new["status"] == "ready" and new["parent_model_id"] == assets["model"]["id"], new
    view = request(server.url, "GET", f"{API}/scheduler", token=token)[1]
    assert view["in_use"] == 0, view
    proc = replay("verify", "--data-dir", str(server.data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deployment_serves_again_after_sigterm_restart(server: Server, assets: dict[str, Any]) -> None:
    token = server.token()
    body = {"model_id": assets["model"]["id"], "engine": "onnxruntime-cpu", "workers": 1}
    status, dep = request(server.url, "POST", f"{API}/deployments", body, token)
    assert status == 201, dep
    before = predict_png(server, token, dep["id"])
    assert len(before["predictions"]) == 3, before

    token = _restart(server, signal.SIGTERM)

    status, again = request(server.url, "GET", f"{API}/deployments/{dep['id']}", token=token)
    assert status == 200 and again["engine"] == "onnxruntime-cpu", again
    after = predict_png(server, token, dep["id"])
    assert [p["class_id"] for p in after["predictions"]] == [p["class_id"] for p in before["predictions"]]
    for a, b in zip(after["predictions"], before["predictions"], strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4, (a, b)
    status, listing = request(server.url, "GET", f"{API}/deployments", token=token)
    assert [d["id"] for d in listing["deployments"]] == [dep["id"]], listing


def test_kill9_mid_evolution_resumes_without_rerunning_a_finished_trial(
    server: Server, assets: dict[str, Any]
) -> None:
    """The evolution (tokenless) and its trials are interrupted by kill -9; after the restart it
    rebuilds its population from the log: every trial completes exactly once, no trial that had
    finished runs again, generation 0 is the seed's, and the token audit stays clean."""
    from cvops.ga import initial_population, parse_space

    token = server.token()
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "optimizer": {"type": "choice", "choices": ["sgd", "adamw"]},
        "epochs": {"type": "choice", "choices": [2]},
        "batch_size": {"type": "choice", "choices": [16]},
        "num_workers": {"type": "choice", "choices": [0]},
    }
    body = {
        "kind": "evolve",
        "model_id": assets["model"]["id"],
        "dataset_id": assets["dataset"]["id"],
        "population": 4,
        "generations": 2,
        "seed": 11,
        "search_space": space,
    }
    status, job = request(server.url, "POST", f"{API}/jobs", body, token)
    assert status == 202, job
    jid = job["id"]
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if any(e["type"] == "TrialCompleted" for e in events(server.url, token, f"job-{jid}")):
            break
        time.sleep(0.3)
    else:
        raise AssertionError("no finished trial within 300 s")
    assert request(server.url, "GET", f"{API}/jobs/{jid}", token=token)[1]["status"] == "running"
    crash_seq = max(e["seq"] for e in events(server.url, token, "scheduler"))
    finished_before = {
        e["data"]["job_id"]
        for e in events(server.url, token, "scheduler")
        if e["type"] == "JobSucceeded" and e["data"]["job_id"].startswith(jid[:16] + "-g")
    }
    assert finished_before

    token = _restart(server, signal.SIGKILL)

    done = wait_job(server.url, token, jid, timeout=600)
    assert done["status"] == "succeeded" and done["interruptions"] >= 1, done
    trials = [e["data"] for e in events(server.url, token, f"job-{jid}") if e["type"] == "TrialCompleted"]
    keys = [(t["generation"], t["index"]) for t in trials]
    assert sorted(keys) == [(g, i) for g in range(2) for i in range(4)], keys  # each exactly once
    assert [t["genes"] for t in sorted(trials, key=lambda t: (t["generation"], t["index"]))][:4] == (
        initial_population(parse_space(space), 4, 11)
    )
    sched = events(server.url, token, "scheduler")
    for child in finished_before:
        again = [e for e in sched if e["data"].get("job_id") == child and e["seq"] > crash_seq]
        assert again == [], (child, again)  # a finished trial never runs twice
    states = {t["child_job_id"]: t.get("state", "finished") for t in trials}
    for child, state in states.items():
        # a finished trial succeeded exactly once; one the median rule pruned was cancelled exactly once
        end = "JobCancelled" if state == "pruned" else "JobSucceeded"
        ends = [e for e in sched if e["type"] == end and e["data"]["job_id"] == child]
        assert state in ("finished", "pruned") and len(ends) == 1, (child, state, ends)
    assert not [e for e in sched if e["type"] == "GpuTokenGranted" and e["data"]["job_id"] == jid]
    proc = replay("verify", "--data-dir", str(server.data_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
