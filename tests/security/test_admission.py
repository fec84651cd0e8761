"""Issue 10, admission: the gateway under hostile users (DESIGN.md §4 and §5).

One real ``cvops serve`` with small limits (one GPU token, an inference queue of 2, a per-deployment
byte cap on predict bodies, 2 queued jobs and 32 kB of uploads per user), spoken to over HTTP and raw
sockets:

* cancel: only an admin or the job's submitter; benchmark and evolve jobs only an admin;
* predict: the deployment is found and a queue slot taken from the headers alone, before the body;
  bodies in flight per deployment are capped (429 + Retry-After);
* multipart: unknown form fields are refused (422 naming them) and leave nothing stored; the non-file
  fields share one byte cap (413);
* quotas per user: queued jobs (429 naming the setting) and stored upload bytes (413, from
  Content-Length and again while streaming, nothing left behind), rebuilt from the log after a restart.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.e2e.helpers import API, blob_path, get_job, preset, shapes_zip, upload_dataset, wait_job
from tests.e2e.server import Server, request

QUOTA = 32_000
INFLIGHT_CAP = 1_000_000
ENV = {
    "CVOPS_GPU_TOKENS": "1",
    "CVOPS_QUEUE_LIMIT": "2",
    "CVOPS_INFERENCE_WORKERS": "1",
    "CVOPS_MAX_PREDICT_INFLIGHT_BYTES": str(INFLIGHT_CAP),
    "CVOPS_MAX_QUEUED_JOBS_PER_USER": "2",
    "CVOPS_MAX_STORED_BYTES_PER_USER": str(QUOTA),
}
USERS = {"eve": "engineer", "ed": "engineer", "quinn": "engineer", "vic": "viewer"}
SLOW_TRAIN = {"epochs": 1000, "batch_size": 2, "image_size": 128, "num_workers": 0}


@dataclass
class Site:
    server: Server
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def login(self) -> None:
        self.tokens = {"admin": self.server.token()}
        for name in USERS:
            self.tokens[name] = self.server.token(name, f"{name}-password")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    server = Server(tmp_path_factory.mktemp("admission") / "data", **ENV).start()
    s = Site(server)
    try:
        admin = server.token()
        for name, role in USERS.items():
            status, body = request(
                server.url,
                "POST",
                f"{API}/users",
                {"username": name, "password": f"{name}-password", "role": role},
                admin,
            )
            assert status == 201, body
        s.login()
        yield s
    finally:
        s.server.stop()


@pytest.fixture(scope="module")
def model(site: Site) -> dict[str, Any]:
    status, rec = preset(site.url, site.tokens["admin"], "tiny_cnn", name="tiny-admission", num_classes=3)
    assert status == 200 and rec["status"] == "ready", rec
    return rec  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dataset(site: Site, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = shapes_zip(tmp_path_factory.mktemp("adm-ds"), n_per_class=20, size=32, seed=3)
    status, rec = upload_dataset(site.url, site.tokens["admin"], data, name="shapes-admission")
    assert status == 200 and rec["status"] == "ready", rec
    return rec  # type: ignore[no-any-return]


def _submit(site: Site, body: dict[str, Any], who: str) -> tuple[int, Any]:
    return request(site.url, "POST", f"{API}/jobs", body, site.tokens[who])


def _cancel(site: Site, job_id: str, who: str) -> tuple[int, Any]:
    return request(site.url, "POST", f"{API}/jobs/{job_id}/cancel", token=site.tokens[who])


@pytest.fixture(scope="module")
def busy(site: Site, model: dict[str, Any], dataset: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A long training that holds the only GPU token, so every later job stays queued."""
    train = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"]}
    status, job = _submit(site, {**train, "hyperparameters": SLOW_TRAIN}, "admin")
    assert status == 202, job
    wait_job(site.url, site.tokens["admin"], job["id"], timeout=120, until=("running", "failed", "succeeded"))
    assert get_job(site.url, site.tokens["admin"], job["id"])["status"] == "running"
    yield job
    _cancel(site, job["id"], "admin")


def _still_busy(site: Site, busy: dict[str, Any]) -> None:
    job = get_job(site.url, site.tokens["admin"], busy["id"])
    assert job["status"] == "running", f"the token-holding job ended early; the test proves nothing: {job}"


# ----------------------------------------------------------------------------------------- 1. cancel


def test_cancel_needs_admin_or_the_submitter(
    site: Site, model: dict[str, Any], dataset: dict[str, Any], busy: dict[str, Any]
) -> None:
    bench = {"kind": "benchmark", "model_id": model["id"], "engines": ["onnxruntime-cpu"], "iterations": 1}
    status, admin_bench = _submit(site, bench, "admin")
    assert status == 202 and admin_bench["status"] == "queued", admin_bench
    train = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"]}
    status, eds = _submit(site, train, "ed")
    assert status == 202 and eds["status"] == "queued", eds
    _still_busy(site, busy)

    # an engineer may not stop an admin's benchmark, nor another engineer's training, nor the admin's
    for job_id, who in ((admin_bench["id"], "eve"), (eds["id"], "eve"), (busy["id"], "ed")):
        status, reply = _cancel(site, job_id, who)
        assert status == 403 and reply["error"]["code"] == "forbidden", (who, job_id, reply)
        assert get_job(site.url, site.tokens["admin"], job_id)["status"] in ("queued", "running")
    status, reply = _cancel(site, busy["id"], "vic")  # a viewer never reaches the handler
    assert status == 403, reply

    # the submitter may stop their own training; an admin may stop anything
    status, reply = _cancel(site, eds["id"], "ed")
    assert status == 202, reply
    status, reply = _cancel(site, admin_bench["id"], "admin")
    assert status == 202, reply
    for job_id, by in ((eds["id"], "ed"), (admin_bench["id"], "admin")):
        done = wait_job(site.url, site.tokens["admin"], job_id, timeout=60)
        assert done["status"] == "cancelled" and done["cancelled_by"] == by, done
    status, reply = _cancel(site, "ffffffffffffffff", "eve")  # unknown job: still 404, not 403
    assert status == 404, reply


# ------------------------------------------------------------------------------- 4a. queued jobs quota


def test_queued_jobs_per_user_are_capped(
    site: Site, model: dict[str, Any], dataset: dict[str, Any], busy: dict[str, Any]
) -> None:
    train = {"kind": "train", "model_id": model["id"], "dataset_id": dataset["id"]}
    queued = []
    for _ in range(2):
        status, job = _submit(site, train, "eve")
        assert status == 202 and job["status"] == "queued", job
        queued.append(job["id"])
    status, reply = _submit(site, train, "eve")
    assert status == 429, reply
    assert reply["error"]["code"] == "too_many_requests"
    assert "CVOPS_MAX_QUEUED_JOBS_PER_USER" in reply["error"]["message"], reply
    assert reply["error"]["details"]["limit"] == 2 and reply["error"]["details"]["queued"] == 2
    sock = _open(site, f"{API}/jobs", "eve", "application/json", 500)  # refused from the headers alone
    try:
        status, headers, reply = _reply(sock)
    finally:
        sock.close()
    assert status == 429 and int(headers["retry-after"]) >= 1, reply
    # the cap is per user: another engineer still gets in
    status, other = _submit(site, train, "ed")
    assert status == 202, other
    queued.append(other["id"])
    _still_busy(site, busy)
    # once one of eve's jobs leaves the queue she may submit again
    status, reply = _cancel(site, queued[0], "eve")
    assert status == 202, reply
    status, again = _submit(site, train, "eve")
    assert status == 202, again
    queued.append(again["id"])
    for job_id in queued[1:]:
        assert _cancel(site, job_id, "admin")[0] == 202


# ---------------------------------------------------------------------------- 2. predict admission


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 40), (200, 30, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def _open(site: Site, path: str, who: str, ctype: str, length: int, first: bytes = b"") -> socket.socket:
    """A POST whose headers (and ``first`` bytes of its body) are sent, the rest held back."""
    u = urlparse(site.url)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Authorization: Bearer {site.tokens[who]}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock.sendall(head + first)
    return sock


def _reply(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """The response to a request whose body was not (all) sent; fails when none comes."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    except TimeoutError as exc:
        raise AssertionError(f"no reply within {timeout} s while the body was held back") from exc
    assert lines[0].startswith("HTTP/1.1 "), data[:200]
    status = int(lines[0].split()[1])
    body = json.loads(rest) if "json" in headers.get("content-type", "") and rest else rest
    return status, headers, body


def _predict(site: Site, dep_id: str, who: str = "vic") -> tuple[int, Any]:
    return request(
        site.url,
        "POST",
        f"{API}/deployments/{dep_id}/predict",
        raw=_jpeg(),
        token=site.tokens[who],
        headers={"Content-Type": "image/jpeg"},
    )


@pytest.fixture(scope="module")
def deployment(site: Site, model: dict[str, Any]) -> str:
    status, dep = request(
        site.url,
        "POST",
        f"{API}/deployments",
        {"model_id": model["id"], "engine": "onnxruntime-cpu", "workers": 1},
        site.tokens["admin"],
        timeout=300,
    )
    assert status == 201, dep
    status, reply = _predict(site, dep["id"])
    assert status == 200, reply
    return str(dep["id"])


def test_predict_unknown_deployment_is_404_before_the_body(site: Site) -> None:
    sock = _open(site, f"{API}/deployments/nope-{uuid.uuid4().hex[:8]}/predict", "vic", "image/jpeg", 10**7)
    try:
        status, _, body = _reply(sock)
    finally:
        sock.close()
    assert status == 404 and body["error"]["code"] == "not_found", body


def test_predict_full_queue_is_429_before_the_body(site: Site, deployment: str) -> None:
    path = f"{API}/deployments/{deployment}/predict"
    held = [_open(site, path, "vic", "image/jpeg", 50_000, b"\xff\xd8") for _ in range(2)]
    try:
        time.sleep(1.0)  # both are admitted and reading their bodies: the queue (2) is full
        third = _open(site, path, "vic", "image/jpeg", 50_000)
        try:
            status, headers, body = _reply(third)
        finally:
            third.close()
        assert status == 429 and body["error"]["code"] == "too_many_requests", body
        assert int(headers["retry-after"]) >= 1
        assert body["error"]["details"]["queue_limit"] == 2
    finally:
        for sock in held:
            sock.close()
    _eventually_serves(site, deployment)  # the slots of the abandoned bodies came back


def test_predict_bodies_in_flight_are_capped_per_deployment(site: Site, deployment: str) -> None:
    path = f"{API}/deployments/{deployment}/predict"
    big = _open(site, path, "vic", "image/jpeg", 800_000, b"\xff\xd8")
    try:
        time.sleep(1.0)
        second = _open(site, path, "vic", "image/jpeg", 300_000)  # 1.1 MB together > the 1 MB cap
        try:
            status, headers, body = _reply(second)
        finally:
            second.close()
        assert status == 429, body
        assert body["error"]["details"]["setting"] == "CVOPS_MAX_PREDICT_INFLIGHT_BYTES", body
        assert int(headers["retry-after"]) >= 1
        status, reply = _predict(site, deployment)  # a small body still fits beside the big one
        assert status == 200, reply
    finally:
        big.close()
    _eventually_serves(site, deployment)


def _eventually_serves(site: Site, dep_id: str, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while True:
        status, reply = _predict(site, dep_id)
        if status == 200:
            return
        assert time.monotonic() < end, (status, reply)
        time.sleep(0.3)


# ----------------------------------------------------------------------------- 3. multipart fields


def _form(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A multipart body with the parts in the given order: (name, value, filename or None)."""
    boundary = "adm" + uuid.uuid4().hex
    out = io.BytesIO()
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode())
        out.write(value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _post_form(
    site: Site, path: str, who: str, parts: list[tuple[str, bytes, str | None]]
) -> tuple[int, Any]:
    body, ctype = _form(parts)
    return request(site.url, "POST", path, raw=body, token=site.tokens[who], headers={"Content-Type": ctype})


def _tmp_files(site: Site) -> list[Path]:
    return [p for p in (site.server.data_dir / "blobs" / "tmp").iterdir() if p.is_file()]


def _dataset_names(site: Site) -> set[str]:
    status, body = request(site.url, "GET", f"{API}/datasets", token=site.tokens["admin"])
    assert status == 200, body
    return {d["name"] for d in body["datasets"]}


def test_unknown_form_fields_are_refused_and_nothing_is_stored(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = shapes_zip(tmp_path_factory.mktemp("adm-unknown"), n_per_class=3, size=16, seed=11)
    # the unknown field comes after the file: the file's bytes were already streamed
    parts = [("name", b"unknown-field-ds", None), ("file", data, "d.zip"), ("colour", b"blue", None)]
    status, reply = _post_form(site, f"{API}/datasets", "admin", parts)
    assert status == 422, reply
    assert reply["error"]["details"]["field"] == "colour", reply
    assert "colour" in reply["error"]["message"]
    assert not blob_path(site.server.data_dir, data).exists()
    assert _tmp_files(site) == []
    assert "unknown-field-ds" not in _dataset_names(site)
    # models too (the route's own field list), and a run of junk fields stops at the first
    junk = [(f"f{i}", b"x" * 1000, None) for i in range(20)]
    status, reply = _post_form(site, f"{API}/models", "eve", [*junk, ("file", b"onnx?", "m.onnx")])
    assert status == 422 and reply["error"]["details"]["field"] == "f0", reply
    model = [
        ("task", b"classification", None),
        ("file", b"not-a-model-bytes", "m.onnx"),
        ("evil", b"1", None),
    ]
    status, reply = _post_form(site, f"{API}/models", "admin", model)
    assert status == 422 and reply["error"]["details"]["field"] == "evil", reply
    assert not blob_path(site.server.data_dir, b"not-a-model-bytes").exists()


def test_form_fields_share_one_byte_cap(site: Site, tmp_path_factory: pytest.TempPathFactory) -> None:
    data = shapes_zip(tmp_path_factory.mktemp("adm-fields"), n_per_class=3, size=16, seed=12)
    parts = [("name", b"n" * 40_000, None), ("format", b"f" * 40_000, None), ("file", data, "d.zip")]
    status, reply = _post_form(site, f"{API}/datasets", "admin", parts)
    assert status == 413 and reply["error"]["code"] == "payload_too_large", reply
    assert not blob_path(site.server.data_dir, data).exists()
    assert _tmp_files(site) == []


# -------------------------------------------------------------------------- 4b. stored bytes quota


def _chunked_upload(site: Site, who: str, data: bytes) -> tuple[int, Any]:
    """A dataset upload with no Content-Length (chunked): only the streaming check can stop it."""
    body, ctype = _form([("name", b"chunked-ds", None), ("file", data, "c.zip")])
    u = urlparse(site.url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=60)
    try:
        conn.putrequest("POST", f"{API}/datasets")
        conn.putheader("Authorization", f"Bearer {site.tokens[who]}")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for i in range(0, len(body), 4096):
                piece = body[i : i + 4096]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused mid-stream: the reply is waiting
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload) if payload else None
    finally:
        conn.close()


def _tiny_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "tiny")
    return buf.getvalue()


def test_stored_bytes_per_user_are_capped(site: Site, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("adm-quota")
    first, second = (shapes_zip(tmp, n_per_class=20, size=32, seed=s) for s in (21, 22))
    assert len(first) < QUOTA < len(first) + len(second)
    status, rec = upload_dataset(site.url, site.tokens["quinn"], first, name="quinn-1", wait=False)
    assert status == 202, rec
    before = _dataset_names(site)

    # refused from Content-Length, before the body is read
    status, reply = upload_dataset(site.url, site.tokens["quinn"], second, name="quinn-2", wait=False)
    assert status == 413, reply
    assert reply["error"]["details"]["setting"] == "CVOPS_MAX_STORED_BYTES_PER_USER", reply
    assert "CVOPS_MAX_STORED_BYTES_PER_USER" in reply["error"]["message"]
    # refused while streaming when there is no Content-Length
    status, reply = _chunked_upload(site, "quinn", second)
    assert status == 413, reply
    assert reply["error"]["details"]["setting"] == "CVOPS_MAX_STORED_BYTES_PER_USER", reply
    # nothing left behind
    assert not blob_path(site.server.data_dir, second).exists()
    assert _tmp_files(site) == []
    assert _dataset_names(site) == before
    # the quota is per user: another engineer uploads the same bytes
    status, rec = upload_dataset(site.url, site.tokens["ed"], second, name="ed-1", wait=False)
    assert status == 202, rec


@pytest.mark.slow  # a second server start (~90 s on 2 cores)
def test_stored_bytes_survive_a_restart(site: Site, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The count is rebuilt from the log: a fresh process still refuses quinn's next big upload."""
    site.server.stop()
    site.server = Server(site.server.data_dir, **ENV).start()
    site.login()
    second = shapes_zip(tmp_path_factory.mktemp("adm-restart"), n_per_class=20, size=32, seed=23)
    status, reply = upload_dataset(site.url, site.tokens["quinn"], second, name="quinn-3", wait=False)
    assert status == 413, reply
    assert reply["error"]["details"]["used"] >= 20_000, reply
    status, rec = upload_dataset(site.url, site.tokens["quinn"], _tiny_zip(), name="quinn-tiny", wait=False)
    assert status == 202, rec  # what still fits is let in


# ------------------------------------------------------------- the cores, without a server (fast)


async def test_stored_bytes_are_a_fold_of_the_sqlite_log(tmp_path: Path) -> None:
    """Who stored what is read back from a real SQLite log; a new reader (a restart) gets the same."""
    from cvops.blobs import BlobStore
    from cvops.errors import PayloadTooLarge
    from cvops.events.log import EventLog
    from cvops.events.schema import DatasetRejected, DatasetUploaded, ModelDeleted, ModelUploaded
    from cvops.platform.uploads import UploadQuota

    sha = "ab" * 32
    model = ModelUploaded(
        model_id="m1",
        name="m",
        task="classification",
        source_format="onnx",
        source_sha256=sha,
        source_bytes=700,
    )
    blobs = BlobStore(tmp_path / "blobs")
    async with await EventLog.open(tmp_path / "events.db") as log:
        await log.append("model-m1", [model], 0, user="quinn")
        for i, (user, size) in enumerate((("quinn", 200), ("ed", 900), ("quinn", 50))):
            ds = DatasetUploaded(dataset_id=f"d{i}", name="d", task="classification", format="imagefolder",
                                 sha256=sha, bytes=size)  # fmt: skip
            await log.append(f"dataset-d{i}", [ds], 0, user=user)
        await log.append("dataset-d2", [DatasetRejected(dataset_id="d2", reason="bad")], 1)
        quota = UploadQuota(log, 1000, blobs.root)
        await quota.catch_up()
        assert (quota.used("quinn"), quota.used("ed")) == (900, 900)
        with pytest.raises(PayloadTooLarge) as err:
            quota.reserve("quinn", 101)
        assert err.value.details["setting"] == "CVOPS_MAX_STORED_BYTES_PER_USER"
        hold = quota.reserve("quinn", 100)  # an upload in progress counts ...
        assert quota.used("quinn") == 1000
        with pytest.raises(PayloadTooLarge):
            hold.hold(101)  # ... and may not grow past the quota while it streams
        hold.release()
        assert quota.used("quinn") == 900
        await log.append("model-m1", [ModelDeleted(model_id="m1")], 1, user="admin")
        await quota.catch_up()
        assert quota.used("quinn") == 200
        again = UploadQuota(log, 1000, blobs.root)  # rebuilt from the log alone
        await again.catch_up()
        assert again.state == quota.state


async def test_router_admission_takes_a_slot_and_caps_bytes() -> None:
    from cvops.errors import TooManyRequests
    from cvops.serving import BatchingRouter

    class Echo:
        async def call(self, items: list[Any]) -> list[Any]:
            return items

    router: BatchingRouter[Any, Any] = BatchingRouter([Echo()], queue_limit=2, max_wait_ms=0)
    a = router.admit(600, max_bytes=1000)
    with pytest.raises(TooManyRequests) as err:
        router.admit(500, max_bytes=1000)  # 1,100 bytes of bodies would be held
    assert err.value.details["setting"] == "CVOPS_MAX_PREDICT_INFLIGHT_BYTES"
    b = router.admit(100, max_bytes=1000)
    with pytest.raises(TooManyRequests) as err:
        router.admit(0, max_bytes=1000)  # two slots taken by bodies still being read
    assert err.value.details["queue_limit"] == 2
    with pytest.raises(TooManyRequests):
        b.hold(500)  # a body that turns out bigger than declared is refused as it arrives
    assert await router.submit("x", a) == "x"
    a.release()
    b.release()
    assert (router.admitted, router.body_bytes, router.queued, router.inflight) == (0, 0, 0, 0)
    assert router.stats().rejected == 3
    await router.close()
