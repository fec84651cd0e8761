"""The training report: loss and validation accuracy per epoch (train and val), learning rate, images/s,
the checkpoint chosen and the lineage (parent model, dataset, hyperparameters, the model it produced).

Fed by the job's events: its scheduler events (JobSubmitted … JobSucceeded), its own stream (the
``phase == "epoch"`` JobProgressed records, CheckpointSaved, CheckpointsDiscarded) and the events of the
models and dataset it names.  A re-run epoch (resume after a crash) counts once: the last record wins.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cvops.errors import NotFound
from cvops.events.schema import (
    CheckpointSaved,
    CheckpointsDiscarded,
    Event,
    JobProgressed,
    ModelConverted,
    ModelRejected,
)
from cvops.reports import svg
from cvops.reports.common import dataset_facts, dataset_view, hyperparameters, job_facts, model_name, pct
from cvops.reports.doc import Block, Chart, Doc, Para, Pre, Section, Table
from cvops.reports.fmt import fixed, num, rounded, sci

EPOCH_FIELDS = (
    ("loss", 6),
    ("val_loss", 6),
    ("val_accuracy", 6),
    ("map50", 6),
    ("map50_95", 6),
    ("lr", 9),
    ("images_per_s", 2),
)


def _epochs(job_id: str, events: Sequence[Event]) -> list[dict[str, Any]]:
    by_epoch: dict[int, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, JobProgressed) and ev.job_id == job_id and ev.progress.get("phase") == "epoch":
            p = ev.progress
            try:
                epoch = int(p["epoch"])
            except (KeyError, TypeError, ValueError):
                continue
            row: dict[str, Any] = {"epoch": epoch}
            for key, places in EPOCH_FIELDS:
                if key in p:
                    row[key] = rounded(num(p.get(key)), places)
            row["stopped_early"] = bool(p.get("stopped_early", False))
            if isinstance(p.get("epochs"), int):
                row["epochs"] = p["epochs"]
            by_epoch[epoch] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _checkpoints(job_id: str, events: Sequence[Event]) -> list[dict[str, Any]]:
    saved: dict[int, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, CheckpointSaved) and ev.job_id == job_id:
            saved[ev.epoch] = {"epoch": ev.epoch, "sha256": ev.sha256, "kept": True}
        elif isinstance(ev, CheckpointsDiscarded) and ev.job_id == job_id:
            for c in saved.values():
                if c["sha256"] in ev.sha256s:
                    c["kept"] = False
    return [saved[e] for e in sorted(saved)]


def _produced(model_id: str, events: Sequence[Event]) -> dict[str, Any]:
    out: dict[str, Any] = {"id": model_id, "name": model_name(model_id, events), "status": "registered"}
    for ev in events:
        if isinstance(ev, ModelConverted) and ev.model_id == model_id:
            out["status"] = "ready"
            out["parity"] = {"passed": ev.parity.passed, "max_abs_diff": rounded(ev.parity.max_abs_diff, 12),
                             "top1_agreement": rounded(ev.parity.top1_agreement, 4),
                             "tolerance": rounded(ev.parity.tolerance, 12)}  # fmt: skip
        elif isinstance(ev, ModelRejected) and ev.model_id == model_id:
            out["status"] = "rejected"
            out["reason"] = ev.reason
    return out


def report_data(job_id: str, events: Sequence[Event], view: str) -> dict[str, Any]:
    job = job_facts(job_id, events)
    epochs = _epochs(job_id, events)
    if job.kind and job.kind != "train":
        raise NotFound(f"job {job_id} is a {job.kind} job, not a train job", {"job_id": job_id})
    if not epochs and job.status not in ("succeeded", "failed", "cancelled"):
        raise NotFound("this job has no report yet (no epoch has finished)", {"job_id": job_id})
    result = job.result or {}
    last = epochs[-1] if epochs else {}
    best_epoch = result.get("best_epoch")
    best_acc = result.get("best_val_accuracy")
    if best_epoch is None and epochs:
        scored = [e for e in epochs if e.get("val_accuracy") is not None]
        if scored:
            top = max(scored, key=lambda e: (e["val_accuracy"], -e["epoch"]))
            best_epoch, best_acc = top["epoch"], top["val_accuracy"]
    checkpoints = _checkpoints(job_id, events)
    chosen = next((c for c in checkpoints if c["epoch"] == best_epoch), None)
    parent_id = str(job.spec.get("model_id") or "")
    dataset_id = str(job.spec.get("dataset_id") or "")
    produced_id = str(result.get("model_id") or "")
    data: dict[str, Any] = {
        "report": "training",
        "view": view,
        "job_id": job_id,
        "status": job.status,
        "epochs_planned": last.get("epochs")
        or hyperparameters(job.spec.get("hyperparameters") or {}).get("epochs"),
        "epochs_done": len(epochs),
        "best": {"epoch": best_epoch, "val_accuracy": rounded(num(best_acc), 6)},
        "final_loss": last.get("loss"),
        "stopped_early": bool(last.get("stopped_early")),
        "checkpoint": {
            "epoch": best_epoch,
            "sha256": chosen["sha256"] if chosen else None,
            "why": "the epoch with the highest validation accuracy (its weights became the new model)",
        },
        "lineage": {
            "parent_model": {"id": parent_id, "name": model_name(parent_id, events)},
            "dataset": dataset_view(dataset_facts(dataset_id, events)),
            "model": _produced(produced_id, events) if produced_id else None,
        },
        "epochs": epochs,
        "error": job.error,
    }
    data["summary"] = _summary(data)
    if view == "technical":
        data["hyperparameters"] = hyperparameters(job.spec.get("hyperparameters") or {})
        data["checkpoints"] = checkpoints
        data["device"] = job.device
        data["attempts"] = job.attempts
        data["throughput"] = {
            "images_per_s": rounded(num(result.get("images_per_s")), 2),
            "first_step_s": rounded(num(result.get("first_step_s")), 3),
            "seconds": rounded(num(result.get("seconds")), 1),
            "resumed_from_epoch": result.get("resumed_from_epoch"),
        }
        data["method"] = (
            "Fine-tuning of the parent model on the dataset's train split; after every epoch the model is "
            "evaluated on the val split (loss and top-1 accuracy; mAP50 for detection). The weights of the "
            "epoch with the best validation accuracy are kept and registered as a new model, which is "
            "converted to ONNX and checked for parity like any upload."
        )
    return data


def _summary(data: dict[str, Any]) -> list[str]:
    best = data["best"]
    lin = data["lineage"]
    out: list[str] = []
    model = lin["model"]
    if data["status"] == "succeeded" and model:
        name = f" ({model['name']})" if model["name"] else ""
        out.append(
            f"Use model {model['id']}{name}: the weights of epoch {best['epoch']}, which reached the best "
            f"validation accuracy ({pct(best['val_accuracy'])}) of the {data['epochs_done']} epochs."
        )
        if model.get("parity"):
            out.append(
                "Its ONNX conversion matches the PyTorch weights."
                if model["parity"]["passed"]
                else "Its ONNX conversion did NOT match the PyTorch weights within tolerance."
            )
    elif data["status"] == "succeeded":
        out.append(
            f"Best validation accuracy {pct(best['val_accuracy'])} at epoch {best['epoch']} "
            f"of {data['epochs_done']} (an evolution trial: no model was registered)."
        )
    elif data["status"] in ("failed", "cancelled"):
        out.append(
            f"The training {data['status']} after {data['epochs_done']} epochs; no model was registered."
        )
        if data["error"]:
            out.append(f"Error: {data['error']}")
    else:
        out.append(
            f"Training is {data['status']}: {data['epochs_done']} of {data['epochs_planned']} epochs done, "
            f"best validation accuracy so far {pct(best['val_accuracy'])} (epoch {best['epoch']})."
        )
    if data["stopped_early"]:
        out.append("It stopped early: the validation accuracy had stopped improving (patience).")
    ds = lin["dataset"]
    if ds["id"]:
        out.append(
            f"Trained from model {lin['parent_model']['id']} on dataset {ds['id']}"
            + (f" ({ds['name']}, {len(ds['classes'])} classes)." if ds["name"] else ".")
        )
    return out


def _series(epochs: list[dict[str, Any]], key: str, name: str, dashed: bool = False) -> svg.Series:
    return svg.Series(
        name, [(float(e["epoch"]), float(e[key])) for e in epochs if e.get(key) is not None], dashed=dashed
    )


def curves_chart(data: dict[str, Any]) -> Chart:
    e = data["epochs"]
    series = [
        _series(e, "loss", "train loss"),
        _series(e, "val_loss", "val loss", True),
        _series(e, "val_accuracy", "val accuracy"),
    ]
    return Chart(
        svg.line_chart(
            [s for s in series if s.points], "Loss and validation accuracy per epoch", "epoch", "value"
        ),
        "train and val loss and validation accuracy per epoch",
    )


def document(data: dict[str, Any]) -> Doc:
    lin = data["lineage"]
    facts = [
        ("Status", data["status"]),
        ("Parent model", lin["parent_model"]["id"]),
        ("Dataset", lin["dataset"]["id"]),
    ]
    what: list[Block] = [
        Para(s, highlight=i == 0, warn=i == 0 and data["status"] != "succeeded")
        for i, s in enumerate(data["summary"])
    ]
    sections = [Section("What to use and why", what), Section("Training curves", [curves_chart(data)])]
    if data["view"] == "technical":
        e = data["epochs"]
        sections.append(
            Section(
                "Learning rate and throughput",
                [
                    Chart(svg.line_chart([_series(e, "lr", "learning rate")], "Learning rate per epoch", "epoch", "lr"), "learning rate per epoch"),
                    Chart(svg.line_chart([_series(e, "images_per_s", "images/s")], "Training throughput per epoch", "epoch", "images/s"), "training images per second per epoch"),
                ],
            )
        )  # fmt: skip
        cols = [k for k, _ in EPOCH_FIELDS if any(k in row for row in e)]
        places = dict(EPOCH_FIELDS)
        rows = [
            [str(row["epoch"])] + [fixed(row.get(k), min(places[k], 4) if k != "lr" else 6) for k in cols]
            for row in e
        ]
        sections.append(Section("Epochs", [Table(["epoch", *cols], rows, empty="No epoch finished.")]))
        ck = data["checkpoint"]
        sections.append(
            Section(
                "Checkpoint chosen",
                [
                    Para(f"Epoch {ck['epoch']}: {ck['why']}." + (f" Checkpoint blob {ck['sha256']}." if ck["sha256"] else "")),
                    Table(["epoch", "sha256", "kept"], [[str(c["epoch"]), c["sha256"], fixed(c["kept"], 0)] for c in data["checkpoints"]], empty="No checkpoint saved."),
                ],
            )
        )  # fmt: skip
        model = lin["model"] or {}
        lineage = [
            ["parent model", f"{lin['parent_model']['id']} {lin['parent_model']['name']}".strip()],
            [
                "dataset",
                f"{lin['dataset']['id']} {lin['dataset']['name']} ({lin['dataset']['format']})".strip(),
            ],
            ["classes", ", ".join(lin["dataset"]["classes"])],
            ["images per split", ", ".join(f"{k} {v}" for k, v in lin["dataset"]["images"].items())],
            [
                "produced model",
                f"{model.get('id', '–')} {model.get('name', '')} ({model.get('status', 'none')})",
            ],
        ]
        if model.get("parity"):
            p = model["parity"]
            lineage.append(
                [
                    "ONNX parity",
                    f"passed {fixed(p['passed'], 0)}, max abs diff {sci(p['max_abs_diff'])}, top-1 {fixed(p['top1_agreement'], 4)}",
                ]
            )
        sections.append(Section("Lineage", [Table(["", "value"], lineage)]))
        t = data["throughput"]
        run = [["device", data["device"] or "–"], ["attempts", str(data["attempts"])], ["images/s (whole run)", fixed(t["images_per_s"], 2)],
               ["time to first step s", fixed(t["first_step_s"], 3)], ["seconds", fixed(t["seconds"], 1)],
               ["resumed from epoch", fixed(t["resumed_from_epoch"], 0)]]  # fmt: skip
        sections.append(Section("Run", [Table(["", "value"], run)]))
        sections.append(
            Section(
                "Hyperparameters",
                [Pre(json.dumps(data["hyperparameters"], sort_keys=True, indent=2), "json")],
            )
        )
        sections.append(Section("Method", [Para(data["method"])]))
    return Doc(title=f"Training report — job {data['job_id']}", facts=facts, sections=sections)
