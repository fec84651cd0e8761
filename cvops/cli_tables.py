"""The client CLI's output: ``rich`` tables on stdout (or the same data as JSON with ``--json``), ids
alone on stdout, human summaries on stderr.

Every read command has one shape: fetch, then :func:`emit` the data as JSON or as tables built by
:func:`table` (a title, columns, rows), :func:`listing` (records picked by columns) or :func:`fields`
(one record's chosen keys).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table

from cvops.cli_config import EXIT_OK

Getter = Callable[[Mapping[str, Any]], Any]
# a column: a key whose header is itself, or (header, key), or (header, a function of the record)
Column = str | tuple[str, str | Getter]


def _consoles() -> tuple[Console, Console]:
    wide = None if sys.stdout.isatty() else 200
    return Console(soft_wrap=True, width=wide), Console(stderr=True, soft_wrap=True)


OUT, ERR = _consoles()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def print_id(value: str) -> None:
    sys.stdout.write(value + "\n")
    sys.stdout.flush()


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    if v is None:
        return "-"
    return str(v)


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """The one table: a title, column headers, rows of values (``None`` shows as empty)."""
    out = Table(title=title, show_lines=False)
    for col in columns:
        out.add_column(col, overflow="fold")
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row))
    return out


def _getter(column: Column) -> tuple[str, Getter]:
    header, how = (column, column) if isinstance(column, str) else column
    if isinstance(how, str):
        key = how
        return header, lambda record: record.get(key)
    return header, how


def listing(title: str | None, columns: Sequence[Column], records: Iterable[Mapping[str, Any]]) -> Table:
    """A row a record, a column a :data:`Column`."""
    getters = [_getter(c) for c in columns]
    return table(title, [h for h, _ in getters], [[get(r) for _, get in getters] for r in records])


def fields(title: str, record: Mapping[str, Any], keys: Sequence[str]) -> Table:
    """One record as ``field | value`` rows: the ``keys`` it has a value for, dicts and lists as JSON."""
    rows = []
    for key in keys:
        if key in record and record[key] not in (None, "", [], {}):
            value = record[key]
            rows.append((key, json.dumps(value, default=str) if isinstance(value, dict | list) else value))
    return table(title, ("field", "value"), rows)


def emit(as_json: bool, data: Any, *shown: RenderableType) -> int:
    """``data`` as JSON on stdout (``--json``), else the tables (or lines) ``shown``."""
    if as_json:
        print_json(data)
    else:
        for item in shown:
            OUT.print(item)
    return EXIT_OK
