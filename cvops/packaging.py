"""Deployment packages: a deterministic tar.gz holding the model's ONNX (and torch weights for torch
engines), its metadata, a sha256 manifest and the server's Ed25519 signature of that manifest; and the
verification that ``cvops package verify`` runs.

Layout inside the archive (all under ``cvops-package/``)::

    manifest.json       {"format": 1, "files": {"model.onnx": "<sha256>", ...},
                         "signature": {"algorithm": "ed25519", "key_id": "<sha256 of the public key>"}}
    manifest.json.sig   base64 of the Ed25519 signature of manifest.json's exact bytes
    SHA256SUMS          the same digests in ``sha256sum -c`` format (must agree with the manifest)
    model.onnx          the ONNX form
    weights.pt          the torch state_dict (only for torch-* engines, when the model has one)
    metadata.json       model record (task, labels, inputs/outputs, preprocessing, parity), engine,
                        and ``serving`` (:class:`ServingConfig`: batching, workers, limits)
    README.md           how to verify and serve it (``cvops serve-package``, docker)
    Dockerfile          an image that serves it with ``cvops serve-package``

Checksums alone only show that the files match the manifest; whoever changes a file can recompute the
manifest too.  The signature is what ties the manifest to the server that built it: the server's
private key is made once in its data dir (``package_signing_key.pem``, mode 0600) and its public half
is served at ``GET /api/v1/packages/public-key``; ``cvops package verify --key KEYFILE`` checks it.

The archive is byte-for-byte deterministic for the same inputs and key (sorted members, zeroed times
and owners, gzip without a timestamp; Ed25519 signatures are deterministic), so its sha256 identifies
the package.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import logging
import os
import secrets
import tarfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cvops.errors import CvopsError, ValidationFailed

if TYPE_CHECKING:
    from cvops.events.projections import ModelRecord

log = logging.getLogger(__name__)

ROOT = "cvops-package"
FORMAT = 1
SIGNATURE = "manifest.json.sig"
ALGORITHM = "ed25519"
#: the server's private signing key, in its data dir
KEY_FILE = "package_signing_key.pem"
_CHUNK = 1024 * 1024
_MAX_META = 16 * 1024 * 1024  # manifest.json, SHA256SUMS and the signature are small


class ServingConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How a package is served (``metadata.json``'s ``serving``; ``cvops serve-package`` reads it)."""

    engine: str = "onnxruntime-cpu"
    max_batch: int = 8
    workers: int = 1
    threads: int = 1
    queue_limit: int = 1000
    timeout_s: float = 30.0
    max_wait_ms: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024


_README = """# cvops package: model {model_id} ({task}), engine {engine}

Files: model.onnx, metadata.json (the model's facts and the serving config), SHA256SUMS,
manifest.json (the same digests) and manifest.json.sig (the building server's Ed25519 signature).

Verify:

    sha256sum -c SHA256SUMS                                  # in the extracted cvops-package/
    cvops package verify PACKAGE.tar.gz --key server-key.json   # checksums and the signature

Serve it on its own (no Ray, no platform; the same batching and pre/post-processing as a deployment):

    cvops serve-package PACKAGE.tar.gz --host 0.0.0.0 --port 8080 [--key server-key.json]
    curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'http://127.0.0.1:8080/predict?top_k=5'

GET /health, GET /ready (503 until the workers have loaded the model), POST /predict.

Or as an image (the Dockerfile beside this README; put the package next to it as package.tar.gz and
build from the directory that holds both): docker build -t cvops-model . && docker run -p 8080:8080 cvops-model
"""

_DOCKERFILE = """# serves this package with `cvops serve-package` (see README.md); build context: this file and
# package.tar.gz. CVOPS_IMAGE: the cvops platform image (the repository's Dockerfile), which holds cvops.
ARG CVOPS_IMAGE=cvops:latest
FROM ${{CVOPS_IMAGE}}
COPY package.tar.gz /opt/package/package.tar.gz
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \\
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["cvops", "serve-package", "/opt/package/package.tar.gz", "--host", "0.0.0.0", "--port", "8080"]
"""


def serving_texts(metadata: Mapping[str, Any]) -> dict[str, bytes]:
    """README.md and Dockerfile of a package with ``metadata`` (model facts + serving config)."""
    model = metadata.get("model") or {}
    serving = metadata.get("serving") or {}
    fields = {
        "model_id": model.get("id", "?"),
        "task": model.get("task", "?"),
        "engine": serving.get("engine", metadata.get("engine", "?")),
    }
    return {"README.md": _README.format(**fields).encode(), "Dockerfile": _DOCKERFILE.format().encode()}


# ----------------------------------------------------------------------------------------- signing


def load_or_create_signing_key(data_dir: str | Path) -> Ed25519PrivateKey:
    """The server's package signing key: ``<data_dir>/package_signing_key.pem`` (PKCS#8, mode 0600),
    generated on first use and read again on every later start (so packages keep verifying against
    the same public key across restarts).  Concurrent first uses end with one key."""
    data_dir = Path(data_dir)
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # create-if-absent, complete or not at all
            except FileExistsError:
                pass  # another first use won: keep its key
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s had mode %o; tightening it to 600", path, mode)
        os.chmod(path, 0o600)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CvopsError(f"{path} is not a readable PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CvopsError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """A key's fingerprint: sha256 of its 32 raw bytes, hex."""
    return hashlib.sha256(public_key_bytes(key)).hexdigest()


def public_key_info(key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, str]:
    """What ``GET /packages/public-key`` answers; :func:`load_public_key` reads it back."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(pub),
        "public_key": base64.b64encode(public_key_bytes(pub)).decode(),
        "pem": public_key_pem(pub),
    }


def load_public_key(data: bytes | str) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM (``-----BEGIN PUBLIC KEY-----``), the JSON that
    ``GET /packages/public-key`` answers, or the base64 of its 32 raw bytes.
    Raises ValidationFailed for anything else."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    text = raw.strip()
    try:
        if text.startswith(b"{"):
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("algorithm", ALGORITHM) != ALGORITHM:
                raise ValueError("not an ed25519 key document")
            text = str(doc.get("pem") or doc.get("public_key") or "").encode().strip()
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"a {type(key).__name__}, not an Ed25519 public key")
            return key
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as exc:
        raise ValidationFailed(f"not an Ed25519 public key: {exc}") from exc


def _sums(manifest: Mapping[str, str]) -> bytes:
    return "".join(f"{sha}  {name}\n" for name, sha in manifest.items()).encode()


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


def build_package(
    out_path: Path,
    files: Mapping[str, Path],
    metadata: Mapping[str, Any],
    signing_key: Ed25519PrivateKey,
    texts: Mapping[str, bytes] | None = None,
) -> dict[str, str]:
    """Write the archive to ``out_path``, its manifest signed with ``signing_key``; returns the
    manifest's files (file name → sha256).  ``texts``: more files given by content (README.md,
    Dockerfile)."""
    meta = json.dumps(metadata, sort_keys=True, indent=2).encode()
    extra = dict(sorted((texts or {}).items()))
    manifest = {name: _sha256_file(path) for name, path in sorted(files.items())}
    manifest.update({name: hashlib.sha256(data).hexdigest() for name, data in extra.items()})
    manifest["metadata.json"] = hashlib.sha256(meta).hexdigest()
    manifest = dict(sorted(manifest.items()))
    doc = {
        "format": FORMAT,
        "files": manifest,
        "signature": {"algorithm": ALGORITHM, "key_id": key_id(signing_key.public_key())},
    }
    man_bytes = json.dumps(doc, sort_keys=True, indent=2).encode()
    sig = base64.b64encode(signing_key.sign(man_bytes)) + b"\n"
    sums = _sums(manifest)
    with open(out_path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info("manifest.json", len(man_bytes)), io.BytesIO(man_bytes))
            tar.addfile(_info(SIGNATURE, len(sig)), io.BytesIO(sig))
            tar.addfile(_info("SHA256SUMS", len(sums)), io.BytesIO(sums))
            tar.addfile(_info("metadata.json", len(meta)), io.BytesIO(meta))
            for name, data in extra.items():
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
            for name, path in sorted(files.items()):
                with open(path, "rb") as fh:
                    tar.addfile(_info(name, path.stat().st_size), fh)
    return manifest


def verify_package(path: str | Path, public_key: Ed25519PublicKey | None = None) -> list[str]:
    """Problems with a package (empty when it verifies): unreadable archive, unsafe or duplicate member
    names, a missing or malformed manifest, a file whose sha256 differs, files missing or not listed,
    a SHA256SUMS that disagrees with the manifest.  With ``public_key`` also: a missing or bad
    signature, or one made by another key.  Without it the signature is not checked (a key carried in
    the package itself would prove nothing: whoever rewrote the package could sign with their own)."""
    problems: list[str] = []
    try:
        tar = tarfile.open(path, mode="r:gz")
    except (OSError, tarfile.TarError, EOFError) as exc:
        return [f"not a readable tar.gz: {exc}"]
    with tar:
        digests: dict[str, str] = {}
        small: dict[str, bytes] = {}  # manifest.json, its signature, SHA256SUMS: exact bytes
        try:
            members = tar.getmembers()
        except (OSError, tarfile.TarError, EOFError) as exc:
            return [f"corrupt archive: {exc}"]
        seen: set[str] = set()
        for m in members:
            p = PurePosixPath(m.name)
            if p.is_absolute() or ".." in p.parts or len(p.parts) != 2 or p.parts[0] != ROOT:
                problems.append(f"unsafe or unexpected member name {m.name!r}")
                continue
            if p.name in seen:  # tar keeps both; which one a reader gets depends on the reader
                problems.append(f"{m.name} appears more than once")
                continue
            seen.add(p.name)
            if not m.isfile():
                problems.append(f"{m.name} is not a regular file")
                continue
            fh = tar.extractfile(m)
            if fh is None:
                problems.append(f"{m.name} cannot be read")
                continue
            try:
                if p.name in ("manifest.json", SIGNATURE, "SHA256SUMS"):
                    if m.size > _MAX_META:
                        problems.append(f"{m.name} is too large ({m.size} bytes)")
                    else:
                        small[p.name] = fh.read()
                    continue
                h = hashlib.sha256()
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            except (OSError, tarfile.TarError, EOFError, ValueError) as exc:
                problems.append(f"{m.name} cannot be read: {exc}")
                continue
            digests[p.name] = h.hexdigest()
    man_bytes = small.get("manifest.json")
    if man_bytes is None:
        problems.append("manifest.json is missing")
        return problems
    try:
        data = json.loads(man_bytes)
    except ValueError:
        data = None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(files, dict) or data.get("format") != FORMAT:
        problems.append("manifest.json is malformed")
        return problems
    manifest = {str(k): str(v) for k, v in files.items()}
    for name, sha in manifest.items():
        got = digests.get(name)
        if got is None:
            problems.append(f"{name} is listed in the manifest but missing")
        elif got != sha:
            problems.append(f"{name}: sha256 {got} does not match the manifest's {sha}")
    for name in sorted(set(digests) - set(manifest)):
        problems.append(f"{name} is not listed in the manifest")
    sums = small.get("SHA256SUMS")
    if sums is None:
        problems.append("SHA256SUMS is missing")
    elif sums != _sums(dict(sorted(manifest.items()))):
        problems.append("SHA256SUMS does not match the manifest")
    if public_key is not None:
        signer = data.get("signature")
        claimed = str(signer.get("key_id")) if isinstance(signer, dict) else None
        problems.extend(_check_signature(man_bytes, small.get(SIGNATURE), public_key, claimed))
    return problems


def _check_signature(
    man_bytes: bytes, sig_text: bytes | None, public_key: Ed25519PublicKey, claimed: str | None
) -> list[str]:
    if sig_text is None:
        return [f"{SIGNATURE} is missing: the package is not signed"]
    try:
        sig = base64.b64decode(sig_text.strip(), validate=True)
    except (ValueError, binascii.Error):
        return [f"{SIGNATURE} is not base64"]
    try:
        public_key.verify(sig, man_bytes)
    except InvalidSignature:
        want = key_id(public_key)
        if claimed and claimed != want:
            return [f"signature is not by the given key {want} (the manifest names key {claimed})"]
        return [f"signature does not match: manifest.json was changed after it was signed by key {want}"]
    return []


def package_files(model: ModelRecord, engine: str, blob_path: Any) -> dict[str, Path]:
    """Which blobs go into a package of ``model`` for ``engine`` (``blob_path(sha) -> Path``)."""
    onnx = model.onnx
    if model.status != "ready" or onnx is None or not onnx.sha256:
        raise ValidationFailed(f"model {model.id} is not ready", {"field": "model_id"})
    files = {"model.onnx": Path(blob_path(onnx.sha256))}
    if engine.startswith("torch-"):
        if not onnx.torch_sha256:
            raise ValidationFailed(
                f"{engine} needs a torch form and this model has none", {"field": "engine"}
            )
        files["weights.pt"] = Path(blob_path(onnx.torch_sha256))
    return files
