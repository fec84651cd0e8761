"""The model card: where a model came from (source, format, datasets and hyperparameters), how well its
ONNX conversion matches the source (parity), what its benchmarks measured and which engine they chose,
and where it is deployed.

Fed by the model's own events (ModelUploaded, ModelConverted, ModelRejected, ModelDeleted), its parent's
ModelUploaded, its dataset's events, the BenchmarkMeasured / EngineSelected / JobSucceeded events that
name it, and the deployments and packages made of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec

from cvops.errors import NotFound
from cvops.events.schema import (
    DeploymentCreated,
    DeploymentDeleted,
    EngineSelected,
    Event,
    JobSubmitted,
    JobSucceeded,
    ModelConverted,
    ModelDeleted,
    ModelRejected,
    ModelUploaded,
    PackageBuilt,
)
from cvops.reports import benchmark
from cvops.reports.common import dataset_facts, dataset_view, hyperparameters, model_name
from cvops.reports.doc import Block, Bullets, Doc, Para, Pre, Section, Table
from cvops.reports.fmt import fixed, fmt_num, jsonable, rounded, sci


def report_data(model_id: str, events: Sequence[Event], view: str) -> dict[str, Any]:
    up = next((ev for ev in events if isinstance(ev, ModelUploaded) and ev.model_id == model_id), None)
    if up is None:
        raise NotFound(f"no model {model_id!r}", {"model_id": model_id})
    status, reason = "converting", ""
    conv: ModelConverted | None = None
    deployments: dict[str, dict[str, Any]] = {}
    packages: list[dict[str, Any]] = []
    train_job = ""
    kinds: dict[str, str] = {}
    benchmarks: dict[str, dict[str, Any]] = {}
    for ev in events:
        if isinstance(ev, ModelConverted) and ev.model_id == model_id:
            status, conv = "ready", ev
        elif isinstance(ev, ModelRejected) and ev.model_id == model_id:
            status, reason = "rejected", ev.reason
        elif isinstance(ev, ModelDeleted) and ev.model_id == model_id:
            status = "deleted"
        elif isinstance(ev, DeploymentCreated) and ev.model_id == model_id:
            deployments[ev.deployment_id] = {
                "id": ev.deployment_id, "engine": ev.engine, "workers": ev.workers, "max_batch": ev.max_batch,
                "max_wait_ms": rounded(ev.max_wait_ms, 3), "created_by": ev.created_by, "active": True,
            }  # fmt: skip
        elif isinstance(ev, DeploymentDeleted) and ev.deployment_id in deployments:
            deployments[ev.deployment_id]["active"] = False
        elif isinstance(ev, PackageBuilt) and ev.model_id == model_id:
            packages.append(
                {"id": ev.package_id, "engine": ev.engine, "sha256": ev.sha256, "bytes": ev.bytes}
            )
        elif isinstance(ev, JobSubmitted):
            kinds[ev.job_id] = ev.kind
        elif (
            isinstance(ev, JobSucceeded)
            and ev.result.get("model_id") == model_id
            and kinds.get(ev.job_id) == "train"
        ):
            train_job = (
                ev.job_id
            )  # the train job that registered this model (a benchmark's result names it too)
        elif isinstance(ev, EngineSelected) and ev.model_id == model_id:
            inputs = benchmark.from_events(
                ev.job_id, [e for e in events if getattr(e, "job_id", None) == ev.job_id]
            )
            if inputs.measured is not None and inputs.selection is not None:
                benchmarks[ev.job_id] = benchmark.report_data(
                    inputs.job, inputs.measured, inputs.selection, "simple"
                )
    source = {
        "name": up.name, "task": up.task, "format": up.source_format, "sha256": up.source_sha256,
        "bytes": up.source_bytes, "arch": up.arch or "", "preset": up.preset or "", "pretrained": up.pretrained,
        "num_classes": up.num_classes if up.num_classes is not None else (len(up.labels) or None),
        "image_size": up.image_size, "input_shape": up.input_shape,
    }  # fmt: skip
    fmt: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    if conv is not None:
        fmt = {
            "onnx_sha256": conv.onnx_sha256, "onnx_bytes": conv.onnx_bytes, "opset": conv.opset,
            "parameters": conv.parameter_count, "torch_format": conv.torch_format,
            "inputs": [msgspec.to_builtins(t) for t in conv.inputs], "outputs": [msgspec.to_builtins(t) for t in conv.outputs],
            "preprocessing": jsonable(msgspec.to_builtins(conv.preprocessing)),
            "labels": list(conv.labels or up.labels), "pretrained_file": conv.pretrained_file,
        }  # fmt: skip
        p = conv.parity
        parity = {"passed": p.passed, "max_abs_diff": rounded(p.max_abs_diff, 12), "top1_agreement": rounded(p.top1_agreement, 4),
                  "tolerance": rounded(p.tolerance, 12), "samples": p.samples}  # fmt: skip
    bench_rows = [
        {
            "job_id": job_id, "objective": b["objective"], "constraints": b["constraints"],
            "selected": b["selected"], "summary": b["summary"], "latency_distribution": b["latency_distribution"],
        }
        for job_id, b in benchmarks.items()
    ]  # fmt: skip
    data: dict[str, Any] = {
        "report": "model_card",
        "view": view,
        "model_id": model_id,
        "status": status,
        "rejected_reason": reason,
        "source": source,
        "format": fmt,
        "parity": parity,
        "lineage": {
            "parent_model": {
                "id": up.parent_model_id or "",
                "name": model_name(up.parent_model_id or "", events),
            },
            "dataset": dataset_view(dataset_facts(up.dataset_id, events)) if up.dataset_id else None,
            "hyperparameters": hyperparameters(dict(up.hyperparameters)) if up.hyperparameters else {},
            "train_job": train_job,
        },
        "benchmarks": bench_rows,
        "selected_engine": next((b["selected"] for b in reversed(bench_rows) if b["selected"]), None),
        "deployments": [deployments[k] for k in deployments],
        "packages": packages,
    }
    data["summary"] = _summary(data)
    if view == "simple":
        for b in data["benchmarks"][:-1]:
            b.pop("latency_distribution")
        data.pop("format")
    return data


def _summary(data: dict[str, Any]) -> list[str]:
    s = data["source"]
    out = []
    kind = f"{s['task']} model" + (f" with {s['num_classes']} classes" if s["num_classes"] else "")
    origin = (
        f"preset {s['preset']}" + (" with published weights" if s["pretrained"] else "")
        if s["preset"]
        else f"a {s['format']} upload"
    )
    lin = data["lineage"]
    if lin["parent_model"]["id"]:
        origin = f"fine-tuned from model {lin['parent_model']['id']}" + (
            f" on dataset {lin['dataset']['id']}" if lin["dataset"] else ""
        )
    out.append(f"{s['name']} is a {kind}, {origin}.")
    p = data["parity"]
    if data["status"] == "rejected":
        out.append(f"It was rejected: {data['rejected_reason']}.")
    elif p is not None:
        diff = "–" if p["max_abs_diff"] is None else f"{p['max_abs_diff']:.2e}"
        out.append(
            f"Its ONNX form {'matches' if p['passed'] else 'does NOT match'} the source (max abs diff {diff}, "
            f"top-1 agreement {fixed(p['top1_agreement'], 2)} on {p['samples']} samples)."
        )
    elif data["status"] == "converting":
        out.append("It is still being converted to ONNX.")
    sel = data["selected_engine"]
    if sel:
        out.append(
            f"Serve it with {sel['engine']}: p95 {fmt_num(sel['p95_ms'])} ms at batch {sel['batch_size']} "
            f"({fmt_num(sel['throughput_ips'])} images/s), chosen by benchmark job {data['benchmarks'][-1]['job_id']}."
        )
    elif data["status"] == "ready":
        out.append("No benchmark has selected an engine for it yet: run a benchmark job to choose one.")
    active = [d for d in data["deployments"] if d["active"]]
    if active:
        out.append(
            "Deployed as "
            + ", ".join(f"{d['id']} ({d['engine']}, {d['workers']} workers)" for d in active)
            + "."
        )
    if data["status"] == "deleted":
        out.append("The model has been deleted.")
    return out


def document(data: dict[str, Any]) -> Doc:
    s = data["source"]
    facts = [("Model", data["model_id"]), ("Status", data["status"]), ("Task", s["task"])]
    what: list[Block] = [Para(t, highlight=i == 0) for i, t in enumerate(data["summary"])]
    sections = [Section("Summary", what)]
    last = data["benchmarks"][-1] if data["benchmarks"] else None
    if last:
        sections.append(Section("Latency of the engines (last benchmark)", [benchmark.latency_chart(last)]))
    if data["view"] == "technical":
        src = [[k, "–" if v in (None, "") else json.dumps(v) if isinstance(v, list) else fixed(v, 0) if isinstance(v, bool) else str(v)]
               for k, v in s.items()]  # fmt: skip
        sections.append(Section("Source", [Table(["", "value"], src)]))
        f = data["format"]
        if f:
            rows = [["ONNX sha256", f["onnx_sha256"]], ["ONNX bytes", str(f["onnx_bytes"])], ["opset", str(f["opset"])],
                    ["parameters", str(f["parameters"])], ["torch form", f["torch_format"] or "–"],
                    ["inputs", "; ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in f["inputs"])],
                    ["outputs", "; ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in f["outputs"])],
                    ["preprocessing", json.dumps(f["preprocessing"], sort_keys=True)],
                    ["labels", ", ".join(f["labels"])]]  # fmt: skip
            sections.append(Section("Format", [Table(["", "value"], rows)]))
        p = data["parity"]
        if p:
            sections.append(
                Section(
                    "Conversion parity",
                    [Table(["passed", "max abs diff", "top-1 agreement", "tolerance", "samples"],
                           [[fixed(p["passed"], 0), sci(p["max_abs_diff"]), fixed(p["top1_agreement"], 4), sci(p["tolerance"]), str(p["samples"])]])],
                )
            )  # fmt: skip
        lin = data["lineage"]
        ds = lin["dataset"]
        rows = [["parent model", f"{lin['parent_model']['id']} {lin['parent_model']['name']}".strip() or "–"],
                ["train job", lin["train_job"] or "–"],
                ["dataset", f"{ds['id']} {ds['name']} ({ds['format']})" if ds else "–"],
                ["classes", ", ".join(ds["classes"]) if ds else "–"],
                ["images per split", ", ".join(f"{k} {v}" for k, v in ds["images"].items()) if ds else "–"]]  # fmt: skip
        blocks: list[Block] = [Table(["", "value"], rows)]
        if lin["hyperparameters"]:
            blocks.append(Pre(json.dumps(lin["hyperparameters"], sort_keys=True, indent=2), "json"))
        sections.append(Section("Lineage", blocks))
        brows = [
            [b["job_id"], b["objective"], ", ".join(f"{k} {fmt_num(v)}" for k, v in sorted(b["constraints"].items())) or "none",
             (b["selected"] or {}).get("engine", "none"), fixed((b["selected"] or {}).get("batch_size"), 0),
             fixed((b["selected"] or {}).get("p50_ms"), 3), fixed((b["selected"] or {}).get("p95_ms"), 3),
             fixed((b["selected"] or {}).get("throughput_ips"), 1)]
            for b in data["benchmarks"]
        ]  # fmt: skip
        sections.append(
            Section("Benchmarks", [Table(["job", "objective", "constraints", "selected", "batch", "p50 ms", "p95 ms", "images/s"], brows, empty="No benchmark yet.")])
        )  # fmt: skip
        drows = [[d["id"], d["engine"], str(d["workers"]), str(d["max_batch"]), fixed(d["max_wait_ms"], 1), d["created_by"], "active" if d["active"] else "deleted"]
                 for d in data["deployments"]]  # fmt: skip
        sections.append(
            Section(
                "Deployments",
                [
                    Table(
                        ["id", "engine", "workers", "max batch", "max wait ms", "by", "state"],
                        drows,
                        empty="Never deployed.",
                    )
                ],
            )
        )
        if data["packages"]:
            sections.append(
                Section(
                    "Packages",
                    [
                        Bullets(
                            [
                                f"{p['id']}: {p['engine']}, {p['bytes']} bytes, sha256 {p['sha256']}"
                                for p in data["packages"]
                            ]
                        )
                    ],
                )
            )
    return Doc(title=f"Model card — {s['name']} ({data['model_id']})", facts=facts, sections=sections)
