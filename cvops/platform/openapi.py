"""OpenAPI 3.1 generated from the route table and the msgspec schemas."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from cvops import __version__
from cvops.platform.bodies import ErrorBody
from cvops.platform.routes import Route, all_routes

_PARAM = re.compile(r"\{(\w+)\}")
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


def build_openapi(routes: list[Route] | None = None) -> dict[str, Any]:
    routes = all_routes() if routes is None else routes
    types: list[Any] = [ErrorBody]
    for r in routes:
        for t in (r.body, r.response):
            if t is not None and not isinstance(t, str) and t is not dict and _is_struct_type(t):
                types.append(t)
    uniq: list[Any] = []
    for t in types:
        if t not in uniq:
            uniq.append(t)
    refs, components = msgspec.json.schema_components(uniq, ref_template="#/components/schemas/{name}")
    ref_of = dict(zip(uniq, refs, strict=True))

    def content(t: Any) -> dict[str, Any]:
        if t == "text":
            return {"text/plain": {"schema": {"type": "string"}}}
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
                req = ["file", "name", "task"]
            else:
                props.update(
                    {
                        "task": {"type": "string", "enum": ["classification", "detection"]},
                        "format": {"type": "string", "enum": ["imagefolder", "yolo"]},
                    }
                )
                req = ["file", "task"]
            return {
                "multipart/form-data": {"schema": {"type": "object", "properties": props, "required": req}}
            }
        if t is None or t is dict:
            return {"application/json": {"schema": {"type": "object"}}}
        return {"application/json": {"schema": ref_of[t]}}

    err = {"application/json": {"schema": ref_of[ErrorBody]}}
    paths: dict[str, Any] = {}
    for r in routes:
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
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
            }
            for n in _PARAM.findall(r.path)
        ]
        params += [
            {
                "name": n,
                "in": "query",
                "required": False,
                "schema": {"type": kind, **({"minimum": 0, "maximum": 2**62} if kind == "integer" else {})},
            }
            for n, kind in r.query.items()
        ]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": content(r.body)}
        responses: dict[str, Any] = {}
        ok = str(r.status)
        if r.status == 204:
            responses[ok] = {"description": "Done"}
        elif r.status == 101:
            responses[ok] = {"description": "Switching to WebSocket"}
        else:
            responses[ok] = {"description": "OK", "content": content(r.response)}
        codes = [400, 404, 409, 413, 415, 422, 429, 503, 504]
        if not r.public:
            codes = [400, 401, 403, *codes[1:]]
        elif r.path == "/auth/token":
            codes = [400, 401, 413, 415, 422, 429, 503]
        for c in codes:
            responses[str(c)] = {"description": _STATUS_TEXT[c], "content": err}
        if r.status == 101:
            responses["200"] = {"description": "Not a websocket upgrade", "content": err}
        op["responses"] = responses
        if not r.public:
            op["security"] = [{"bearer": []}]
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
