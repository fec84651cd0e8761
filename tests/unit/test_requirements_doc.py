"""docs/requirements.md and docs/tasks.md point at tests and scripts that exist: every `tests/...` or
`scripts/...` path they name is a file, and every `path::test_name` names a test defined in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REF = re.compile(r"`((?:tests|scripts)/[\w./-]+?)(?:::(\w+))?(?: [^`]*)?`")


def _refs(doc: str) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in REF.finditer((ROOT / "docs" / doc).read_text())]


@pytest.mark.parametrize("doc", ["requirements.md", "tasks.md"])
def test_every_named_test_and_script_exists(doc: str) -> None:
    refs = _refs(doc)
    assert refs, f"{doc} names no test or script"
    missing = [p for p, _ in refs if not (ROOT / p).is_file()]
    assert not missing, f"{doc} names files that do not exist: {missing}"
    for path, name in refs:
        if name is not None:
            assert re.search(rf"^\s*(async )?def {name}\(", (ROOT / path).read_text(), re.M), (
                f"{doc}: {path} has no test {name}"
            )


def test_every_acceptance_criterion_is_proven_by_something() -> None:
    text = (ROOT / "docs" / "requirements.md").read_text()
    rows = [ln for ln in text.splitlines() if re.match(r"\| A\d+[a-z]? \|", ln)]
    assert len(rows) >= 20
    for row in rows:
        assert REF.search(row.rsplit("|", 2)[-2]), f"no test or script proves: {row}"


def test_the_check_sees_a_missing_file() -> None:
    assert REF.search("`tests/unit/nope.py::test_x`").groups() == ("tests/unit/nope.py", "test_x")
    assert REF.search("`scripts/soak.py --minutes 5`").group(1) == "scripts/soak.py"
    assert not (ROOT / "tests/unit/nope.py").exists()
