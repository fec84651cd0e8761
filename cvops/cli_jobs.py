"""The job commands of ``cvops``: train, benchmark, evolve (each prints the job id, ``--watch`` follows
it), jobs ls|show|watch|cancel, and report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import webbrowser
from pathlib import Path
from typing import Any

from rich.json import JSON

from cvops.cli_config import EXIT_OK, UsageError
from cvops.cli_tables import ERR, emit, fields, listing, print_id
from cvops.cli_watch import job_exit, progress_text, summary, watch_job
from cvops.client import MODEL_SETTLED, TERMINAL, AsyncClient

HP_FLAGS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "momentum",
    "schedule",
    "seed",
    "image_size",
    "patience",
    "label_smoothing",
)
CONSTRAINT_FLAGS = ("max_p50_ms", "max_p95_ms", "max_p99_ms", "min_throughput", "max_memory_mb")
JOB_COLUMNS = (
    "id",
    "kind",
    "status",
    ("progress", lambda j: progress_text(j.get("progress"))),
    ("model", lambda j: (j.get("spec") or {}).get("model_id")),
    "submitted_by",
    ("parent", "parent_job_id"),
)
JOB_FIELDS = (
    "id",
    "kind",
    "status",
    "submitted_by",
    "parent_job_id",
    "device",
    "attempt",
    "spec",
    "progress",
    "error",
    "cancelled_by",
    "submitted_ts",
    "started_ts",
    "ended_ts",
)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


async def _submit(args: argparse.Namespace, api: AsyncClient, spec: dict[str, Any]) -> int:
    job = await api.submit_job(spec)
    print_id(str(job["id"]))
    ERR.print(
        f"{spec['kind']} job {job['id']} {job.get('status')}"
        + ("" if args.watch else f"; follow it with: cvops jobs watch {job['id']}")
    )
    if not args.watch:
        return EXIT_OK
    final = await watch_job(api, str(job["id"]), ERR)
    for item in summary(final):
        ERR.print(item)
    await _await_trained_model(api, final)
    return job_exit(final)


async def _await_trained_model(api: AsyncClient, job: dict[str, Any]) -> None:
    """A train job ends once its model is registered (its GPU token goes back then); watching it, the
    command returns once that model converted to ONNX, so the id it printed can be deployed at once."""
    model_id = (job.get("result") or {}).get("model_id")
    if job.get("kind") != "train" or job.get("status") != "succeeded" or not model_id:
        return
    rec = await api.model(str(model_id))
    if rec.get("status") not in MODEL_SETTLED:
        with ERR.status(f"model {model_id}: converting to ONNX (parity check)"):
            rec = await api.wait_model(str(model_id))
    parity = rec.get("parity") or {}
    if rec.get("status") == "ready":
        ERR.print(f"model {model_id}: ready" + (", parity passed" if parity.get("passed") else ""))
    else:
        ERR.print(f"model {model_id}: [red]{rec.get('status')}[/]: {rec.get('error')}")


async def train(args: argparse.Namespace, api: AsyncClient) -> int:
    hp = _given(args, HP_FLAGS)
    for item in args.hp or []:
        key, _, value = item.partition("=")
        if not key or not _:
            raise UsageError(f"--hp takes KEY=VALUE, not {item!r}")
        try:
            hp[key] = json.loads(value)
        except ValueError:
            hp[key] = value
    spec = {"kind": "train", "model_id": args.model, "dataset_id": args.dataset, "hyperparameters": hp}
    return await _submit(args, api, spec)


async def benchmark(args: argparse.Namespace, api: AsyncClient) -> int:
    spec: dict[str, Any] = {
        "kind": "benchmark",
        "model_id": args.model,
        "batch_sizes": args.batch_sizes,
        "objective": args.objective,
        "constraints": _given(args, CONSTRAINT_FLAGS),
    }
    if args.engines:
        spec["engines"] = args.engines
    spec.update(_given(args, ("iterations", "warmup")))
    return await _submit(args, api, spec)


async def evolve(args: argparse.Namespace, api: AsyncClient) -> int:
    spec = {
        "kind": "evolve",
        "model_id": args.model,
        "dataset_id": args.dataset,
        "population": args.population,
        "generations": args.generations,
        "seed": args.seed,
    }
    return await _submit(args, api, spec)


async def jobs_ls(args: argparse.Namespace, api: AsyncClient) -> int:
    jobs = await api.jobs(args.kind, args.status)
    return emit(args.json, jobs, listing(None, JOB_COLUMNS, jobs))


async def jobs_show(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await api.job(args.id)
    other = job.get("result") and job.get("kind") not in ("benchmark", "train", "evolve")
    result = [JSON(json.dumps(job["result"], default=str))] if other else []
    return emit(args.json, job, fields(f"job {args.id}", job, JOB_FIELDS), *summary(job)[1:], *result)


async def jobs_watch(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await watch_job(api, args.id, ERR)
    emit(args.json, job, *summary(job))
    await _await_trained_model(api, job)
    return job_exit(job)


async def jobs_cancel(args: argparse.Namespace, api: AsyncClient) -> int:
    job = await api.cancel_job(args.id)
    if args.wait:
        job = await api.wait_job(args.id, poll_s=0.5)
    status = job.get("status")
    return emit(
        args.json, job, f"job {args.id}: {status}" + ("" if status in TERMINAL else " (cancel requested)")
    )


async def report(args: argparse.Namespace, api: AsyncClient) -> int:
    body = await api.report(args.job, args.view, args.format)
    target: Path | None = Path(args.output) if args.output else None
    if args.open and target is None:
        fd, name = tempfile.mkstemp(prefix=f"cvops-report-{args.job}-", suffix=f".{args.format}")
        os.close(fd)
        target = Path(name)
    if target is None:
        sys.stdout.buffer.write(body if body.endswith(b"\n") else body + b"\n")
        sys.stdout.flush()
        return EXIT_OK
    target.write_bytes(body)
    print_id(str(target))
    if args.open:
        webbrowser.open(target.resolve().as_uri())
    return EXIT_OK
