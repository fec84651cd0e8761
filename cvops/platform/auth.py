"""Users and auth: argon2 passwords, HS256 JWTs, login throttling, the users projection.

Users are event-sourced (UserCreated, RoleChanged, PasswordChanged, UserDisabled, UserEnabled,
UserDeleted in stream ``user-<name>``).  The role is always re-checked against the current state, and
a token carries the user's ``token_version`` (``ver``) so a role change, a password change or a
disable kills every older token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
import uuid
from collections import OrderedDict, deque
from pathlib import Path

import jwt
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cvops.config import Settings
from cvops.errors import (
    ConcurrencyError,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from cvops.events.projection import Projection
from cvops.events.projections import UserRecord, UsersState, apply_users
from cvops.events.schema import (
    Event,
    PasswordChanged,
    RoleChanged,
    UserCreated,
    UserDeleted,
    UserDisabled,
    UserEnabled,
)
from cvops.events.store import Store

log = logging.getLogger(__name__)

ROLES = ("admin", "engineer", "viewer")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
ALGORITHM = "HS256"
_HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)


class Principal(msgspec.Struct, frozen=True):
    username: str
    role: str


def check_username(name: str) -> None:
    if not USERNAME.fullmatch(name):  # not match: "$" would let a trailing "\n" through
        raise ValidationFailed(
            "username must be 2-32 characters of a-z, 0-9, '_', '.', '-' and start with a letter or digit",
            {"field": "username"},
        )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {', '.join(ROLES)}", {"field": "role"})


def check_password(password: str) -> None:
    if len(password) < 8 or len(password) > 256:
        raise ValidationFailed("password must be 8 to 256 characters", {"field": "password"})


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def load_or_create_secret(settings: Settings) -> str:
    """CVOPS_JWT_SECRET, else a secret generated once into the data dir with mode 0600."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.data_path / "jwt_secret"
    if path.exists():
        return path.read_text().strip()
    settings.data_path.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
        fh.flush()
        os.fsync(fh.fileno())
    return secret


class LoginThrottle:
    """Login attempts per user name and per client address, counted BEFORE they are verified.

    :meth:`attempt` admits an attempt and counts it as a failure in advance, so N concurrent guesses
    cannot all reach argon2: after ``max_failures`` counted attempts for one name, or
    ``max_per_client`` from one remote address, within ``window_s``, the answer is 429 with
    Retry-After.  :meth:`succeeded` takes the attempt back (and forgets the name's failures).  Both
    tables are LRU-bounded (``max_names`` entries each), so a username spray cannot grow memory, and
    it cannot evict a name that is still being guessed (each guess makes it the most recent).
    """

    def __init__(
        self,
        max_failures: int,
        window_s: float,
        max_names: int = 10_000,
        max_per_client: int = 30,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_names = max_names
        self.max_per_client = max_per_client
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, table: OrderedDict[str, deque[float]], key: str, now: float) -> deque[float]:
        q = table.get(key)
        if q is None:
            q = table[key] = deque()
            while len(table) > self.max_names:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def _retry(self, q: deque[float], now: float) -> float:
        return max(1.0, self.window_s - (now - q[0]))

    def tracked(self) -> int:
        """How many user names are remembered (bounded by ``max_names``)."""
        return len(self._fails)

    def attempt(self, name: str, client: str | None = None, now: float | None = None) -> float:
        """Admit one attempt and count it; raises TooManyRequests over a limit. Returns its stamp."""
        now = time.monotonic() if now is None else now
        self.check(name, now)
        self.check_client(client, now)
        self._recent(self._fails, name, now).append(now)
        if client:
            self._recent(self._clients, client, now).append(now)
        return now

    def check_client(self, client: str | None, now: float | None = None) -> None:
        """Raise TooManyRequests if ``client`` is over its limit (counts nothing): lets the gateway
        refuse a blocked address before it reads the request body."""
        if not client or client not in self._clients:
            return
        now = time.monotonic() if now is None else now
        c = self._recent(self._clients, client, now)
        if len(c) >= self.max_per_client:
            raise TooManyRequests(
                "too many failed logins from this address; try again later", {}, self._retry(c, now)
            )

    def check(self, name: str, now: float | None = None) -> None:
        """Raise TooManyRequests if ``name`` is over its limit (counts nothing)."""
        now = time.monotonic() if now is None else now
        q = self._recent(self._fails, name, now)
        if len(q) >= self.max_failures:
            raise TooManyRequests(
                "too many failed logins for this user; try again later",
                {"username": name},
                self._retry(q, now),
            )

    def failed(self, name: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._recent(self._fails, name, now).append(now)

    def succeeded(self, name: str, client: str | None = None, stamp: float | None = None) -> None:
        self._fails.pop(name, None)
        c = self._clients.get(client) if client else None
        if c is not None and stamp is not None:
            with contextlib.suppress(ValueError):
                c.remove(stamp)


class Authenticator:
    """Owns the users projection in the gateway and every user command."""

    def __init__(self, store: Store, settings: Settings, secret: str) -> None:
        self.store = store
        self.settings = settings
        self.secret = secret
        # the users projection (streams ``user-*``); open websockets wait on it for a change
        self.users = Projection(store, apply_users, UsersState(), prefix="user-")
        self._commands = asyncio.Lock()
        self.throttle = LoginThrottle(
            settings.login_max_failures,
            settings.login_window_s,
            max_per_client=settings.login_max_failures_per_client,
        )
        self._dummy_hash = hash_password(secrets.token_hex(8))

    @property
    def state(self) -> UsersState:
        return self.users.state

    async def catch_up(self) -> None:
        await self.users.catch_up()

    async def _append(self, name: str, events: list[Event], expected: int | None, by: str) -> None:
        await self.users.fold_appended(await self.store.append(f"user-{name}", events, expected, user=by))

    async def _version(self, name: str) -> int:
        return await self.store.stream_version(f"user-{name}")

    # ----------------------------------------------------------------------------------- bootstrap
    async def bootstrap_admin(self) -> str | None:
        """First start: create ``admin``. Returns a generated password (print it once) or None."""
        await self.catch_up()
        if self.state.users:
            return None
        generated = None
        password = self.settings.admin_password
        if not password:
            password = generated = secrets.token_urlsafe(12)
        loop = asyncio.get_running_loop()
        pw_hash = await loop.run_in_executor(None, hash_password, password)
        try:
            await self._append(
                "admin", [UserCreated(username="admin", role="admin", password_hash=pw_hash)], 0, "system"
            )
        except ConcurrencyError:
            await self.catch_up()
            return None
        return generated

    # ------------------------------------------------------------------------------------- tokens
    async def login(self, username: str, password: str, client: str | None = None) -> tuple[str, UserRecord]:
        """Check the name's form (422, before anything costs), admit and count the attempt (429 over
        the per-name or per-client limit), then verify with argon2; success takes the count back."""
        check_username(username)
        stamp = self.throttle.attempt(username, client)
        await self.catch_up()
        user = self.state.users.get(username)
        loop = asyncio.get_running_loop()
        pw_hash = user.password_hash if user is not None else self._dummy_hash
        ok = await loop.run_in_executor(None, verify_password, pw_hash, password)
        if user is None or not ok or user.disabled:
            raise Unauthorized("invalid username or password")
        self.throttle.succeeded(username, client, stamp)
        return self.issue(user), user

    def issue(self, user: UserRecord, ttl_s: int | None = None) -> str:
        now = int(time.time())
        claims = {
            "sub": user.username,
            "role": user.role,
            "ver": user.token_version,
            "iat": now,
            "exp": now + (self.settings.jwt_ttl_s if ttl_s is None else ttl_s),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def _claims(self, token: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token") from exc
        return claims

    def expires_at(self, token: str) -> float:
        """The token's ``exp`` (epoch seconds); raises Unauthorized like :meth:`authenticate`."""
        exp = self._claims(token)["exp"]
        return float(exp) if isinstance(exp, int | float) else 0.0

    def authenticate(self, token: str) -> Principal:
        claims = self._claims(token)
        user = self.state.users.get(str(claims.get("sub")))
        if user is None or user.disabled:
            raise Unauthorized("token's user does not exist or is disabled")
        if claims.get("ver") != user.token_version:
            raise Unauthorized("token was revoked (role, password or status changed)")
        return Principal(user.username, user.role)

    # ----------------------------------------------------------------------------------- commands
    def get(self, name: str) -> UserRecord:
        user = self.state.users.get(name)
        if user is None:
            raise NotFound(f"no user {name!r}", {"username": name})
        return user

    def _active_admins(self) -> int:
        return sum(1 for u in self.state.users.values() if u.role == "admin" and not u.disabled)

    async def create(self, name: str, password: str, role: str, by: str) -> UserRecord:
        async with self._commands:  # check + append as one step (unique names, the last admin)
            return await self._create(name, password, role, by)

    async def update(
        self,
        name: str,
        by: Principal,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> UserRecord:
        async with self._commands:
            return await self._update(name, by, role, password, disabled)

    async def delete(self, name: str, by: Principal) -> None:
        async with self._commands:
            await self._delete(name, by)

    async def _create(self, name: str, password: str, role: str, by: str) -> UserRecord:
        check_username(name)
        check_role(role)
        check_password(password)
        await self.catch_up()
        if name in self.state.users:
            raise Conflict(f"user {name!r} already exists", {"username": name})
        loop = asyncio.get_running_loop()
        pw_hash = await loop.run_in_executor(None, hash_password, password)
        version = await self._version(name)
        try:
            # a deleted name can be reused: its stream goes on
            await self._append(
                name, [UserCreated(username=name, role=role, password_hash=pw_hash)], version, by
            )
        except ConcurrencyError as exc:
            raise Conflict(f"user {name!r} already exists", {"username": name}) from exc
        return self.get(name)

    async def _update(
        self,
        name: str,
        by: Principal,
        role: str | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> UserRecord:
        await self.catch_up()
        user = self.get(name)
        events: list[Event] = []
        if role is not None and role != user.role:
            check_role(role)
            if user.role == "admin" and not user.disabled and self._active_admins() <= 1:
                raise Conflict("cannot demote the last active admin")
            events.append(RoleChanged(username=name, role=role))
        if password is not None:
            check_password(password)
            loop = asyncio.get_running_loop()
            events.append(
                PasswordChanged(
                    username=name, password_hash=await loop.run_in_executor(None, hash_password, password)
                )
            )
        if disabled is not None and disabled != user.disabled:
            if disabled and user.role == "admin" and self._active_admins() <= 1:
                raise Conflict("cannot disable the last active admin")
            events.append(UserDisabled(username=name) if disabled else UserEnabled(username=name))
        if events:
            await self._append(name, events, await self._version(name), by.username)
        return self.get(name)

    async def _delete(self, name: str, by: Principal) -> None:
        await self.catch_up()
        user = self.get(name)
        if user.role == "admin" and not user.disabled and self._active_admins() <= 1:
            raise Conflict("cannot delete the last active admin")
        if name == by.username:
            raise Forbidden("you cannot delete yourself")
        await self._append(name, [UserDeleted(username=name)], await self._version(name), by.username)


def user_view(user: UserRecord) -> dict[str, object]:
    return {"username": user.username, "role": user.role, "disabled": user.disabled}


def secret_file(settings: Settings) -> Path:
    return settings.data_path / "jwt_secret"
