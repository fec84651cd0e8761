"""No import cycle among the modules of ``cvops`` (and the gateway's on their own): every import counts
(module level, inside functions and under ``TYPE_CHECKING``), read from the source with ``ast``, and the
strongly connected components of the import graph (Tarjan) must all be single modules that do not
import themselves."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import cvops

ROOT = Path(cvops.__file__).resolve().parent


def module_names(package: str) -> dict[str, Path]:
    """Every module of ``package`` (dotted name -> file), subpackages included."""
    base = ROOT.parent
    folder = base.joinpath(*package.split("."))
    out: dict[str, Path] = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The modules among ``known`` that ``name`` imports anywhere in its source."""
    known = set(known)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                mod = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                mod = node.module or ""
            # `from a import b`: the submodule a.b if there is one, else the module a
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a.b.c: count the deepest module of the package that it names
            while target and target not in known:
                target = target.rpartition(".")[0]
            found.add(target)
    found.discard("")
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(package: str) -> list[list[str]]:
    modules = module_names(package)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    return [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]


def test_tarjan_finds_a_cycle_and_passes_a_tree() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}
    found = sorted(strongly_connected(graph))
    assert ["a", "b", "c"] in found and ["d"] in found and ["e"] in found
    assert ["f"] in found  # a self-import is a component of one that imports itself


def test_imports_are_read_everywhere_in_the_source(tmp_path: Path) -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg.b import X\n"
        "def f():\n    from pkg import c\n    import pkg.d\n"
    )
    path = tmp_path / "a.py"
    path.write_text(src)
    assert imports_of("pkg.a", path, {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"}) == {
        "pkg.b",
        "pkg.c",
        "pkg.d",
    }


def test_the_gateway_has_no_import_cycle() -> None:
    assert len(module_names("cvops.platform")) > 20
    assert cycles("cvops.platform") == []


def test_the_graph_sees_lazy_imports() -> None:
    modules = module_names("cvops")
    seen = imports_of("cvops.actors.trainer", modules["cvops.actors.trainer"], modules)
    assert "cvops.ml.torch_source" in seen  # imported inside the job body, still an edge


def test_no_import_cycle_in_cvops() -> None:
    assert cycles("cvops") == []


def _external_imports(path: Path) -> set[str]:
    """Top-level names of every package a module imports anywhere in its source."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.partition(".")[0])
    return out


CORES = ["cvops.ga", "cvops.bench", "cvops.bench_types", "cvops.selection", "cvops.report", "cvops.jobs_api"]
CORES += [
    f"cvops.reports.{m}"
    for m in ("benchmark", "common", "doc", "evolution", "fmt", "model_card", "render", "svg", "training")
]
CORES += ["cvops.reports"]


def test_the_layers_point_one_way() -> None:
    modules = module_names("cvops")
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    into_platform = {
        name
        for name, deps in graph.items()
        if not name.startswith("cvops.platform") and any(d.startswith("cvops.platform") for d in deps)
    }
    assert into_platform == {"cvops.cli"}  # the command line starts the gateway; nothing else reaches it
    for name, deps in graph.items():
        if name.startswith("cvops.events"):
            outside = {d for d in deps if not d.startswith("cvops.events") and d != "cvops"}
            assert outside <= {"cvops.errors"}, (name, outside)
    for name, path in modules.items():
        if name.startswith(("cvops.ml.", "cvops.tuning")) or name in CORES:
            assert not _external_imports(path) & {"ray", "aiohttp"}, name
