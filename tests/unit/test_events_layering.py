"""Domain and persistence are separate in cvops/events: the domain modules import no I/O machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import cvops.events

EVENTS = Path(cvops.events.__file__).parent
DOMAIN = [
    "schema",
    "projections",
    "scheduling",
    "store",
    "projection",
    "verify",
    "memory",
    "job_facts",
    "commands",
]
PERSISTENCE = ["log", "sqlite_reader"]
FORBIDDEN = {"sqlite3", "aiosqlite", "threading", "fcntl", "ray"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            roots.add("<dynamic>")
    return roots


def test_domain_modules_import_no_persistence() -> None:
    for name in DOMAIN:
        bad = imported_roots(EVENTS / f"{name}.py") & (FORBIDDEN | {"<dynamic>"})
        assert not bad, f"cvops/events/{name}.py imports {sorted(bad)}"


def test_every_events_module_is_classified() -> None:
    modules = {p.stem for p in EVENTS.glob("*.py")} - {"__init__"}
    assert modules == set(DOMAIN) | set(PERSISTENCE)


def test_the_check_sees_an_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os\nif True:\n    import sqlite3\nfrom threading import Lock\n")
    assert {"sqlite3", "threading"} <= imported_roots(f)
