"""The gateway and the pure cores never import torch (or, for the cores, ray).

Two checks per target:

* at import: the target is imported in a fresh interpreter (what another test imported earlier in this
  process cannot hide a heavy import) and ``sys.modules`` is read;
* on every code path: the target's imports are followed through ``cvops``, *including the imports
  inside functions* (a handler that imports ``cvops.ml.formats`` on its first request would block the
  event loop on torch's import), except inside ``cvops.actors`` functions, which run in actor processes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TORCH = ("torch", "torchvision", "ultralytics")
RAY = ("ray",)
# module -> heavy packages it must not pull in
BOUNDARIES: dict[str, tuple[str, ...]] = {
    "cvops.platform.app": TORCH,
    "cvops.ga": TORCH + RAY,
    "cvops.tuning.space": TORCH + RAY,
    "cvops.tuning.operators": TORCH + RAY,
    "cvops.tuning.nsga2": TORCH + RAY,
    "cvops.tuning.pruning": TORCH + RAY,
    "cvops.tuning.budget": TORCH + RAY,
    "cvops.tuning.evolution": TORCH + RAY,
    "cvops.jobs_api": TORCH + RAY,
    "cvops.selection": TORCH + RAY,
    "cvops.report": TORCH + RAY,
    "cvops.reports": TORCH + RAY,
    "cvops.bench_types": TORCH + RAY,
    "cvops.ml.hyperparameters": TORCH + RAY,
    "cvops.ml.spec": TORCH + RAY,
    "cvops.ml.sniff": TORCH + RAY,
    "cvops.ml.parity": TORCH + RAY,
}

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _loaded_after_import(module: str) -> set[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> set[str]:
    """Absolute names this module imports; function bodies are skipped in ``cvops.actors``."""
    in_actor = module.startswith("cvops.actors")
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if in_actor and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _reachable_heavy(target: str, heavy: tuple[str, ...]) -> dict[str, str]:
    """{heavy package: the cvops module that imports it} over every import path from ``target``."""
    seen: set[str] = set()
    todo = [target]
    hits: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _source(module)
        if path is None:
            continue
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run too
        for name in _imports(module, path):
            top = name.split(".")[0]
            if top in heavy:
                hits.setdefault(top, module)
            elif top == "cvops":
                todo.append(name)
    return hits


@pytest.mark.parametrize("module", sorted(BOUNDARIES))
def test_importing_stays_light(module: str) -> None:
    heavy = sorted(set(BOUNDARIES[module]) & _loaded_after_import(module))
    assert not heavy, f"importing {module} pulled in {heavy}"


@pytest.mark.parametrize("module", sorted(BOUNDARIES))
def test_no_code_path_imports_heavy_packages(module: str) -> None:
    hits = _reachable_heavy(module, BOUNDARIES[module])
    assert not hits, f"{module} reaches {hits} (heavy package: the cvops module importing it)"


def test_the_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ray\n"
        "def handler():\n    from cvops.ml import formats\n    import torch\n"
    )
    assert _imports("cvops.platform.m", src) >= {"cvops.ml", "cvops.ml.formats", "torch"}
    assert "ray" not in _imports("cvops.platform.m", src)
    assert "torch" not in _imports("cvops.actors.m", src)  # actor function bodies run in actors
