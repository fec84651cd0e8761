"""Deployment packages: a deterministic tar.gz holding the model's ONNX (and torch weights for torch
engines), its metadata, and a sha256 manifest; and the verification that ``cvops package verify`` runs.

Layout inside the archive (all under ``cvops-package/``)::

    manifest.json   {"format": 1, "files": {"model.onnx": "<sha256>", ...}}
    SHA256SUMS      the same digests in ``sha256sum -c`` format
    model.onnx      the ONNX form
    weights.pt      the torch state_dict (only for torch-* engines, when the model has one)
    metadata.json   model record (task, labels, inputs/outputs, preprocessing, parity), engine

The archive is byte-for-byte deterministic for the same inputs (sorted members, zeroed times and
owners, gzip without a timestamp), so its sha256 identifies the package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cvops.errors import ValidationFailed

ROOT = "cvops-package"
FORMAT = 1
_CHUNK = 1024 * 1024


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(f"{ROOT}/{name}")
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def build_package(out_path: Path, files: Mapping[str, Path], metadata: Mapping[str, Any]) -> dict[str, str]:
    """Write the archive to ``out_path``; returns the manifest (file name → sha256)."""
    meta = json.dumps(metadata, sort_keys=True, indent=2).encode()
    manifest = {name: _sha256_file(path) for name, path in sorted(files.items())}
    manifest["metadata.json"] = hashlib.sha256(meta).hexdigest()
    manifest = dict(sorted(manifest.items()))
    man_bytes = json.dumps({"format": FORMAT, "files": manifest}, sort_keys=True, indent=2).encode()
    sums = "".join(f"{sha}  {name}\n" for name, sha in manifest.items()).encode()
    with open(out_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("manifest.json", len(man_bytes)), io.BytesIO(man_bytes))
            tar.addfile(_info("SHA256SUMS", len(sums)), io.BytesIO(sums))
            tar.addfile(_info("metadata.json", len(meta)), io.BytesIO(meta))
            for name, path in sorted(files.items()):
                with open(path, "rb") as fh:
                    tar.addfile(_info(name, path.stat().st_size), fh)
    return manifest


def verify_package(path: str | Path) -> list[str]:
    """Problems with a package (empty when it verifies): unreadable archive, unsafe member names,
    a missing or malformed manifest, a file whose sha256 differs, files missing or not listed."""
    problems: list[str] = []
    try:
        tar = tarfile.open(path, mode="r:gz")
    except (OSError, tarfile.TarError, EOFError) as exc:
        return [f"not a readable tar.gz: {exc}"]
    with tar:
        digests: dict[str, str] = {}
        manifest: dict[str, str] | None = None
        try:
            members = tar.getmembers()
        except (OSError, tarfile.TarError, EOFError) as exc:
            return [f"corrupt archive: {exc}"]
        for m in members:
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or len(p.parts) != 2 or p.parts[0] != ROOT:
                problems.append(f"unsafe or unexpected member name {m.name!r}")
                continue
            if not m.isfile():
                problems.append(f"{m.name} is not a regular file")
                continue
            fh = tar.extractfile(m)
            if fh is None:
                problems.append(f"{m.name} cannot be read")
                continue
            try:
                if p.name == "manifest.json":
                    data = json.loads(fh.read())
                    files = data.get("files") if isinstance(data, dict) else None
                    if not isinstance(files, dict) or data.get("format") != FORMAT:
                        problems.append("manifest.json is malformed")
                    else:
                        manifest = {str(k): str(v) for k, v in files.items()}
                    continue
                h = hashlib.sha256()
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
                problems.append(f"{m.name} cannot be read: {exc}")
                continue
            digests[p.name] = h.hexdigest()
    if manifest is None:
        if "manifest.json is malformed" not in problems:
            problems.append("manifest.json is missing")
        return problems
    digests.pop("SHA256SUMS", None)
    for name, sha in manifest.items():
        got = digests.get(name)
        if got is None:
            problems.append(f"{name} is listed in the manifest but missing")
        elif got != sha:
            problems.append(f"{name}: sha256 {got} does not match the manifest's {sha}")
    for name in sorted(set(digests) - set(manifest)):
        problems.append(f"{name} is not listed in the manifest")
    return problems


def package_files(model: Mapping[str, Any], engine: str, blob_path: Any) -> dict[str, Path]:
    """Which blobs go into a package of ``model`` for ``engine`` (``blob_path(sha) -> Path``)."""
    onnx = model.get("onnx") or {}
    if model.get("status") != "ready" or not onnx.get("sha256"):
        raise ValidationFailed(f"model {model.get('id')} is not ready", {"field": "model_id"})
    files = {"model.onnx": Path(blob_path(onnx["sha256"]))}
    if engine.startswith("torch-"):
        if not onnx.get("torch_sha256"):
            raise ValidationFailed(
                f"{engine} needs a torch form and this model has none", {"field": "engine"}
            )
        files["weights.pt"] = Path(blob_path(onnx["torch_sha256"]))
    return files
