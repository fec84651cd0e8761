"""``cvops replay``: the event replay tool.

Works directly on a data dir's ``events.db`` with no server: the file is opened read-only
(``mode=ro``), so it also works while a running server holds the writer lock.

Subcommands: ``list``, ``tail [-f]``, ``stats``, ``rebuild [--until SEQ]``, ``verify``,
``export --format parquet|csv --out FILE``.  Secrets in payloads (password hashes) are shown as ``***``,
as the API shows them, unless ``--unredacted`` is given.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from cvops.errors import CvopsError, ValidationFailed
from cvops.events.log import iter_envelopes, open_readonly
from cvops.events.schema import Envelope

_JSON = msgspec.json.Encoder()
REDACTED_KEYS = frozenset({"password_hash"})
MASK = "***"


# ------------------------------------------------------------------------------------------ helpers


def parse_time(text: str) -> float:
    """ISO-8601 (naive means UTC) or seconds since the epoch → epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(f"not an ISO time or epoch seconds: {text!r}", {"value": text}) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def redact(obj: Any) -> Any:
    """``obj`` with the value of every :data:`REDACTED_KEYS` key, at any depth, replaced by ``***``."""
    if isinstance(obj, dict):
        return {k: (MASK if k in REDACTED_KEYS and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def payload_obj(env: Envelope, unredacted: bool = False) -> Any:
    """The event payload as plain data without its tag (schema-free, so unknown and old types show);
    password hashes are masked unless ``unredacted``."""
    try:
        obj = msgspec.msgpack.decode(env.data)
    except msgspec.DecodeError:
        return {"_undecodable": env.data.hex()}
    if isinstance(obj, dict):
        obj.pop("type", None)
    return obj if unredacted else redact(obj)


def payload_json(env: Envelope, unredacted: bool = False) -> str:
    """:func:`payload_obj` as JSON text."""
    return _JSON.encode(payload_obj(env, unredacted)).decode()


def envelope_dict(env: Envelope, unredacted: bool = False) -> dict[str, Any]:
    return {
        "seq": env.seq,
        "stream": env.stream,
        "version": env.version,
        "type": env.type,
        "ts": env.ts,
        "time": iso(env.ts),
        "user": env.user,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "data": payload_obj(env, unredacted),
    }


def stream_prefix(stream: str) -> str:
    """``model-abc`` → ``model``; a stream without a dash is its own prefix."""
    head, sep, _ = stream.partition("-")
    return head if sep else stream


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Aligned plain-text columns (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for r in cells:
        parts = []
        for i, c in enumerate(r):
            is_num = c.replace(".", "", 1).isdigit()
            parts.append(c.rjust(widths[i]) if is_num else c.ljust(widths[i]))
        out.append("  ".join(parts).rstrip())
    return "\n".join(out) + "\n"


class _Out:
    """stdout writer that turns a closed pipe (``| head``) into a quiet stop."""

    def __init__(self) -> None:
        self.broken = False

    def write(self, text: str) -> None:
        if self.broken:
            return
        try:
            sys.stdout.write(text)
        except BrokenPipeError:
            self.broken = True

    def flush(self) -> None:
        if self.broken:
            return
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            self.broken = True


# --------------------------------------------------------------------------------------- arguments


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``replay`` and its subcommands to a ``cvops`` argument parser."""

    def location(default: Any) -> argparse.ArgumentParser:
        # separate parsers (actions are shared with children): the replay level defaults to None,
        # the subcommand level is SUPPRESSed so it never overrides a value given before the subcommand
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument(
            "--data-dir", default=default, help="data dir holding events.db (default: CVOPS_DATA_DIR)"
        )
        parser.add_argument("--db", default=default, help="path of an events.db (overrides --data-dir)")
        return parser

    common = location(argparse.SUPPRESS)

    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--stream", help="stream name prefix, e.g. model- or job-abc")
    filters.add_argument("--type", action="append", dest="types", help="event type (repeatable)")
    filters.add_argument("--after", type=int, default=0, help="only seq > AFTER")
    filters.add_argument("--until-seq", type=int, help="only seq <= UNTIL_SEQ")
    filters.add_argument("--since", help="only events at/after this ISO time (naive = UTC) or epoch")
    filters.add_argument("--until", help="only events at/before this ISO time (naive = UTC) or epoch")

    secrets = argparse.ArgumentParser(add_help=False)
    secrets.add_argument(
        "--unredacted", action="store_true", help="show password hashes (masked as *** by default)"
    )

    p = subparsers.add_parser(
        "replay", help="inspect, verify, rebuild and export the event log", parents=[location(None)]
    )
    p.set_defaults(command="replay")
    sub = p.add_subparsers(dest="replay_cmd", metavar="{list,tail,stats,rebuild,verify,export}")
    sub.required = True

    ls = sub.add_parser("list", help="list events", parents=[common, filters, secrets])
    ls.add_argument("--limit", type=int, default=None, help="at most this many events")
    ls.add_argument("--json", action="store_true", help="JSON lines")

    tl = sub.add_parser("tail", help="the last events; -f follows the live log", parents=[common, secrets])
    tl.add_argument("-n", "--lines", type=int, default=10)
    tl.add_argument("-f", "--follow", action="store_true")
    tl.add_argument("--stream", help="stream name prefix")
    tl.add_argument("--type", action="append", dest="types")
    tl.add_argument("--interval", type=float, default=0.25, help="poll interval in seconds")
    tl.add_argument("--max-seconds", type=float, default=None, help="stop following after this long")
    tl.add_argument("--json", action="store_true")

    st = sub.add_parser("stats", help="counts per type and stream prefix, rate over time", parents=[common])
    st.add_argument("--buckets", type=int, default=10, help="time buckets for the rate")
    st.add_argument("--json", action="store_true")

    rb = sub.add_parser("rebuild", help="fold the log into state and print its hash", parents=[common])
    rb.add_argument("--until", type=int, default=None, dest="until_seq", help="stop at this seq")
    rb.add_argument("--tokens", type=int, default=None, help="GPU tokens (default: CVOPS_GPU_TOKENS)")
    rb.add_argument("--json", action="store_true")

    vf = sub.add_parser(
        "verify", help="check seq, versions, payloads and the GPU-token audit", parents=[common]
    )
    vf.add_argument("--tokens", type=int, default=None, help="GPU tokens (default: CVOPS_GPU_TOKENS)")

    ex = sub.add_parser(
        "export", help="export to Parquet or CSV with polars", parents=[common, filters, secrets]
    )
    ex.add_argument("--format", choices=["parquet", "csv"], default=None, help="default: from --out suffix")
    ex.add_argument("--out", required=True, help="output file")


# --------------------------------------------------------------------------------------------- run


def _db_path(args: argparse.Namespace) -> Path:
    if getattr(args, "db", None):
        return Path(args.db)
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        return Path(data_dir) / "events.db"
    from cvops.config import load_settings

    return load_settings().db_path


def _tokens(args: argparse.Namespace) -> int:
    tokens: int | None = getattr(args, "tokens", None)
    if tokens is None:
        from cvops.config import load_settings

        tokens = load_settings().gpu_tokens
    if tokens < 1:
        raise ValidationFailed(f"--tokens must be >= 1, got {tokens}")
    return tokens


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "after": getattr(args, "after", 0) or 0,
        "prefix": getattr(args, "stream", None),
        "types": getattr(args, "types", None),
        "until_seq": getattr(args, "until_seq", None),
        "since_ts": parse_time(args.since) if getattr(args, "since", None) else None,
        "until_ts": parse_time(args.until) if getattr(args, "until", None) else None,
    }


def _where_hint(args: argparse.Namespace) -> str:
    if getattr(args, "db", None):
        return "give --db the path of an events.db"
    return (
        "run this in the folder that holds .cvops, or point it at the server's data dir with "
        "--data-dir DIR or CVOPS_DATA_DIR=DIR (or at a file with --db FILE)"
    )


def run(args: argparse.Namespace) -> int:
    """Run one ``cvops replay`` subcommand; returns the exit status."""
    out = _Out()
    try:
        path = _db_path(args)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            sys.stderr.write(f"error: no event log at {path.absolute()} ({what}); {_where_hint(args)}\n")
            return 2
        conn = open_readonly(path)
    except CvopsError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        sys.stderr.write(f"error: cannot open the event log: {reason}; {_where_hint(args)}\n")
        return 2
    try:
        handler = _HANDLERS[args.replay_cmd]
        return handler(conn, args, out)
    except CvopsError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 2
    except sqlite3.DatabaseError as exc:
        sys.stderr.write(f"error: {_db_path(args)} is not a readable event log: {exc}\n")
        return 2
    finally:
        conn.close()
        out.flush()


def _line(env: Envelope, unredacted: bool = False) -> str:
    extra = f" user={env.user}" if env.user else ""
    if env.correlation_id:
        extra += f" corr={env.correlation_id}"
    return (
        f"{env.seq:>8}  {iso(env.ts)}  {env.stream}@{env.version}  {env.type}{extra}  "
        f"{payload_json(env, unredacted)}\n"
    )


def _emit(envs: Iterable[Envelope], as_json: bool, out: _Out, unredacted: bool = False) -> int:
    n = 0
    for env in envs:
        if as_json:
            out.write(_JSON.encode(envelope_dict(env, unredacted)).decode() + "\n")
        else:
            out.write(_line(env, unredacted))
        n += 1
        if out.broken:
            break
    return n


def cmd_list(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    if args.limit is not None and args.limit < 0:
        raise ValidationFailed("--limit must be >= 0")
    _emit(iter_envelopes(conn, limit=args.limit, **_filters(args)), args.json, out, args.unredacted)
    return 0


def cmd_tail(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    if args.lines < 0:
        raise ValidationFailed("--lines must be >= 0")
    filt: dict[str, Any] = {"prefix": args.stream, "types": args.types}
    head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    # the last N matching: walk back in pages from the head
    last: list[Envelope] = []
    if args.lines:
        from cvops.events.log import build_query, rows_to_envelopes

        sql, params = build_query(limit=None, until_seq=head, **filt)
        sql = sql.replace("ORDER BY seq", "ORDER BY seq DESC LIMIT ?")
        last = rows_to_envelopes(conn.execute(sql, [*params, args.lines]).fetchall())[::-1]
    _emit(last, args.json, out, args.unredacted)
    out.flush()
    if not args.follow:
        return 0
    cursor = head
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    try:
        while not out.broken and (deadline is None or time.monotonic() < deadline):
            # scan everything committed up to the current head, so filtered-out seqs are not re-read
            new_head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
            if new_head > cursor:
                _emit(
                    iter_envelopes(conn, after=cursor, until_seq=new_head, **filt),
                    args.json,
                    out,
                    args.unredacted,
                )
                out.flush()
                cursor = new_head
                continue
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    return 0


def compute_stats(envs: Iterable[Envelope], buckets: int = 10) -> dict[str, Any]:
    by_type: Counter[str] = Counter()
    by_prefix: Counter[str] = Counter()
    times: list[float] = []
    for env in envs:
        by_type[env.type] += 1
        by_prefix[stream_prefix(env.stream)] += 1
        times.append(env.ts)
    total = len(times)
    result: dict[str, Any] = {
        "events": total,
        "by_type": dict(sorted(by_type.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_stream_prefix": dict(sorted(by_prefix.items(), key=lambda kv: (-kv[1], kv[0]))),
        "first_ts": min(times) if times else None,
        "last_ts": max(times) if times else None,
        "rate": [],
    }
    if times:
        lo, hi = min(times), max(times)
        span = hi - lo
        n = max(1, buckets) if span > 0 else 1
        width = span / n if span > 0 else 1.0
        counts = [0] * n
        for t in times:
            counts[min(n - 1, int((t - lo) / width))] += 1
        result["rate"] = [
            {"start": lo + i * width, "seconds": width, "events": c, "events_per_s": c / width}
            for i, c in enumerate(counts)
        ]
        result["overall_events_per_s"] = total / span if span > 0 else None
    return result


def cmd_stats(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    st = compute_stats(iter_envelopes(conn), args.buckets)
    if args.json:
        out.write(_JSON.encode(st).decode() + "\n")
        return 0
    out.write(f"events: {st['events']}\n")
    if not st["events"]:
        return 0
    out.write(f"from {iso(st['first_ts'])} to {iso(st['last_ts'])}\n\n")
    out.write(table(["type", "events"], st["by_type"].items()) + "\n")
    out.write(table(["stream prefix", "events"], st["by_stream_prefix"].items()) + "\n")
    out.write(
        table(
            ["bucket start", "seconds", "events", "events/s"],
            [
                (iso(b["start"]), f"{b['seconds']:.3f}", b["events"], f"{b['events_per_s']:.1f}")
                for b in st["rate"]
            ],
        )
    )
    return 0


def cmd_rebuild(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    from cvops.events.projections import rebuild, state_hash, summary

    state = rebuild(iter_envelopes(conn, until_seq=args.until_seq), tokens=_tokens(args))
    digest = state_hash(state)
    info = summary(state)
    if args.json:
        out.write(_JSON.encode({"state_hash": digest, **info}).decode() + "\n")
        return 0
    out.write(f"state hash: {digest}\n")
    for key, value in info.items():
        out.write(f"{key}: {value}\n")
    return 0


def cmd_verify(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    from cvops.events.verify import verify

    tokens = _tokens(args)
    count = 0

    def counted() -> Iterator[Envelope]:
        nonlocal count
        for env in iter_envelopes(conn):
            count += 1
            yield env

    problems = verify(counted(), tokens=tokens)
    if problems:
        for p in problems:
            sys.stderr.write(f"problem: {p}\n")
        out.write(f"broken: {len(problems)} problem(s) in {count} events\n")
        return 1
    out.write(f"ok: {count} events\n")
    return 0


def cmd_export(conn: sqlite3.Connection, args: argparse.Namespace, out: _Out) -> int:
    import polars as pl

    dest = Path(args.out)
    fmt = args.format or {".parquet": "parquet", ".csv": "csv"}.get(dest.suffix.lower())
    if fmt is None:
        raise ValidationFailed("give --format parquet|csv (or an --out ending in .parquet or .csv)")
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("seq", "stream", "version", "type", "ts", "user", "correlation_id", "causation_id", "data")
    }
    for env in iter_envelopes(conn, **_filters(args)):
        cols["seq"].append(env.seq)
        cols["stream"].append(env.stream)
        cols["version"].append(env.version)
        cols["type"].append(env.type)
        cols["ts"].append(env.ts)
        cols["user"].append(env.user)
        cols["correlation_id"].append(env.correlation_id)
        cols["causation_id"].append(env.causation_id)
        cols["data"].append(payload_json(env, args.unredacted))
    schema = {
        "seq": pl.Int64,
        "stream": pl.Utf8,
        "version": pl.Int64,
        "type": pl.Utf8,
        "ts": pl.Float64,
        "user": pl.Utf8,
        "correlation_id": pl.Utf8,
        "causation_id": pl.Utf8,
        "data": pl.Utf8,
    }
    df = pl.DataFrame(cols, schema=schema)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.write_parquet(dest)
    else:
        df.write_csv(dest)
    out.write(f"exported {df.height} events to {dest} ({fmt})\n")
    return 0


_HANDLERS = {
    "list": cmd_list,
    "tail": cmd_tail,
    "stats": cmd_stats,
    "rebuild": cmd_rebuild,
    "verify": cmd_verify,
    "export": cmd_export,
}
