"""GET /docs: interactive API docs whose every script, stylesheet and icon is served by the gateway
itself (no CDN, no other host), each with its content type; the page points at /api/v1/openapi.json."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from cvops.config import Settings
from cvops.platform.app import make_app


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            if a.get("src"):
                self.urls.append((tag, str(a["src"])))
            else:
                self._in_script = True
        if tag == "link" and a.get("href"):
            self.urls.append((f"link:{a.get('rel')}", str(a["href"])))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


async def _client(tmp_path: Path) -> TestClient:  # type: ignore[type-arg]
    app = make_app(Settings(data_dir=str(tmp_path)))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_docs_page_and_all_its_assets_are_local(tmp_path: Path) -> None:
    client = await _client(tmp_path)
    try:
        resp = await client.get("/docs")  # no token: anyone
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
        # no URL to another host anywhere in the page
        assert not re.search(r"(https?:)?//[A-Za-z0-9]", page.replace("://127.0.0.1", "")), page
        refs = _Refs()
        refs.feed(page)
        assert refs.inline_scripts == 0
        scripts = [u for t, u in refs.urls if t == "script"]
        styles = [u for t, u in refs.urls if t == "link:stylesheet"]
        assert scripts and styles, refs.urls
        want = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        bodies: dict[str, str] = {}
        for _, url in refs.urls:
            assert url.startswith("/") and not url.startswith("//"), url
            r = await client.get(url)
            assert r.status == 200, url
            assert r.content_type == want[Path(url).suffix], (url, r.content_type)
            data = await r.read()
            assert len(data) > 0, url
            if url.endswith((".js", ".css")):
                bodies[url] = data.decode()
        assert any("SwaggerUIBundle" in b for b in bodies.values())
        # the start-up script loads this server's spec, with the validator (another host) off
        init = next(b for u, b in bodies.items() if "SwaggerUIBundle({" in b)
        assert '"/api/v1/openapi.json"' in init and "validatorUrl: null" in init
        spec = await client.get("/api/v1/openapi.json")
        assert spec.status == 200 and (await spec.json())["openapi"].startswith("3.1")
    finally:
        await client.close()


async def test_unknown_or_escaping_asset_names_are_404(tmp_path: Path) -> None:
    client = await _client(tmp_path)
    try:
        for name in ("nope.js", "index.html", "..%2F..%2Fcore.py", "swagger-initializer.js", "LICENSE"):
            r = await client.get(f"/docs/assets/{name}")
            assert r.status == 404, name
            assert (await r.json())["error"]["code"] == "not_found"
    finally:
        await client.close()
