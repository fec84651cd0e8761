"""Following a job from the terminal: live ``rich`` progress bars fed by the events websocket (the job
record polled alongside), and the summary printed when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cvops import errors as E
from cvops.cli_config import EXIT_FAILED, EXIT_OK
from cvops.cli_tables import fmt, table
from cvops.client import TERMINAL, AsyncClient


class _Bars:
    """rich progress bars fed by job progress dicts: an epoch and a batch bar for train, one bar
    per engine for benchmark, a trial bar for evolve."""

    def __init__(self, progress: Progress, job: Mapping[str, Any]) -> None:
        self.progress = progress
        self.job = job
        self.tasks: dict[str, TaskID] = {}
        self.status = progress.add_task(f"job {job['id']}: {job.get('status')}", total=None)

    def _task(self, key: str, description: str, total: float | None) -> TaskID:
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(description, total=total)
        return self.tasks[key]

    def set_status(self, status: str) -> None:
        self.progress.update(self.status, description=f"job {self.job['id']}: {status}")

    def update(self, p: Mapping[str, Any]) -> None:
        phase = str(p.get("phase") or "")
        kind = self.job.get("kind")
        spec = self.job.get("spec") or {}
        if kind == "train" or phase in ("epoch", "batch"):
            epochs = p.get("epochs") or (spec.get("hyperparameters") or {}).get("epochs") or 10
            bar = self._task("epochs", "epochs", float(epochs))
            if phase == "epoch":
                acc = p.get("val_accuracy")
                self.progress.update(
                    bar,
                    completed=float(p.get("epoch") or 0),
                    description=f"epoch {p.get('epoch')}/{epochs} loss {fmt(p.get('loss'))} "
                    f"val_acc {fmt(acc)}",
                )
            elif phase == "batch":
                batches = float(p.get("batches") or 1)
                bb = self._task("batches", "batches", batches)
                self.progress.update(
                    bb,
                    total=batches,
                    completed=float(p.get("batch") or 0),
                    description=f"epoch {p.get('epoch')} batch loss {fmt(p.get('loss'))}",
                )
        elif kind == "benchmark" or phase == "benchmark":
            engine = p.get("engine")
            if engine:
                total = float(p.get("iterations_total") or 1)
                bar = self._task(f"engine:{engine}", str(engine), total)
                self.progress.update(
                    bar,
                    total=total,
                    completed=float(p.get("iterations_done") or 0),
                    description=f"{engine} batch {p.get('batch_size')} ({p.get('phase')})",
                )
        elif kind == "evolve":
            population = int(spec.get("population") or 8)
            generations = int(spec.get("generations") or 3)
            bar = self._task("trials", "trials", float(population * generations))
            if phase == "trial":
                done = int(p.get("generation") or 0) * population + population - int(p.get("remaining") or 0)
                self.progress.update(
                    bar,
                    completed=float(done),
                    description=f"generation {p.get('generation')} trial fitness {fmt(p.get('fitness'))}",
                )
            elif phase == "generation":
                self.progress.update(
                    bar,
                    completed=float((int(p.get("generation") or 0) + 1) * population),
                    description=f"generation {p.get('generation')} best {fmt(p.get('best_fitness'))}",
                )

    def finish(self) -> None:
        for key, task in self.tasks.items():
            if key == "epochs" or key.startswith("engine:") or key == "trials":
                t = self.progress.tasks[task]
                if t.total is not None and self.job.get("status") == "succeeded":
                    self.progress.update(task, completed=t.total)
                if key.startswith("engine:"):
                    self.progress.update(task, description=f"{key.split(':', 1)[1]} {self.job.get('status')}")


async def watch_job(api: AsyncClient, job_id: str, console: Console, poll_s: float = 1.0) -> dict[str, Any]:
    """Follow a job to its end with live bars: progress events from ``WS /events/ws`` filtered to the
    job's stream, the status from ``GET /jobs/{id}`` (also the only source where the socket is
    refused).  Returns the final job record."""
    job = await api.job(job_id)
    if job.get("status") in TERMINAL:
        return job
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bars = _Bars(progress, job)

    async def follow_events() -> None:
        try:
            async for event in api.subscribe(0, stream=f"job-{job_id}"):
                if event.get("type") == "JobProgressed":
                    bars.update((event.get("data") or {}).get("progress") or {})
        except (E.Unauthorized, E.Forbidden, E.NotFound, E.TooManyRequests) as exc:
            console.print(f"[dim]events websocket refused ({exc.message}); polling the job instead[/]")

    with progress:
        follower = asyncio.create_task(follow_events())
        try:
            while True:
                job = await api.job(job_id)
                bars.job = job
                bars.set_status(str(job.get("status")))
                if job.get("progress") and follower.done():
                    bars.update(job["progress"])
                if job.get("status") in TERMINAL:
                    break
                await asyncio.sleep(poll_s)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
        if job.get("progress"):
            bars.update(job["progress"])
        bars.finish()
    return job


def progress_text(p: Mapping[str, Any] | None) -> str:
    if not p:
        return ""
    phase = p.get("phase")
    if phase in ("epoch", "batch"):
        return f"{phase} {p.get('epoch')}" + (f"/{p['epochs']}" if p.get("epochs") else "")
    if phase == "benchmark":
        return f"{p.get('engine')} b{p.get('batch_size')}"
    if phase in ("trial", "generation"):
        return f"gen {p.get('generation')}"
    return str(phase or "")


def summary(job: Mapping[str, Any]) -> list[Table | str]:
    """The end of a watch: status, then what the job produced (or why it failed)."""
    out: list[Table | str] = []
    status = job.get("status")
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(str(status), "white")
    out.append(f"job {job.get('id')} ({job.get('kind')}): [{colour}]{status}[/]")
    result = job.get("result") or {}
    if status == "failed":
        out.append(f"error: {job.get('error')}")
    if status == "cancelled" and job.get("cancelled_by"):
        out.append(f"cancelled by {job.get('cancelled_by')}")
    if job.get("kind") == "benchmark" and result:
        out.append(f"selected: {result.get('selected')} (batch {result.get('selected_batch')})")
        rows = []
        for engine, lat in sorted((result.get("engines") or {}).items()):
            if isinstance(lat, dict) and "p50_ms" in lat:
                rows.append((engine, "yes", fmt(lat.get("p50_ms")), fmt(lat.get("p95_ms")), ""))
            else:
                lat = lat if isinstance(lat, dict) else {}
                rows.append(
                    (engine, "no" if not lat.get("available", True) else "", "", "", lat.get("reason", ""))
                )
        out.append(table("engines", ("engine", "available", "p50 ms", "p95 ms", "note"), rows))
        rejected = result.get("rejected") or {}
        if rejected:
            out.append(table("rejected", ("engine", "constraint"), sorted(rejected.items())))
    elif job.get("kind") == "train" and result:
        keys = ("model_id", "best_val_accuracy", "best_epoch", "epochs_done", "final_loss", "seconds")
        metrics = {**(result.get("metrics") or {}), **result}
        out.append(
            table("result", ("field", "value"), [(k, fmt(metrics.get(k))) for k in keys if k in metrics])
        )
    elif job.get("kind") == "evolve" and result:
        ga_rows = [
            (k, fmt(result.get(k))) for k in ("best_fitness", "best_trial_job_id", "trials", "seconds")
        ]
        ga_rows.append(("best_hyperparameters", json.dumps(result.get("best_hyperparameters"))))
        out.append(table("result", ("field", "value"), ga_rows))
    return out


def job_exit(job: Mapping[str, Any]) -> int:
    return EXIT_OK if job.get("status") == "succeeded" else EXIT_FAILED
