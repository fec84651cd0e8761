"""The gateway and the pure cores never import torch (or, for the cores, ray).

Each target is imported in a fresh interpreter, so what another test imported earlier in this
process cannot hide a heavy import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# module -> heavy packages it must not pull in
BOUNDARIES: dict[str, tuple[str, ...]] = {
    "cvops.platform.app": ("torch",),
    "cvops.ga": ("torch", "ray"),
    "cvops.jobs_api": ("torch", "ray"),
    "cvops.selection": ("torch", "ray"),
    "cvops.report": ("torch", "ray"),
    "cvops.ml.hyperparameters": ("torch", "ray"),
    "cvops.ml.spec": ("torch", "ray"),
    "cvops.ml.sniff": ("torch", "ray"),
    "cvops.ml.parity": ("torch", "ray"),
    "cvops.bench_types": ("torch", "ray"),
}

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in ("torch", "ray", "torchvision") if m in sys.modules)))
"""


def _loaded_after_import(module: str) -> list[str]:
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
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", sorted(BOUNDARIES))
def test_module_stays_light(module: str) -> None:
    loaded = _loaded_after_import(module)
    heavy = [m for m in BOUNDARIES[module] if m in loaded]
    assert not heavy, f"importing {module} pulled in {heavy}"
