"""Checkpoint retention and ``cvops gc`` on a real server's data dir (issue 11).

A training run of a few epochs keeps at most its last and best checkpoint blobs (the older ones are
recorded as discarded, then deleted); the trained model's id has the shape of every other id;
``cvops gc --dry-run`` lists an unnamed blob with its size and no named one; ``cvops gc`` deletes that
blob alone, and a restart afterwards still serves every model and the deployment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import (
    API,
    events,
    png_bytes,
    predict_png,
    preset,
    shapes_zip,
    upload_dataset,
    wait_job,
    wait_model,
)
from tests.e2e.server import Server, request

ID = re.compile(r"^[0-9a-f]{16}$")  # the shape of every id the platform makes (uuid4().hex[:16])
EPOCHS = 4


def _gc(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cvops", "gc", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _blob_files(data_dir: Path) -> set[str]:
    root = data_dir / "blobs" / "sha256"
    return {p.parent.name + p.name for p in root.glob("*/*") if p.is_file()}


def test_checkpoints_kept_and_gc_collects_only_unnamed_blobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = Server(data).start()
    try:
        token = server.token()
        status, base = preset(server.url, token, "tiny_cnn", name="tiny-gc", num_classes=3)
        assert status == 200 and base["status"] == "ready", base
        status, ds = upload_dataset(
            server.url, token, shapes_zip(tmp_path, n_per_class=60, seed=5), name="gc"
        )
        assert status == 200 and ds["status"] == "ready", ds
        hp = {"epochs": EPOCHS, "batch_size": 16, "lr": 0.01, "image_size": 32, "num_workers": 0}
        body = {"kind": "train", "model_id": base["id"], "dataset_id": ds["id"], "hyperparameters": hp}
        status, job = request(server.url, "POST", f"{API}/jobs", body, token)
        assert status == 202, job
        done = wait_job(server.url, token, job["id"], timeout=300)
        assert done["status"] == "succeeded", done
        trained_id = done["result"]["model_id"]
        # one shape for every id: the trained model's like the preset's, the dataset's and the job's
        assert ID.match(trained_id) and ID.match(base["id"]) and ID.match(ds["id"]), (trained_id, base["id"])
        trained = wait_model(server.url, token, trained_id)  # the job ended at registration
        assert trained["status"] == "ready", trained

        evs = events(server.url, token, f"job-{job['id']}")
        saved = [e["data"] for e in evs if e["type"] == "CheckpointSaved"]
        assert [c["epoch"] for c in saved] == list(range(1, EPOCHS + 1)), saved
        discarded = {sha for e in evs if e["type"] == "CheckpointsDiscarded" for sha in e["data"]["sha256s"]}
        on_disk = _blob_files(data)
        kept = [c for c in saved if c["sha256"] in on_disk]
        assert 1 <= len(kept) <= 2, (kept, saved)
        assert saved[-1] in kept  # the newest is always kept (a resumed attempt starts from it)
        assert {c["sha256"] for c in saved} - {c["sha256"] for c in kept} == discarded - {
            c["sha256"] for c in kept
        }
        best_epoch = int(saved[-1]["metrics"]["best_epoch"])
        assert any(c["epoch"] == best_epoch for c in kept), (best_epoch, kept)

        body = {"model_id": trained_id, "engine": "onnxruntime-cpu", "workers": 1}
        status, dep = request(server.url, "POST", f"{API}/deployments", body, token)
        assert status == 201, dep
        before = predict_png(server, token, dep["id"])

        # an unnamed blob, as a crash between writing a blob and its event would leave
        orphan = os.urandom(4096)
        import hashlib

        sha = hashlib.sha256(orphan).hexdigest()
        path = data / "blobs" / "sha256" / sha[:2] / sha[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orphan)
        named = _blob_files(data) - {sha}

        young = _gc(data, "--dry-run", "--json")  # default --min-age: a fresh blob may be named soon
        assert young.returncode == 0, young.stderr
        assert json.loads(young.stdout)["orphans"] == [] and json.loads(young.stdout)["young"] == 1

        dry = _gc(data, "--dry-run", "--min-age", "0")
        assert dry.returncode == 0, dry.stderr
        listed = {line.split("\t")[0]: int(line.split("\t")[1]) for line in dry.stdout.splitlines()}
        assert listed == {sha: 4096}, (dry.stdout, dry.stderr)
        assert path.is_file()  # a dry run deletes nothing

        server.stop()
        real = _gc(data, "--min-age", "0", "--json")
        assert real.returncode == 0, real.stderr
        report = json.loads(real.stdout)
        assert report["deleted"] == 1 and report["freed_bytes"] == 4096, report
        assert _blob_files(data) == named  # the orphan alone is gone

        server.start()
        token = server.token()
        status, listing = request(server.url, "GET", f"{API}/models", token=token)
        assert status == 200, listing
        ids = {m["id"] for m in listing["models"]}
        assert {base["id"], trained_id} <= ids, ids
        for m in listing["models"]:
            assert m["status"] == "ready", m
            status, _ = request(server.url, "GET", f"{API}/models/{m['id']}/onnx", token=token)
            assert status == 200, m["id"]
        deadline = time.monotonic() + 120
        while True:
            status, reply = request(
                server.url,
                "POST",
                f"{API}/deployments/{dep['id']}/predict",
                raw=png_bytes(),
                token=token,
                headers={"Content-Type": "image/png"},
            )
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status == 200, reply
        assert [p["class_id"] for p in reply["predictions"]] == [p["class_id"] for p in before["predictions"]]
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.mark.parametrize("args", [("--dry-run",), ()])
def test_gc_without_an_event_log_says_so(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = _gc(tmp_path / "nowhere", *args)
    assert proc.returncode == 2 and "no event log" in proc.stderr, proc.stderr
