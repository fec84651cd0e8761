"""The generated OpenAPI document: valid OpenAPI 3.1, every route of the table in it with its security
requirement and roles, and the bounds it states are the ones the server enforces."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from cvops.errors import ValidationFailed
from cvops.platform.auth import check_password, check_username
from cvops.platform.openapi import build_openapi
from cvops.platform.table import all_routes


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_openapi(all_routes())


def _schema(spec: dict[str, Any], ref_or_schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    # the validator schemathesis uses; unlike Python's ``re``, its "$" does not match before a final "\n"
    return jsonschema_rs.Draft202012Validator({**ref_or_schema, "components": spec["components"]})


def test_document_is_valid_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator picks the 3.1 validator from the "openapi" field
    loaded = schemathesis.openapi.from_dict(spec)
    assert sum(1 for _ in loaded.get_all_operations()) == len(all_routes())


def test_the_validator_rejects_a_broken_document(spec: dict[str, Any]) -> None:
    broken = copy.deepcopy(spec)
    op = broken["paths"]["/api/v1/me"]["get"]
    op["responses"]["200"] = {"content": {}}  # a response needs a description
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_route_is_in_the_document_with_its_security(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    assert "security" not in spec  # no global default: each operation states its own
    seen = set()
    for route in all_routes():
        op = spec["paths"][route.full_path][route.method.lower()]
        seen.add((route.method.lower(), route.full_path))
        if route.public:
            assert op["security"] == [], route.full_path
            assert "401" not in op["responses"] or route.path == "/auth/token"
        else:
            assert op["security"] == [{"bearer": []}], route.full_path
            assert op["x-roles"] == sorted(route.roles)
            assert {"401", "403"} <= set(op["responses"])
            assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", route.path)), route.full_path
        assert str(route.status) in op["responses"]
    documented = {(m, p) for p, item in spec["paths"].items() for m in item}
    assert documented == seen  # nothing in the document that is not in the table


def _query(spec: dict[str, Any], path: str, name: str, method: str = "get") -> dict[str, Any]:
    op = spec["paths"][path][method]
    (schema,) = [p["schema"] for p in op["parameters"] if p["name"] == name and p["in"] == "query"]
    return schema


def test_query_bounds_are_the_servers(spec: dict[str, Any]) -> None:
    def bounds(schema: dict[str, Any]) -> tuple[int, int]:
        return schema["minimum"], schema["maximum"]

    assert bounds(_query(spec, "/api/v1/events", "limit")) == (1, 1000)
    assert bounds(_query(spec, "/api/v1/events", "after")) == (0, 2**62)
    assert bounds(_query(spec, "/api/v1/deployments/{id}/predict", "top_k", "post")) == (1, 1000)
    report = "/api/v1/jobs/{id}/report"
    assert _query(spec, report, "view")["enum"] == ["simple", "technical"]
    assert _query(spec, report, "format")["enum"] == ["json", "md", "html"]
    assert set(spec["paths"][report]["get"]["responses"]["200"]["content"]) == {
        "application/json",
        "text/markdown",
        "text/html",
    }
    assert _query(spec, "/api/v1/models", "wait", "post")["type"] == "boolean"
    # ?wait=true answers 200 once done, 202 while pending
    assert {"200", "202"} <= set(spec["paths"]["/api/v1/models/presets"]["post"]["responses"])


@pytest.mark.parametrize(
    ("name", "ok"),
    [("eve", True), ("a.b-c_9", True), ("ab\n", False), ("Eve", False), ("e", False), ("-eve", False)],
)
def test_username_rule_matches_the_server(spec: dict[str, Any], name: str, ok: bool) -> None:
    body = {"username": name, "password": "long-enough", "role": "viewer"}
    assert _schema(spec, {"$ref": "#/components/schemas/UserCreate"}).is_valid(body) is ok
    if ok:
        check_username(name)
    else:
        with pytest.raises(ValidationFailed):
            check_username(name)


@pytest.mark.parametrize(
    ("password", "ok"), [("x" * 7, False), ("x" * 8, True), ("x" * 256, True), ("x" * 257, False)]
)
def test_password_rule_matches_the_server(spec: dict[str, Any], password: str, ok: bool) -> None:
    patch = _schema(spec, {"$ref": "#/components/schemas/UserPatch"})
    assert patch.is_valid({"password": password}) is ok
    assert patch.is_valid({"password": None, "role": None})
    assert not patch.is_valid({"role": "root"})
    if ok:
        check_password(password)
    else:
        with pytest.raises(ValidationFailed):
            check_password(password)


def test_job_body_is_the_typed_union(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "kind"
    v = _schema(spec, body)
    assert v.is_valid({"kind": "benchmark", "model_id": "abc", "batch_sizes": [1, 8]})
    assert not v.is_valid({"kind": "benchmark", "model_id": "abc", "batch_sizes": [0]})
    assert not v.is_valid({"kind": "nope", "model_id": "abc"})
    evolve = {"kind": "evolve", "model_id": "abc", "dataset_id": "d"}
    assert v.is_valid(
        {**evolve, "objectives": ["accuracy", "latency"], "prune": False, "wall_clock_s": 30, "patience": 2}
    )
    assert not v.is_valid({**evolve, "objectives": ["speed"]})
    assert not v.is_valid({**evolve, "wall_clock_s": 0})
    assert not v.is_valid({**evolve, "patience": 0})
    assert not v.is_valid({})


def test_deployment_bounds(spec: dict[str, Any]) -> None:
    v = _schema(spec, {"$ref": "#/components/schemas/DeploymentRequest"})
    assert v.is_valid({"model_id": "m", "workers": 64, "max_batch": 256, "max_wait_ms": 0})
    for bad in ({"workers": 0}, {"workers": 65}, {"max_batch": 0}, {"max_wait_ms": 1001}, {"engine": "x"}):
        assert not v.is_valid({"model_id": "m", **bad}), bad


def test_websocket_route_declares_no_plain_200(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/api/v1/events/ws"]["get"]["responses"]
    assert "101" in responses and "200" not in responses and "400" in responses


def test_report_routes_and_signed_links_are_documented(spec: dict[str, Any]) -> None:
    from cvops.platform.middleware import SIGNED_LINK_ROUTES

    for path in ("/api/v1/jobs/{id}/report", "/api/v1/models/{id}/card"):
        op = spec["paths"][path]["get"]
        assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == {
            "view",
            "format",
            "download",
            "sig",
        }
        assert _query(spec, path, "download")["type"] == "boolean"
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/markdown", "text/html"}
        assert {"401", "403", "404"} <= set(op["responses"])
        assert path in SIGNED_LINK_ROUTES
    for path in ("/api/v1/jobs/{id}/report-link", "/api/v1/models/{id}/card-link"):
        op = spec["paths"][path]["post"]
        assert op["x-roles"] == ["admin", "engineer"]
        ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        link = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert set(link["required"]) == {"url", "path", "expires_at", "expires_in_s"}
    # a real link (the longest: a 128-character id, a 32-character user) fits the stated bounds
    from cvops.platform.report_links import MAX_SIG_CHARS, LinkClaims, sign

    sig = sign(
        "x" * 64, LinkClaims(path=f"/api/v1/models/{'a' * 128}/card", user="u" * 32, ver=10**6, exp=2**40)
    )
    assert _query(spec, "/api/v1/models/{id}/card", "sig") == {"type": "string"}
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", sig) and len(sig) <= MAX_SIG_CHARS
    # only those two routes open with a link
    assert {r.full_path for r in all_routes() if r.full_path in SIGNED_LINK_ROUTES} == SIGNED_LINK_ROUTES
