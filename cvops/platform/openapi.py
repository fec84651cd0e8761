"""OpenAPI 3.1 generated from the route table and the msgspec schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from cvops import __version__
from cvops.jobs_api import JobRequest
from cvops.ml.spec import ENGINE_NAMES
from cvops.platform.api_events import MAX_SEQ
from cvops.platform.api_reports import REPORT_TYPES
from cvops.platform.auth import ROLES, USERNAME
from cvops.platform.bodies import ErrorBody
from cvops.platform.oip_codec import OipError
from cvops.platform.routes import Route

_PARAM = re.compile(r"\{(\w+)\}")
# What the handlers enforce, stated in the spec (a value outside is a 4xx; the spec never is stricter
# than the server, so every schema-valid request gets past validation).
_ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]*$"}
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "id": _ID,
    "name": {"type": "string", "pattern": USERNAME.pattern},
}
_QUERY_PARAMS: dict[str, dict[str, Any]] = {
    "after": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ, "default": 0},
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "top_k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
    "wait": {"type": "boolean", "default": False},
    "view": {"type": "string", "enum": ["simple", "technical"], "default": "simple"},
    "format": {"type": "string", "enum": list(REPORT_TYPES), "default": "json"},
    "download": {"type": "boolean", "default": False},
    # a signed link's ``<payload>.<mac>`` (cvops.platform.report_links; anything else is a 403). No
    # pattern or length here on purpose: a stated bound makes generators send bound-breaking strings,
    # and a long enough one (non-ASCII, percent-encoded) overflows the HTTP request line before routing.
    "sig": {"type": "string"},
}
_PASSWORD = {"minLength": 8, "maxLength": 256}
_FIELD_RULES: dict[str, dict[str, dict[str, Any]]] = {
    "UserCreate": {
        "username": {"pattern": USERNAME.pattern},
        "password": _PASSWORD,
        "role": {"enum": list(ROLES)},
    },
    "UserPatch": {"password": _PASSWORD, "role": {"enum": list(ROLES)}},
    "DeploymentRequest": {
        "engine": {"enum": ["auto", *ENGINE_NAMES]},
        "workers": {"minimum": 1, "maximum": 64},
        "max_batch": {"minimum": 1, "maximum": 256},
        "max_wait_ms": {"minimum": 0, "maximum": 1000},
    },
    "PresetRequest": {
        "name": {"minLength": 1, "maxLength": 128},
        "num_classes": {"minimum": 1, "maximum": 100_000},
        "image_size": {"minimum": 8, "maximum": 4096},
    },
}
# routes whose handler decodes the body itself (the route table says ``dict``): their real type
_TYPED_BODIES: dict[tuple[str, str], Any] = {("POST", "/api/v1/jobs"): JobRequest}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    429: {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
}
_STATUS_TEXT = {
    400: "Malformed request",
    401: "Missing, invalid or expired token",
    403: "Role not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Too many requests",
    503: "Starting or unavailable",
    504: "Timed out",
}


def _is_struct_type(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, msgspec.Struct) or hasattr(obj, "__args__")


def _constrain(prop: dict[str, Any], rule: dict[str, Any]) -> None:
    """Add ``rule`` to a property schema, or to its non-null branch for ``X | None``."""
    for branch in prop.get("anyOf", [prop]):
        if branch.get("type") != "null":
            branch.update(rule)


def build_openapi(routes: Sequence[Route]) -> dict[str, Any]:
    """The document for ``routes`` (the gateway passes its own table, :data:`~cvops.platform.keys.ROUTE_SPECS`)."""
    types: list[Any] = [ErrorBody, OipError]
    for r in routes:
        for t in (_TYPED_BODIES.get((r.method, r.full_path), r.body), r.response):
            if t is not None and not isinstance(t, str) and t is not dict and _is_struct_type(t):
                types.append(t)
    uniq: list[Any] = []
    for t in types:
        if t not in uniq:
            uniq.append(t)
    refs, components = msgspec.json.schema_components(uniq, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(uniq, refs, strict=True))
    for struct, rules in _FIELD_RULES.items():
        for name, rule in rules.items():
            if struct in components:
                _constrain(components[struct]["properties"][name], rule)

    def content(t: Any) -> dict[str, Any]:
        if t == "text":
            return {"text/plain": {"schema": {"type": "string"}}}
        if t == "html":
            return {"text/html": {"schema": {"type": "string"}}}
        if t == "asset":  # a file of the docs page
            return {m: {"schema": {"type": "string"}} for m in ("text/css", "text/javascript", "image/png")}
        if t == "binary":
            return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
        if t == "image":
            return {
                m: {"schema": {"type": "string", "format": "binary"}}
                for m in ("image/jpeg", "image/png", "video/mp4")
            }
        if t == "multipart-model" or t == "multipart-dataset":
            props: dict[str, Any] = {
                "file": {"type": "string", "format": "binary"},
                "name": {"type": "string"},
            }
            req = ["file"]
            if t == "multipart-model":
                props.update(
                    {
                        "task": {"type": "string", "enum": ["classification", "detection"]},
                        "input_shape": {"type": "string"},
                        "labels": {"type": "string"},
                        "arch": {"type": "string"},
                    }
                )
                req = ["file", "task"]  # name defaults to the file's name
            else:
                props.update(
                    {
                        "task": {"type": "string", "enum": ["classification", "detection"]},
                        "format": {"type": "string", "enum": ["imagefolder", "yolo"]},
                    }
                )
                # task defaults to classification, format to the task's usual one
            return {
                "multipart/form-data": {"schema": {"type": "object", "properties": props, "required": req}}
            }
        if t == "oip-model":  # the protocol's model metadata or Triton's model configuration
            return {"application/json": {"schema": {"type": "object"}}}
        if t == "oip-infer":  # JSON, or JSON then binary tensors (Inference-Header-Content-Length)
            return {
                "application/json": {"schema": {"type": "object"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }
        if t is None or t is dict:
            return {"application/json": {"schema": {"type": "object"}}}
        return {"application/json": {"schema": ref_of[t]}}

    cvops_err = {"application/json": {"schema": ref_of[ErrorBody]}}
    oip_err = {"application/json": {"schema": ref_of[OipError]}}  # the protocol's own error shape
    paths: dict[str, Any] = {}
    for r in routes:
        err = oip_err if r.prefix == "/v2" else cvops_err
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.full_path.lower()).strip('_')}",
            "tags": [r.tag],
        }
        params = [
            {
                "name": n,
                "in": "path",
                "required": True,
                "schema": _PATH_PARAMS.get(n, _ID),
            }
            for n in _PARAM.findall(r.path)
        ]
        params += [
            {
                "name": n,
                "in": "query",
                "required": False,
                "schema": _QUERY_PARAMS.get(
                    n, {"type": kind, **({"minimum": 0, "maximum": MAX_SEQ} if kind == "integer" else {})}
                ),
            }
            for n, kind in r.query.items()
        ]
        if params:
            op["parameters"] = params
        if r.body is not None:
            body = _TYPED_BODIES.get((r.method, r.full_path), r.body)
            op["requestBody"] = {"required": True, "content": content(body)}
        responses: dict[str, Any] = {}
        ok = str(r.status)
        if r.status == 204:
            responses[ok] = {"description": "Done"}
        elif r.status == 101:
            responses[ok] = {"description": "Switching to WebSocket"}
        else:
            responses[ok] = {"description": "OK", "content": content(r.response)}
        if "wait" in r.query:  # ?wait=true: 200 once done, 202 while still pending
            responses["200"] = responses[ok]
        if "format" in r.query and r.response is dict:  # a report in the asked format
            responses[ok]["content"] = {
                ctype.split(";")[0]: {"schema": {"type": "object" if fmt == "json" else "string"}}
                for fmt, ctype in REPORT_TYPES.items()
            }
        codes = [400, 404, 409, 413, 415, 422, 429, 503, 504]
        if not r.public:
            codes = [400, 401, 403, *codes[1:]]
        elif r.path == "/auth/token":
            codes = [400, 401, 413, 415, 422, 429, 503]
        for c in codes:
            responses[str(c)] = {"description": _STATUS_TEXT[c], "content": err}
            if c in _HEADERS:
                responses[str(c)]["headers"] = _HEADERS[c]
        op["responses"] = responses
        op["security"] = [] if r.public else [{"bearer": []}]
        if not r.public:
            op["x-roles"] = sorted(r.roles)
        paths.setdefault(r.full_path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cvops",
            "version": __version__,
            "description": "Computer-vision model optimization and deployment platform",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
