"""Reports over real HTTP: a training, a benchmark and an evolution job each get a report in every
format and view, byte-identical when asked twice and after a restart; the trained model gets a card;
a signed link opens a report without a token and only until it expires, is tampered with, or its user
changes."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from cvops.platform.report_links import LinkClaims, sign
from tests.e2e.helpers import API, get_bytes, preset, shapes_zip, upload_dataset, wait_job, wait_model
from tests.e2e.server import Server, request

HP = {
    "epochs": 2,
    "batch_size": 16,
    "lr": 0.01,
    "image_size": 32,
    "num_workers": 0,
    "augment_scale_crop": False,
}
FORMATS = {"json": "application/json", "md": "text/markdown", "html": "text/html"}


@dataclass
class Setup:
    server: Server
    admin: str
    engineer: str
    viewer: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    jobs: dict[str, str] = field(default_factory=dict)  # kind -> job id
    trained: str = ""


def _submit(s: Setup, body: dict[str, Any]) -> str:
    status, job = request(s.server.url, "POST", f"{API}/jobs", body, s.admin)
    assert status == 202, job
    done = wait_job(s.server.url, s.admin, job["id"], timeout=600)
    assert done["status"] == "succeeded", done
    return str(job["id"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("reports")
    server = Server(tmp / "data").start()
    try:
        admin = server.token()
        for name, role in (("eve", "engineer"), ("vic", "viewer")):
            status, body = request(server.url, "POST", f"{API}/users", {"username": name, "password": f"{name}-password", "role": role}, admin)  # fmt: skip
            assert status == 201, body
        status, model = preset(server.url, admin, "tiny_cnn", name="tiny-reports", num_classes=3)
        assert status == 200, model
        status, ds = upload_dataset(
            server.url, admin, shapes_zip(tmp, n_per_class=30, size=32, seed=5), name="shapes"
        )
        assert status == 200, ds
        s = Setup(
            server, admin, server.token("eve", "eve-password"), server.token("vic", "vic-password"), model, ds
        )
        s.jobs["train"] = _submit(
            s, {"kind": "train", "model_id": model["id"], "dataset_id": ds["id"], "hyperparameters": HP}
        )
        s.trained = wait_job(server.url, admin, s.jobs["train"])["result"]["model_id"]
        assert wait_model(server.url, admin, s.trained)["status"] == "ready"  # converts after the job ends
        s.jobs["benchmark"] = _submit(
            s, {"kind": "benchmark", "model_id": s.trained, "engines": ["onnxruntime-cpu", "torch-cpu"],
                "batch_sizes": [1, 2], "warmup": 1, "iterations": 10},
        )  # fmt: skip
        yield s
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def _all_reports(s: Setup, token: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    paths = {kind: f"{API}/jobs/{job}/report" for kind, job in s.jobs.items()}
    paths["card"] = f"{API}/models/{s.trained}/card"
    for kind, path in paths.items():
        for view in ("simple", "technical"):
            for fmt, ctype in FORMATS.items():
                status, body, got = get_bytes(s.server.url, f"{path}?view={view}&format={fmt}", token)
                assert status == 200 and got.startswith(ctype), (kind, view, fmt, body[:300])
                out[f"{kind}/{view}.{fmt}"] = body
    return out


def test_every_job_kind_has_a_report_and_the_model_a_card(setup: Setup) -> None:
    s = setup
    first = _all_reports(s, s.admin)
    assert _all_reports(s, s.engineer) == first  # same events, same bytes (whoever asks)
    train = json.loads(first["train/technical.json"])
    assert train["report"] == "training" and train["status"] == "succeeded"
    assert [e["epoch"] for e in train["epochs"]] == [1, 2]
    assert all(
        e["loss"] > 0 and e["val_accuracy"] is not None and e["lr"] is not None for e in train["epochs"]
    )
    assert (
        train["lineage"]["model"]["id"] == s.trained
        and train["lineage"]["parent_model"]["id"] == s.model["id"]
    )
    assert train["lineage"]["dataset"]["name"] == "shapes" and train["checkpoint"]["sha256"]
    assert train["summary"][0].startswith(f"Use model {s.trained}")
    bench = json.loads(first["benchmark/technical.json"])
    assert (
        bench["selected"]["engine"] in ("onnxruntime-cpu", "torch-cpu")
        and len(bench["latency_distribution"]) == 2
    )
    assert [t["engine"] for t in bench["throughput"]] == ["onnxruntime-cpu", "torch-cpu"]
    card = json.loads(first["card/technical.json"])
    assert card["lineage"]["train_job"] == s.jobs["train"] and card["parity"]["passed"] is True
    assert card["benchmarks"][0]["job_id"] == s.jobs["benchmark"]
    assert card["selected_engine"]["engine"] == bench["selected"]["engine"]
    for key, body in first.items():
        if key.endswith(".html"):
            page = body.decode()
            assert "<svg" in page and "<script" not in page and "http" not in page.replace("https?", ""), key
    # roles: the report and card are staff-only like before; unknown ids are 404
    for path in (f"{API}/jobs/{s.jobs['train']}/report", f"{API}/models/{s.trained}/card"):
        assert request(s.server.url, "GET", path, token=s.viewer)[0] == 403
        assert request(s.server.url, "GET", path)[0] == 401
    assert request(s.server.url, "GET", f"{API}/models/ffffffffffffffff/card", token=s.admin)[0] == 404
    assert (
        request(s.server.url, "GET", f"{API}/jobs/{s.jobs['train']}/report?download=maybe", token=s.admin)[0]
        == 400
    )


def _open(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _link(s: Setup, path: str, token: str, view: str = "technical", fmt: str = "html") -> dict[str, Any]:
    status, link = request(s.server.url, "POST", f"{path}-link?view={view}&format={fmt}", token=token)
    assert status == 200, link
    return link  # type: ignore[no-any-return]


def test_a_signed_link_opens_the_report_without_a_token(setup: Setup) -> None:
    s = setup
    report = f"{API}/jobs/{s.jobs['train']}/report"
    link = _link(s, report, s.engineer)
    assert link["expires_in_s"] == 300 and 0 < link["expires_at"] - time.time() <= 300
    assert link["url"] == s.server.url + link["path"] and "token" not in link["path"]
    status, body, headers = _open(link["url"])  # no Authorization header
    assert status == 200, body
    assert (
        headers["Content-Disposition"]
        == f'attachment; filename="cvops-train-report-{s.jobs["train"]}-technical.html"'
    )
    assert (
        headers["Content-Type"].startswith("text/html")
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    assert body == get_bytes(s.server.url, f"{report}?view=technical&format=html", s.admin)[1]
    sig = parse_qs(urlparse(link["url"]).query)["sig"][0]
    # the link opens this report only, in every view and format, but no other
    assert _open(f"{s.server.url}{report}?format=md&sig={sig}")[0] == 200
    status, body, _ = _open(f"{s.server.url}{API}/jobs/{s.jobs['benchmark']}/report?sig={sig}")
    assert status == 403 and b"another report" in body
    assert _open(f"{s.server.url}{API}/jobs/{s.jobs['train']}?sig={sig}")[0] == 401  # not a link route
    # tampered: any changed character of the payload or the MAC
    for i in (3, len(sig) - 3):
        bad = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1 :]
        status, body, _ = _open(f"{s.server.url}{report}?sig={bad}")
        assert status == 403 and json.loads(body)["error"]["details"]["reason"] == "invalid_link", body
    # expired: a link signed with the server's own secret, an hour old
    secret = (s.server.data_dir / "jwt_secret").read_text().strip()
    old = sign(secret, LinkClaims(path=report, user="eve", ver=0, exp=int(time.time()) - 3600))
    status, body, _ = _open(f"{s.server.url}{report}?sig={old}")
    assert status == 403 and b"expired" in body, body
    # a viewer may not make one (same rule as the report); the card has links too
    assert request(s.server.url, "POST", f"{report}-link", token=s.viewer)[0] == 403
    card = _link(s, f"{API}/models/{s.trained}/card", s.admin, "simple", "md")
    status, body, headers = _open(card["url"])
    assert (
        status == 200 and body.startswith(b"# Model card") and "attachment" in headers["Content-Disposition"]
    )
    # the user changes (new password): every link they made dies
    status, _ = request(s.server.url, "PATCH", f"{API}/users/eve", {"password": "eve-password-2"}, s.admin)
    assert status == 200
    status, body, _ = _open(link["url"])
    assert status == 403 and b"revoked" in body, body


@pytest.mark.slow
def test_evolution_report_and_the_same_bytes_after_a_restart(setup: Setup) -> None:
    s = setup
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "epochs": {"type": "choice", "choices": [1]},
        "batch_size": {"type": "choice", "choices": [16]},
    }
    s.jobs["evolve"] = _submit(
        s, {"kind": "evolve", "model_id": s.model["id"], "dataset_id": s.dataset["id"], "population": 2,
            "generations": 2, "seed": 3, "search_space": space},
    )  # fmt: skip
    before = _all_reports(s, s.admin)
    evo = json.loads(before["evolve/technical.json"])
    assert evo["report"] == "evolution" and len(evo["trials"]) == 4 and len(evo["generations"]) == 2
    assert all(t["state"] == "succeeded" and t["fitness"] is not None for t in evo["trials"])
    assert evo["best"]["fitness"] == max(t["fitness"] for t in evo["trials"])
    s.server.stop(signal.SIGTERM)
    s.server.start()
    s.admin = s.server.token()
    after = _all_reports(s, s.admin)
    assert sorted(after) == sorted(before)
    assert [k for k in before if before[k] != after[k]] == []
