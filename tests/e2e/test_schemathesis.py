"""schemathesis against ``/api/v1/openapi.json`` of a real ``cvops serve``: every generated request
(positive and negative, examples + coverage + fuzzing phases) must get no 5xx and a response that the
spec describes (status code, content type, body schema, declared headers).

The server gets one ready ``tiny_cnn`` model, one deployment of it and one finished benchmark job, and
the generator draws the ``{id}`` path parameter from their ids half of the time, so the item routes
answer 200 (and the report its three formats), not only 404.

Kept away from (and why):

* ``POST /models/presets``, ``POST /jobs``, ``POST /deployments``: a body the spec calls valid starts a
  model build, a benchmark or inference workers. Only bodies the spec calls *invalid* are sent
  there, plus valid ones that cannot start anything (an unknown preset, a model id that does not
  exist), so every request there is expected to be a 4xx.
* ``POST /models``, ``POST /datasets`` (multipart) and ``POST /deployments/{id}/predict``: few examples
  (random bytes are never a model, a zip of images or a decodable image, but each one is written and
  hashed first).
* deleting or editing the fixtures themselves (``DELETE`` of the model or the deployment, ``PATCH`` /
  ``DELETE`` of the admin and viewer accounts: a password change revokes the token in use).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from jsonschema import Draft202012Validator
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.server import Server, request

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 25  # per operation, fuzzing phase; the coverage phase adds its own boundary cases
MIN_REQUESTS = 500
API = "/api/v1"
# a valid body here would start real work: only invalid ones (or ones naming nothing real) are sent
GUARDED = {("POST", f"{API}/models/presets"), ("POST", f"{API}/jobs"), ("POST", f"{API}/deployments")}
FEW = [f"{API}/models", f"{API}/datasets", f"{API}/deployments/{{id}}/predict"]
VIEWER = ("vic", "vic-password-1")


@dataclass
class Fuzz:
    server: Server
    admin: str
    viewer: str
    spec: dict[str, Any]
    model_id: str
    deployment_id: str
    job_id: str
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    guarded: Counter[int] = field(default_factory=Counter)  # statuses of the GUARDED operations

    @property
    def url(self) -> str:
        return self.server.url

    def body_validator(self, method: str, path: str) -> Draft202012Validator:
        body = self.spec["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]
        return Draft202012Validator({**body["schema"], "components": self.spec["components"]})


def _call(fuzz: Fuzz, method: str, path: str, body: Any, expect: int) -> dict[str, Any]:
    status, out = request(fuzz.url, method, path, body, fuzz.admin)
    assert status == expect, (method, path, status, out)
    assert isinstance(out, dict)
    return out


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    data: Path = tmp_path_factory.mktemp("schemathesis") / "data"
    server = Server(data).start()
    try:
        admin = server.token()
        status, body = request(
            server.url,
            "POST",
            f"{API}/users",
            {"username": VIEWER[0], "password": VIEWER[1], "role": "viewer"},
            admin,
        )
        assert status == 201, body
        viewer = server.token(*VIEWER)
        status, spec = request(server.url, "GET", f"{API}/openapi.json")
        assert status == 200
        fz = Fuzz(server, admin, viewer, spec, "", "", "")
        model = _call(
            fz, "POST", f"{API}/models/presets?wait=true", {"preset": "tiny_cnn", "num_classes": 3}, 200
        )
        assert model["status"] == "ready", model
        fz.model_id = model["id"]
        dep = _call(
            fz,
            "POST",
            f"{API}/deployments",
            {"model_id": fz.model_id, "engine": "onnxruntime-cpu", "workers": 1},
            201,
        )
        fz.deployment_id = dep["id"]
        job_body = {
            "kind": "benchmark",
            "model_id": fz.model_id,
            "engines": ["onnxruntime-cpu"],
            "batch_sizes": [1],
            "warmup": 1,
            "iterations": 3,
        }
        fz.job_id = _call(fz, "POST", f"{API}/jobs", job_body, 202)["id"]
        end = time.monotonic() + 180
        while True:
            job = _call(fz, "GET", f"{API}/jobs/{fz.job_id}", None, 200)
            if job["status"] not in ("queued", "running"):
                break
            assert time.monotonic() < end, job
            time.sleep(1)
        assert job["status"] == "succeeded", job
        yield fz
        if fz.sent:
            log.info(
                "schemathesis: %d requests, statuses %s, guarded routes %s, skipped %s",
                sum(fz.sent.values()),
                dict(sorted(fz.statuses.items())),
                dict(sorted(fz.guarded.items())),
                dict(fz.skipped),
            )
    finally:
        server.stop()


def _config(fuzz: Fuzz, token: str, max_examples: int) -> schemathesis.Config:
    few = max(2, max_examples // 5)
    return schemathesis.Config.from_dict(
        {
            "base-url": fuzz.url,
            "headers": {"Authorization": f"Bearer {token}"},
            "request-timeout": 60,
            "seed": 20261201,
            "generation": {"mode": "all", "max-examples": max_examples},
            "phases": {"stateful": {"enabled": False}},
            "dictionaries": {"ids": {"values": [fuzz.model_id, fuzz.deployment_id, fuzz.job_id]}},
            "parameters": {"path.id": {"dictionary": "ids", "probability": 0.5}},
            "operations": [
                {"include-path": path, "include-method": "POST", "generation": {"max-examples": few}}
                for path in FEW
            ],
        }
    )


@pytest.fixture(scope="module")
def admin_schema(fuzz: Fuzz) -> Any:
    return schemathesis.openapi.from_url(
        f"{fuzz.url}{API}/openapi.json", config=_config(fuzz, fuzz.admin, MAX_EXAMPLES)
    )


@pytest.fixture(scope="module")
def viewer_schema(fuzz: Fuzz) -> Any:
    return schemathesis.openapi.from_url(
        f"{fuzz.url}{API}/openapi.json", config=_config(fuzz, fuzz.viewer, 4)
    )


def _skip_reason(case: Case, fuzz: Fuzz) -> str | None:
    """Why ``case`` is not sent: it would destroy a fixture or start heavy work (see the module doc)."""
    method, path = case.method.upper(), case.operation.path
    params = case.path_parameters or {}
    if method == "DELETE" and params.get("id") in (fuzz.model_id, fuzz.deployment_id):
        return "fixture delete"
    if path.endswith("/users/{name}") and params.get("name") in ("admin", VIEWER[0]):
        return "fixture account"
    if (method, path) in GUARDED and isinstance(case.body, dict):
        if fuzz.body_validator(method, path).is_valid(case.body):
            from cvops.ml.presets import SPECS

            if case.body.get("preset") in SPECS or case.body.get("model_id") == fuzz.model_id:
                return "valid body would start work"
    return None


def _run(case: Case, fuzz: Fuzz) -> None:
    reason = _skip_reason(case, fuzz)
    if reason is not None:
        fuzz.skipped[reason] += 1
        return
    fuzz.sent[(case.method.upper(), case.operation.path)] += 1
    response = case.call(timeout=60)
    fuzz.statuses[response.status_code] += 1
    if (case.method.upper(), case.operation.path) in GUARDED:
        fuzz.guarded[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


admin_lazy = schemathesis.pytest.from_fixture("admin_schema")
viewer_lazy = schemathesis.pytest.from_fixture("viewer_schema")


@admin_lazy.parametrize()
def test_generated_requests_as_admin(case: Case, fuzz: Fuzz) -> None:
    _run(case, fuzz)


@viewer_lazy.parametrize()
def test_generated_requests_as_viewer(case: Case, fuzz: Fuzz) -> None:
    _run(case, fuzz)


def test_enough_requests_and_no_server_errors(fuzz: Fuzz) -> None:
    if not fuzz.sent:
        pytest.skip("run with the generated tests above")
    total = sum(fuzz.sent.values())
    assert total >= MIN_REQUESTS, (total, fuzz.sent)
    assert not [s for s in fuzz.statuses if s >= 500], fuzz.statuses
    # nothing heavy was started: every request to a guarded route was refused
    assert fuzz.guarded and all(400 <= s < 500 for s in fuzz.guarded), fuzz.guarded
    # the fixtures make the item routes reachable: some generated requests got a 2xx there
    assert sum(n for s, n in fuzz.statuses.items() if 200 <= s < 300) > 20, fuzz.statuses
    assert fuzz.sent[("GET", f"{API}/jobs/{{id}}/report")] > 0
