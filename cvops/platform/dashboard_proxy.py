"""The Ray dashboard at the URL ``cvops serve`` prints, with Ray's token auth left on.

Ray 2.60 protects its GCS, raylets and dashboard with a token (``~/.ray/auth_token``); its dashboard
then answers 401 to a browser that has not pasted the token.  Turning auth off would open the GCS and
raylet ports, which listen on every interface, to anyone who can reach them.  Instead the embedded
Ray's dashboard listens on a private loopback port, and this small proxy, on the printed port, adds
the token to each request it forwards.  It binds the dashboard host cvops was given (loopback by
default), so it grants nothing that the machine's own users could not already read from the token
file; everything else in Ray keeps asking for the token.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

# hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy sets itself
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)
_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("dashboard_proxy_client", aiohttp.ClientSession)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_auth_headers() -> dict[str, str]:
    """The header that carries Ray's token, or none when token auth is off."""
    try:
        from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    except ImportError:  # pragma: no cover - a Ray without token auth
        return {}
    return dict(get_auth_headers_if_auth_enabled({}))


def make_proxy_app(target: str, auth_headers: Mapping[str, str]) -> web.Application:
    """An app that forwards every request to ``target`` (``http://127.0.0.1:PORT``) with ``auth_headers``."""
    target = target.rstrip("/")
    extra = dict(auth_headers)

    async def client_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        # no decompression: the bytes and their Content-Encoding go back to the browser as they came
        app[_CLIENT] = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        yield
        await app[_CLIENT].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        headers.update(extra)
        body = request.content if request.body_exists else None
        try:
            async with request.app[_CLIENT].request(
                request.method,
                target + request.rel_url.path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as upstream:
                out = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in _DROP},
                )
                await out.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            return web.Response(status=502, text=f"the Ray dashboard cannot be reached: {exc}\n")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.cleanup_ctx.append(client_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app
