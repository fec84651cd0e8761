"""Malformed bodies on every JSON POST/PATCH route: 400 for broken JSON, 415 for a wrong type,
422 naming the field for wrong shapes, 413 for an oversize body. Never a 500."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Live
from tests.e2e.server import request

JSON_ROUTES = [
    ("POST", "/api/v1/auth/token"),
    ("POST", "/api/v1/users"),
    ("PATCH", "/api/v1/users/eve"),
    ("POST", "/api/v1/models/presets"),
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/deployments"),
]


@pytest.mark.parametrize("method,path", JSON_ROUTES)
def test_malformed_json_is_400(live: Live, method: str, path: str) -> None:
    status, body = request(
        live.url, method, path, raw=b'{"a": ', token=live.admin, headers={"Content-Type": "application/json"}
    )
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"


@pytest.mark.parametrize("method,path", JSON_ROUTES)
def test_wrong_shape_is_422(live: Live, method: str, path: str) -> None:
    status, body = request(
        live.url,
        method,
        path,
        raw=b'{"username": 5, "preset": [], "kind": "x", "model_id": 1, "role": 3}',
        token=live.admin,
        headers={"Content-Type": "application/json"},
    )
    assert status == 422, body
    assert body["error"]["code"] == "validation_failed"


@pytest.mark.parametrize("method,path", JSON_ROUTES)
def test_wrong_content_type_is_415(live: Live, method: str, path: str) -> None:
    status, body = request(
        live.url,
        method,
        path,
        raw=b"a=b",
        token=live.admin,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415, body


def test_oversize_json_is_413(live: Live) -> None:
    raw = b'{"username": "' + b"x" * (2 * 1024 * 1024) + b'", "password": "y"}'
    status, body = request(
        live.url,
        "POST",
        "/api/v1/users",
        raw=raw,
        token=live.admin,
        headers={"Content-Type": "application/json"},
    )
    assert status == 413, body


def test_unknown_route_and_method(live: Live) -> None:
    status, body = request(live.url, "GET", "/api/v1/nope", token=live.admin)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = request(live.url, "PUT", "/api/v1/users", token=live.admin)
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


def test_bad_query_parameters(live: Live) -> None:
    for q in ("after=-1", "after=abc", "limit=0", f"after={2**70}"):
        status, body = request(live.url, "GET", f"/api/v1/events?{q}", token=live.admin)
        assert status == 400, (q, body)
