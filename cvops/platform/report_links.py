"""Short-lived signed links to a report, so a browser can open one without a Bearer header and no
long-lived token ever goes into a URL.

A link's ``sig`` is ``<payload>.<mac>`` (both base64url): the payload names the exact request path, the
user and their ``token_version`` and an expiry; the MAC is HMAC-SHA256 under a key derived from the
server's JWT secret (so a link is never a valid bearer token, nor a bearer token a link).  A link dies
when it expires, when the user's role, password or status changes (the version moves on), and it opens
only the path it was made for.  Pure but for the clock, which callers pass in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time

import msgspec

from cvops.errors import Forbidden
from cvops.platform.auth import Authenticator, Principal

LINK_TTL_S = 300  # five minutes: long enough to click, short enough not to matter in a history
_CONTEXT = b"cvops signed report link v1"
MAX_SIG_CHARS = 1024  # a real one is about 350 (the OpenAPI document states the same bound)


class LinkClaims(msgspec.Struct, frozen=True):
    path: str
    user: str
    ver: int
    exp: int


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _CONTEXT, hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, claims: LinkClaims) -> str:
    payload = _b64(json.dumps(msgspec.to_builtins(claims), sort_keys=True, separators=(",", ":")).encode())
    mac = hmac.new(_key(secret), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def verify(secret: str, sig: str, path: str, now: float) -> LinkClaims:
    """The claims of a genuine, unexpired link for ``path``; Forbidden with the reason otherwise."""
    renew = "ask for a new link (POST .../report-link or .../card-link)"
    payload, _, mac = sig.partition(".")
    try:
        if len(sig) > MAX_SIG_CHARS:
            raise ValueError("too long")
        want = hmac.new(_key(secret), payload.encode(), hashlib.sha256).digest()
        if not mac or not hmac.compare_digest(_unb64(mac), want):
            raise ValueError("bad signature")
        claims = msgspec.json.decode(_unb64(payload), type=LinkClaims)
    except (ValueError, binascii.Error, msgspec.DecodeError) as exc:
        raise Forbidden(
            f"this report link is not valid (tampered or not made by this server); {renew}",
            {"reason": "invalid_link"},
        ) from exc
    if claims.path != path:
        raise Forbidden(f"this link opens another report; {renew}", {"reason": "wrong_resource"})
    if now >= claims.exp:
        raise Forbidden(
            f"this report link expired {int(now - claims.exp)} s ago (links last {LINK_TTL_S} s); {renew}",
            {"reason": "expired_link", "expired_at": claims.exp},
        )
    return claims


def issue(auth: Authenticator, who: Principal, path: str, now: float | None = None) -> tuple[str, int]:
    """A ``sig`` for ``path`` in ``who``'s name, and its expiry (epoch seconds)."""
    now = time.time() if now is None else now
    user = auth.state.users.get(who.username)
    exp = int(now) + LINK_TTL_S
    claims = LinkClaims(path=path, user=who.username, ver=user.token_version if user else -1, exp=exp)
    return sign(auth.secret, claims), exp


def principal_from_link(auth: Authenticator, sig: str, path: str, now: float | None = None) -> Principal:
    """The user a valid link speaks for, as they are now (a changed role, password or status kills it)."""
    claims = verify(auth.secret, sig, path, time.time() if now is None else now)
    user = auth.state.users.get(claims.user)
    if user is None or user.disabled or user.token_version != claims.ver:
        raise Forbidden(
            "this report link was revoked (its user was changed, disabled or deleted)",
            {"reason": "revoked_link"},
        )
    return Principal(user.username, user.role)
