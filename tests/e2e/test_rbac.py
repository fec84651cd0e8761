"""Every route is covered by the role table, and the table is enforced for every role."""

from __future__ import annotations

import re
import time

import jwt
import pytest

from cvops.config import load_settings
from cvops.platform.app import make_app
from cvops.platform.keys import ROUTE_SPECS
from cvops.platform.table import all_routes
from tests.e2e.conftest import Live
from tests.e2e.server import request

ROLES = ("viewer", "engineer", "admin")


def _concrete(path: str) -> str:
    return re.sub(r"\{\w+\}", "0123456789abcdef", path)


def test_every_registered_route_has_a_rule() -> None:
    app = make_app(load_settings({}))
    specs = app[ROUTE_SPECS]
    for route in app.router.routes():
        assert route in specs, f"route without an RBAC rule: {route.method} {route.resource}"
    for spec in specs.values():
        assert spec.public or spec.roles <= {"admin", "engineer", "viewer"}


@pytest.mark.parametrize(
    "spec",
    [s for s in all_routes() if not s.public and s.path != "/events/ws"],
    ids=lambda s: f"{s.method} {s.full_path}",
)
def test_route_enforces_roles(live: Live, spec) -> None:  # type: ignore[no-untyped-def]
    path = _concrete(spec.full_path)
    status, body = request(
        live.url, spec.method, path, raw=b"{}", headers={"Content-Type": "application/json"}
    )
    assert status == 401, (status, body)
    if spec.prefix == "/v2":  # the Open Inference Protocol's own error shape
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    else:
        assert set(body["error"]) == {"code", "message", "details"}
    for role in ROLES:
        status, body = request(
            live.url,
            spec.method,
            path,
            raw=b"{}",
            token=live.token_for(role),
            headers={"Content-Type": "application/json"},
        )
        if role in spec.roles:
            assert status not in (401, 403), (role, status, body)
            assert status < 500, (role, status, body)
        else:
            assert status == 403, (role, status, body)
            if spec.prefix == "/v2":
                assert isinstance(body["error"], str) and body["error"]
            else:
                assert body["error"]["code"] == "forbidden"


def test_public_routes_need_no_token(live: Live) -> None:
    for path in (
        "/health",
        "/ready",
        "/metrics",
        "/api/v1/openapi.json",
        "/v2/health/live",
        "/v2/health/ready",
    ):
        assert request(live.url, "GET", path)[0] == 200


def _forged(claims: dict, key: str = "not-the-secret", alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_token_forgery_is_refused(live: Live) -> None:
    now = int(time.time())
    good = jwt.decode(live.admin, options={"verify_signature": False})
    cases = {
        "wrong key": _forged({**good}),
        "alg none": jwt.encode({**good}, None, algorithm="none")
        if "none" in jwt.algorithms.get_default_algorithms()
        else ".".join(
            [
                jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT"}').decode(),
                jwt.utils.base64url_encode(jwt.api_jws.json.dumps(good).encode()).decode(),
                "",
            ]
        ),
        "garbage": "not.a.jwt",
    }
    # role tampering: change the payload, keep the signature
    head, _payload, sig = live.viewer.split(".")
    viewer_claims = jwt.decode(live.viewer, options={"verify_signature": False})
    tampered = jwt.utils.base64url_encode(
        jwt.api_jws.json.dumps({**viewer_claims, "role": "admin"}).encode()
    ).decode()
    cases["role tampered"] = f"{head}.{tampered}.{sig}"
    for name, token in cases.items():
        status, body = request(live.url, "GET", "/api/v1/users", token=token)
        assert status == 401, (name, status, body)
    status, _ = request(live.url, "GET", "/api/v1/me", headers={"Authorization": "Basic YWRtaW46eA=="})
    assert status == 401
    # an expired token signed with the real key: the server says so
    assert now > good["iat"] - 10


def test_expired_token(live: Live) -> None:
    secret = (live.server.data_dir / "jwt_secret").read_text().strip()
    claims = jwt.decode(live.admin, options={"verify_signature": False})
    expired = jwt.encode(
        {**claims, "iat": claims["iat"] - 7200, "exp": int(time.time()) - 60}, secret, algorithm="HS256"
    )
    status, body = request(live.url, "GET", "/api/v1/me", token=expired)
    assert status == 401 and "expired" in body["error"]["message"]
    hs512 = jwt.encode({**claims}, secret, algorithm="HS512")
    assert request(live.url, "GET", "/api/v1/me", token=hs512)[0] == 401


def test_role_change_and_disable_revoke_tokens(live: Live) -> None:
    admin = live.admin
    assert (
        request(
            live.url,
            "POST",
            "/api/v1/users",
            {"username": "tmp-user", "password": "tmp-password", "role": "engineer"},
            admin,
        )[0]
        == 201
    )
    tok = live.server.token("tmp-user", "tmp-password")
    assert request(live.url, "GET", "/api/v1/models", token=tok)[0] == 200
    assert request(live.url, "PATCH", "/api/v1/users/tmp-user", {"role": "viewer"}, admin)[0] == 200
    assert request(live.url, "GET", "/api/v1/me", token=tok)[0] == 401  # old token dies with the role
    tok = live.server.token("tmp-user", "tmp-password")
    status, me = request(live.url, "GET", "/api/v1/me", token=tok)
    assert status == 200 and me["role"] == "viewer"
    assert request(live.url, "GET", "/api/v1/models", token=tok)[0] == 403
    assert request(live.url, "PATCH", "/api/v1/users/tmp-user", {"disabled": True}, admin)[0] == 200
    assert request(live.url, "GET", "/api/v1/me", token=tok)[0] == 401
    assert (
        request(live.url, "POST", "/api/v1/auth/token", {"username": "tmp-user", "password": "tmp-password"})[
            0
        ]
        == 401
    )
    assert request(live.url, "DELETE", "/api/v1/users/tmp-user", token=admin)[0] == 204
    assert request(live.url, "GET", "/api/v1/users/tmp-user", token=admin)[0] in (404, 405)


def test_usernames_unique_and_last_admin_protected(live: Live) -> None:
    status, body = request(
        live.url,
        "POST",
        "/api/v1/users",
        {"username": "eve", "password": "whatever-pw", "role": "viewer"},
        live.admin,
    )
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = request(live.url, "PATCH", "/api/v1/users/admin", {"role": "viewer"}, live.admin)
    assert status == 409
    status, body = request(
        live.url, "POST", "/api/v1/users", {"username": "../x", "password": "whatever-pw"}, live.admin
    )
    assert status == 422 and body["error"]["details"]["field"] == "username"


def test_login_throttle(live: Live) -> None:
    for _ in range(5):
        assert (
            request(live.url, "POST", "/api/v1/auth/token", {"username": "vic", "password": "wrong"})[0]
            == 401
        )
    status, body = request(live.url, "POST", "/api/v1/auth/token", {"username": "vic", "password": "wrong"})
    assert status == 429 and body["error"]["details"]["retry_after"] >= 1
