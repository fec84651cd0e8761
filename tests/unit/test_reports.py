"""The report builders fed by hand-made events: figures, sentences, charts and byte-stable output for
every kind (benchmark, training, evolution, model card), and the signed links to them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from cvops.errors import Forbidden, NotFound, ValidationFailed
from cvops.events.schema import (
    JobProgressed,
    JobSubmitted,
    TrialCompleted,
    decode_event,
    encode_event,
    type_of,
)
from cvops.platform.report_links import LinkClaims, sign, verify
from cvops.reports import job_report, model_card_report
from cvops.reports.evolution import direction, knee, pareto
from cvops.reports.evolution import report_data as evolution_data
from cvops.reports.model_card import report_data as card_data
from cvops.reports.training import report_data as training_data
from tests import report_events as ev

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "benchmark": lambda evs, v, f: job_report("bench1", evs, v, f),
    "training": lambda evs, v, f: job_report("train1", evs, v, f),
    "evolution": lambda evs, v, f: job_report("evo1", evs, v, f),
    "card": lambda evs, v, f: model_card_report("m2", evs, v, f),
}
EVENTS = {
    "benchmark": ev.benchmark_events,
    "training": ev.training_events,
    "evolution": lambda: ev.evolution_events(objectives=True),
    "card": ev.card_events,
}


def _roundtrip(events: list) -> list:  # type: ignore[type-arg]
    """As the log would give them back: encoded, decoded (a fresh object graph)."""
    return [decode_event(type_of(e), encode_event(e)) for e in events]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("view", ["simple", "technical"])
@pytest.mark.parametrize("fmt", ["json", "md", "html"])
def test_same_events_same_bytes(kind: str, view: str, fmt: str) -> None:
    first = KINDS[kind](EVENTS[kind](), view, fmt)
    assert KINDS[kind](EVENTS[kind](), view, fmt) == first
    if kind != "evolution":  # its objectives ride on a test-only subclass the decoder does not know
        assert KINDS[kind](_roundtrip(EVENTS[kind]()), view, fmt) == first
    assert first.endswith(b"\n")
    if fmt == "json":
        data = json.loads(first)
        assert first.decode() == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        assert data["view"] == view


PROBE = """
import hashlib, sys
from cvops.reports import job_report, model_card_report
from tests import report_events as ev
out = b"".join(
    job_report("bench1", ev.benchmark_events(), v, f) + job_report("train1", ev.training_events(), v, f)
    + job_report("evo1", ev.evolution_events(objectives=True), v, f) + model_card_report("m2", ev.card_events(), v, f)
    for v in ("simple", "technical") for f in ("json", "md", "html")
)
print(hashlib.sha256(out).hexdigest())
"""


def test_same_bytes_in_another_process() -> None:
    """A fresh interpreter (another hash seed, as after a restart) renders the very same bytes."""
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT, check=True
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


@pytest.mark.parametrize("kind", list(KINDS))
def test_html_is_self_contained_and_simple_has_one_chart(kind: str) -> None:
    for view in ("simple", "technical"):
        page = KINDS[kind](EVENTS[kind](), view, "html").decode()
        assert page.startswith("<!DOCTYPE html>") and "<style>" in page
        assert not re.search(r"<script|src=|href=|@import|url\(|https?:", page), view
        charts = page.count('<svg class="chart"')
        assert charts == 1 if view == "simple" else charts >= 1, (view, charts)
        assert 'width="0"' not in page


# -------------------------------------------------------------------------------------------- training


def test_training_figures_checkpoint_and_lineage() -> None:
    data = training_data("train1", ev.training_events(), "technical")
    assert [e["epoch"] for e in data["epochs"]] == [1, 2, 3, 4]
    assert data["epochs"][2] == {"epoch": 3, "epochs": 4, "loss": 0.42, "val_loss": 0.4, "val_accuracy": 0.93,
                                 "lr": 0.005, "images_per_s": 430.0, "stopped_early": False}  # fmt: skip
    assert data["best"] == {"epoch": 3, "val_accuracy": 0.93}
    assert data["checkpoint"]["sha256"] == "3" * 64
    assert [c["kept"] for c in data["checkpoints"]] == [False, True, True, True]  # epoch 1 was discarded
    lin = data["lineage"]
    assert lin["parent_model"] == {"id": "m1", "name": "tiny-cnn"}
    assert lin["dataset"]["name"] == "shapes" and lin["dataset"]["images"] == {"train": 300, "val": 60}
    assert (
        lin["model"]["id"] == "m2" and lin["model"]["status"] == "ready" and lin["model"]["parity"]["passed"]
    )
    assert data["hyperparameters"]["optimizer"] == "adamw"  # defaults filled in
    assert data["hyperparameters"]["lr"] == 0.01 and data["device"] == "cpu"
    assert data["summary"][0] == (
        "Use model m2 (tiny-cnn-ft): the weights of epoch 3, which reached the best validation accuracy "
        "(93.0%) of the 4 epochs."
    )
    simple = training_data("train1", ev.training_events(), "simple")
    assert "hyperparameters" not in simple and "checkpoints" not in simple
    md = job_report("train1", ev.training_events(), "technical", "md").decode()
    assert "| 3 | 0.4200 | 0.4000 | 0.9300 | 0.005000 | 430.00 |" in md


def test_a_rerun_epoch_counts_once_and_a_running_job_reports_so_far() -> None:
    evs = ev.training_events(finished=False)
    rerun = JobProgressed(
        job_id="train1",
        progress={"phase": "epoch", "epoch": 2, "epochs": 4, "loss": 0.7, "val_accuracy": 0.82},
    )
    data = training_data("train1", [*evs, rerun], "simple")
    assert [e["epoch"] for e in data["epochs"]] == [1, 2, 3] and data["epochs"][1]["val_accuracy"] == 0.82
    assert data["status"] == "running" and data["lineage"]["model"] is None
    assert data["summary"][0] == (
        "Training is running: 3 of 4 epochs done, best validation accuracy so far 93.0% (epoch 3)."
    )
    queued = [e for e in evs if not isinstance(e, JobProgressed)]
    with pytest.raises(NotFound, match="no report yet"):
        training_data("train1", queued, "simple")
    with pytest.raises(NotFound):
        job_report("nope", evs, "simple", "json")


# ------------------------------------------------------------------------------------------- evolution


def test_evolution_generations_trials_and_best() -> None:
    data = evolution_data("evo1", ev.evolution_events(), "technical")
    assert data["generations"] == [
        {"generation": 0, "trials": 3, "best": 0.7, "mean": 0.4},
        {"generation": 1, "trials": 3, "best": 0.8, "mean": 0.716667},
    ]
    assert [(t["generation"], t["index"], t["state"]) for t in data["trials"]][:3] == [
        (0, 0, "succeeded"), (0, 1, "succeeded"), (0, 2, "failed"),
    ]  # fmt: skip
    assert data["best"]["job_id"] == "evo1-g1i0" and data["best"]["hyperparameters"] == {
        "batch_size": 8,
        "lr": 0.002,
    }
    assert data["pareto"] is None  # one fitness per trial: no front
    assert data["summary"][0].startswith(
        "Use the hyperparameters of trial 1/0 (batch_size=8, lr=0.002): fitness 0.8000"
    )


def test_evolution_pending_trials_and_no_report_before_the_first() -> None:
    evs = ev.evolution_events()[:-1]  # not finished
    pending = JobSubmitted(
        job_id="evo1-g2i0", kind="train", spec={"hyperparameters": {"lr": 0.1}}, parent_job_id="evo1"
    )
    data = evolution_data("evo1", [*evs, pending], "technical")
    assert data["trials"][-1] == {"generation": 2, "index": 0, "job_id": "evo1-g2i0", "state": "queued",
                                  "fitness": None, "hyperparameters": {"lr": 0.1}, "objectives": {}}  # fmt: skip
    assert data["summary"][0].startswith("So far (running), the best is")
    with pytest.raises(NotFound, match="no trial has finished"):
        evolution_data("evo1", [e for e in evs if not isinstance(e, TrialCompleted)], "simple")


def test_pareto_front_and_knee() -> None:
    data = evolution_data("evo1", ev.evolution_events(objectives=True), "technical")
    par = data["pareto"]
    assert par["objectives"] == [
        {"name": "latency_ms", "direction": "min"},
        {"name": "val_accuracy", "direction": "max"},
    ]
    assert [(m["generation"], m["index"]) for m in par["front"]] == [(1, 2), (0, 1), (1, 1), (1, 0)]
    assert [m["knee"] for m in par["front"]] == [False, False, True, False]
    assert "take the knee point, trial 1/1" in data["summary"][2]
    page = job_report("evo1", ev.evolution_events(objectives=True), "technical", "html").decode()
    assert "knee: 1/1" in page


def test_pareto_helpers() -> None:
    pts = [[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.4, 0.4], [1.0, 1.0]]
    assert pareto(pts, ["max", "max"]) == [0, 1, 2, 4]  # equal points do not dominate each other
    assert pareto(pts, ["min", "min"]) == [3]
    assert knee([[0.0, 1.0], [0.6, 0.6], [1.0, 0.0]], ["max", "max"]) == 1
    assert knee([], ["max"]) is None
    assert direction("latency_ms") == "min" and direction("accuracy") == "max"
    assert direction("latency_ms", {"latency_ms": "max"}) == "max"


# ------------------------------------------------------------------------------------------ model card


def test_model_card() -> None:
    data = card_data("m2", ev.card_events(), "technical")
    assert data["status"] == "ready" and data["source"]["name"] == "tiny-cnn-ft"
    assert data["parity"] == {
        "passed": True,
        "max_abs_diff": 1.5e-06,
        "top1_agreement": 1.0,
        "tolerance": 0.0001,
        "samples": 8,
    }
    assert data["lineage"]["parent_model"] == {"id": "m1", "name": "tiny-cnn"}
    assert data["lineage"]["train_job"] == "train1" and data["lineage"]["dataset"]["id"] == "d1"
    assert data["lineage"]["hyperparameters"]["epochs"] == 4
    assert [b["job_id"] for b in data["benchmarks"]] == ["bench2"]
    assert data["selected_engine"]["engine"] == "onnxruntime-cpu-int8"
    assert [(d["id"], d["active"]) for d in data["deployments"]] == [("dep1", True), ("dep0", False)]
    assert data["format"]["opset"] == 17
    assert data["summary"] == [
        "tiny-cnn-ft is a classification model with 3 classes, fine-tuned from model m1 on dataset d1.",
        "Its ONNX form matches the source (max abs diff 1.50e-06, top-1 agreement 1.00 on 8 samples).",
        "Serve it with onnxruntime-cpu-int8: p95 2.64 ms at batch 1 (568 images/s), chosen by benchmark job bench2.",
        "Deployed as dep1 (onnxruntime-cpu, 2 workers).",
    ]
    plain = card_data("m1", ev.model_events("m1"), "simple")
    assert (
        plain["summary"][-1]
        == "No benchmark has selected an engine for it yet: run a benchmark job to choose one."
    )
    assert "preset tiny_cnn" in plain["summary"][0] and "format" not in plain
    with pytest.raises(NotFound):
        card_data("zz", ev.card_events(), "simple")
    md = model_card_report("m2", ev.card_events(), "technical", "md").decode()
    assert "| dep0 | torch-cpu | 1 | 8 | 5.0 | admin | deleted |" in md


def test_bad_view_or_format() -> None:
    with pytest.raises(ValidationFailed):
        job_report("bench1", ev.benchmark_events(), "fancy", "json")
    with pytest.raises(ValidationFailed):
        model_card_report("m2", ev.card_events(), "simple", "pdf")


def test_html_escapes_event_text() -> None:
    evs = ev.training_events()
    evs = [
        msgspec.structs.replace(e, name="<script>x</script>") if type_of(e) == "DatasetUploaded" else e
        for e in evs
    ]
    page = job_report("train1", evs, "technical", "html").decode()
    assert "<script>" not in page and "&lt;script&gt;" in page


# ---------------------------------------------------------------------------------------- signed links

PATH = "/api/v1/jobs/abc/report"


def test_link_round_trip_and_expiry() -> None:
    sig = sign("s3cret", LinkClaims(path=PATH, user="eve", ver=2, exp=1000))
    assert verify("s3cret", sig, PATH, now=999.0) == LinkClaims(path=PATH, user="eve", ver=2, exp=1000)
    with pytest.raises(Forbidden, match="expired") as err:
        verify("s3cret", sig, PATH, now=1000.0)
    assert err.value.details["reason"] == "expired_link"
    with pytest.raises(Forbidden, match="another report"):
        verify("s3cret", sig, "/api/v1/jobs/abd/report", now=0)


@pytest.mark.parametrize("how", ["secret", "payload", "mac", "garbage", "empty", "long"])
def test_tampered_links_are_refused(how: str) -> None:
    sig = sign("s3cret", LinkClaims(path=PATH, user="eve", ver=2, exp=1000))
    payload, _, mac = sig.partition(".")
    forged = sign("s3cret", LinkClaims(path=PATH, user="admin", ver=0, exp=10**10)).partition(".")[0]
    bad = {
        "secret": sign("other", LinkClaims(path=PATH, user="eve", ver=2, exp=1000)),
        "payload": f"{forged}.{mac}",
        "mac": f"{payload}.{mac[:-2]}AA",
        "garbage": "%%%.###",
        "empty": "",
        "long": f"{payload}{'A' * 1024}.{mac}",
    }[how]
    with pytest.raises(Forbidden, match="not valid") as err:
        verify("s3cret", bad, PATH, now=0)
    assert err.value.details["reason"] == "invalid_link"
