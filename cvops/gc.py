"""Blob garbage: which checkpoints a training run keeps, and ``cvops gc`` over a data dir.

Checkpoints (CVOPS_KEEP_CHECKPOINTS): a run keeps its newest checkpoint and its best one by default;
:func:`checkpoints_to_discard` says which older ones go once a newer one is recorded.  The job appends
``CheckpointsDiscarded`` first and deletes the blobs after, so the log never names a missing blob (a
crash in between leaves an unnamed blob for ``cvops gc``).

``cvops gc [--dry-run]``: rebuilds from the event log (read-only, like ``cvops replay``) which blobs a
record still names — models' sources and ONNX/torch forms (models neither failed nor deleted, and every
model a live deployment serves), datasets that did not fail, the checkpoints runs still keep, packages,
and, conservatively, any sha256 in an event of another type — and deletes every other blob under
``blobs/sha256``.  Blobs younger than ``--min-age`` (default one hour) are left alone: a blob is written
before the event that names it, so a running server may be about to name it.

Pure and blocking: imports neither ray nor aiohttp nor torch.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from cvops.config import KeepPolicy as KeepPolicy  # the policy is a setting; gc applies it
from cvops.config import load_settings
from cvops.config import parse_keep as parse_keep
from cvops.errors import CvopsError, ValidationFailed
from cvops.events.schema import CheckpointSaved, CheckpointsDiscarded, Envelope

_SHA = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_MIN_AGE_S = 3600.0


# ------------------------------------------------------------------------------------- keep policy


class KeptCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    epoch: int
    sha256: str
    best_epoch: int | None = None  # the run's best epoch when this checkpoint was taken


def checkpoints_to_discard(kept: Sequence[KeptCheckpoint], policy: KeepPolicy) -> list[KeptCheckpoint]:
    """The checkpoints of ``kept`` (oldest first, the newest last) that ``policy`` no longer keeps."""
    if policy.last is None or not kept:
        return []
    keep = set(range(max(0, len(kept) - policy.last), len(kept)))
    best = kept[-1].best_epoch
    if policy.best and best is not None:
        of_best = [i for i, c in enumerate(kept) if c.epoch == best]
        if of_best:
            keep.add(of_best[-1])
    kept_shas = {kept[i].sha256 for i in keep}
    return [c for i, c in enumerate(kept) if i not in keep and c.sha256 not in kept_shas]


KEPT_TYPES = ("CheckpointSaved", "CheckpointsDiscarded")


def apply_kept(kept: list[KeptCheckpoint], env: Envelope) -> list[KeptCheckpoint]:
    """Fold one event of a job's stream into the checkpoints it still keeps (oldest first)."""
    ev = env.event() if env.type in KEPT_TYPES else None
    if isinstance(ev, CheckpointSaved):
        best = ev.metrics.get("best_epoch")
        kept.append(
            KeptCheckpoint(epoch=ev.epoch, sha256=ev.sha256, best_epoch=None if best is None else int(best))
        )
    elif isinstance(ev, CheckpointsDiscarded):
        gone = set(ev.sha256s)
        kept = [c for c in kept if c.sha256 not in gone]
    return kept


# ------------------------------------------------------------------------------------ referenced set

# event types whose blobs the folds below account for; a sha256 anywhere in any other event counts
_FOLDED = frozenset(
    {
        "ModelUploaded",
        "ModelConversionStarted",
        "ModelConverted",
        "ModelRejected",
        "ModelDeleted",
        "DatasetUploaded",
        "DatasetValidated",
        "DatasetRejected",
        "CheckpointSaved",
        "CheckpointsDiscarded",
        "PackageBuilt",
    }
)


def _shas_in(obj: Any, out: set[str]) -> None:
    if isinstance(obj, str):
        if _SHA.match(obj):
            out.add(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _shas_in(v, out)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _shas_in(v, out)


def referenced_blobs(envelopes: Iterable[Envelope]) -> dict[str, str]:
    """sha256 → what still names it (e.g. ``model 1a2b… onnx``), rebuilt from the whole log."""
    from cvops.events import projections as proj

    envs = list(envelopes)
    state = proj.rebuild(envs)
    named: dict[str, str] = {}

    def name(sha: Any, what: str) -> None:
        if isinstance(sha, str) and _SHA.match(sha):
            named.setdefault(sha, what)

    served = {d.model_id for d in state.deployments.deployments.values() if d.status == "active"}
    for m in state.models.models.values():
        live = m.status not in ("failed", "deleted")
        if m.onnx is not None and (live or m.id in served):
            name(m.onnx.sha256, f"model {m.id} onnx")
            name(m.onnx.torch_sha256, f"model {m.id} torch form")
        if live:
            name(m.source_sha256, f"model {m.id} source")
    for d in state.datasets.datasets.values():
        if d.status != "failed":
            name(d.sha256, f"dataset {d.id}")
    for p in state.packages.packages.values():
        name(p.sha256, f"package {p.id}")
    jobs = getattr(state.jobs, "jobs", None) or {}
    for job_id, rec in jobs.items():
        for c in rec.checkpoints:
            name(c.get("sha256"), f"job {job_id} checkpoint epoch {c.get('epoch')}")
    for env in envs:
        if env.type in _FOLDED:
            continue
        found: set[str] = set()
        _shas_in(msgspec.to_builtins(env.event()), found)
        for sha in found:
            name(sha, f"event {env.seq} ({env.type})")
    return named


# ----------------------------------------------------------------------------------------- collect


class Orphan(msgspec.Struct, frozen=True, kw_only=True):
    sha256: str
    bytes: int
    age_s: float


class GcReport(msgspec.Struct, kw_only=True):
    blobs: int = 0  # blob files found
    referenced: int = 0
    orphans: list[Orphan] = msgspec.field(default_factory=list)  # unnamed and old enough
    young: int = 0  # unnamed but younger than min_age_s: left alone
    deleted: int = 0
    freed_bytes: int = 0


def blob_files(blob_root: Path) -> Iterable[tuple[str, Path]]:
    root = blob_root / "sha256"
    if not root.is_dir():
        return
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for f in sorted(sub.iterdir()):
            sha = sub.name + f.name
            if f.is_file() and _SHA.match(sha):
                yield sha, f


def collect(
    data_dir: Path, dry_run: bool = True, min_age_s: float = DEFAULT_MIN_AGE_S, now: float | None = None
) -> GcReport:
    """Find (and unless ``dry_run`` delete) the blobs under ``data_dir`` that no record names."""
    from cvops.events.log import iter_envelopes, open_readonly

    db = data_dir / "events.db"
    if not db.is_file():
        raise ValidationFailed(f"no event log at {db}", {"path": str(db)})
    conn = open_readonly(db)
    try:
        named = referenced_blobs(iter_envelopes(conn))
    finally:
        conn.close()
    now = time.time() if now is None else now
    report = GcReport()
    for sha, path in blob_files(data_dir / "blobs"):
        report.blobs += 1
        if sha in named:
            report.referenced += 1
            continue
        st = path.stat()
        age = now - st.st_mtime
        if age < min_age_s:
            report.young += 1
            continue
        report.orphans.append(Orphan(sha256=sha, bytes=st.st_size, age_s=round(age, 1)))
        if not dry_run:
            path.unlink(missing_ok=True)
            report.deleted += 1
            report.freed_bytes += st.st_size
    return report


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``gc`` to a ``cvops`` argument parser."""
    ap = subparsers.add_parser(
        "gc",
        help="delete blobs that no record in the event log names (offline, over the data dir)",
        description="delete blobs that no record in the event log names",
    )
    ap.add_argument("--data-dir", default=None, help="the data dir (default: CVOPS_DATA_DIR or ./.cvops)")
    ap.add_argument("--dry-run", action="store_true", help="list what would be deleted, with sizes")
    ap.add_argument(
        "--min-age",
        type=float,
        default=DEFAULT_MIN_AGE_S,
        metavar="SECONDS",
        help="leave younger unnamed blobs alone (a running server may be about to name them); default 3600",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``cvops gc``; returns the exit status."""
    if args.data_dir is None:
        data_dir = load_settings().data_path
    else:
        data_dir = Path(args.data_dir)
    try:
        report = collect(data_dir, dry_run=args.dry_run, min_age_s=args.min_age)
    except CvopsError as exc:
        print(f"cvops gc: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(msgspec.json.encode(report).decode())
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for o in report.orphans:
        print(f"{o.sha256}\t{o.bytes}\t{_human(o.bytes)}")
    total = sum(o.bytes for o in report.orphans)
    print(
        f"{report.blobs} blobs, {report.referenced} named by the log; {verb} {len(report.orphans)} "
        f"({_human(total)}); {report.young} unnamed but younger than {args.min_age:g} s left alone",
        file=sys.stderr,
    )
    return 0
