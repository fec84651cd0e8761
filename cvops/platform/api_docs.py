"""``GET /docs``: interactive API docs (Swagger UI) for ``/api/v1/openapi.json``, served locally.

The page and every asset it loads come from this server: swagger-ui's dist files ship in the
``swagger-ui-py`` wheel (a locked dependency), nothing is fetched from a CDN, and the page has no
inline script (the start-up code is ``/docs/assets/cvops-docs.js``), so it also works offline and under
a strict Content-Security-Policy.  The validator badge is off: it would send the spec to another host.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from aiohttp import web

from cvops.errors import NotFound, Unavailable
from cvops.platform.routes import ANYONE, Route

OPENAPI_URL = "/api/v1/openapi.json"
ASSETS = "/docs/assets"

# the files the page uses: name -> content type (anything else under swagger-ui's folder is a 404)
_DIST: dict[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_INIT = "cvops-docs.js"
_INIT_JS = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: "{OPENAPI_URL}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    persistAuthorization: false,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout"
  }});
}});
"""
_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>cvops API</title>
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{ASSETS}/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <noscript>The API docs need JavaScript; the OpenAPI document itself is at
    <a href="{OPENAPI_URL}">{OPENAPI_URL}</a>.</noscript>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/swagger-ui-standalone-preset.js"></script>
  <script src="{ASSETS}/{_INIT}"></script>
</body>
</html>
"""
_CACHE = {"Cache-Control": "public, max-age=86400"}


@cache
def dist_dir() -> Path | None:
    """swagger-ui's dist folder inside the installed ``swagger-ui-py`` (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


async def docs(request: web.Request) -> web.StreamResponse:
    return web.Response(text=_PAGE, content_type="text/html", charset="utf-8")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name == _INIT:
        return web.Response(text=_INIT_JS, content_type="text/javascript", charset="utf-8", headers=_CACHE)
    ctype = _DIST.get(name)
    if ctype is None:
        raise NotFound(f"no docs asset {name!r}", {"name": name})
    folder = dist_dir()
    if folder is None:
        raise Unavailable("swagger-ui's files are not installed (the swagger-ui-py package)")
    # a fixed allow-list of names, so no path from the request ever reaches the filesystem
    return web.FileResponse(folder / name, headers={"Content-Type": ctype, **_CACHE})


ROUTES = [
    Route("GET", "/docs", docs, ANYONE, "Interactive API docs (Swagger UI)", response="html", prefix=""),
    Route(
        "GET",
        "/docs/assets/{name}",
        asset,
        ANYONE,
        "A file of the API docs page (served locally)",
        response="asset",
        prefix="",
    ),
]
