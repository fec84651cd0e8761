"""Tokens, the caller, and user management."""

from __future__ import annotations

from aiohttp import web

from cvops.platform.auth import user_view
from cvops.platform.bodies import (
    TokenRequest,
    TokenResponse,
    UserCreate,
    UserList,
    UserOut,
    UserPatch,
    json_response,
    read_json,
)
from cvops.platform.context import principal
from cvops.platform.keys import SERVICES, SETTINGS
from cvops.platform.routes import ADMIN, ANYONE, EVERY_ROLE, Route


async def token(request: web.Request) -> web.StreamResponse:
    auth = request.app[SERVICES].need_auth()
    # the per-client limit keys on the peer address (behind a proxy: the proxy's, for all clients);
    # a blocked address is refused before its body is read
    auth.throttle.check_client(request.remote)
    body = await read_json(request, TokenRequest, request.app[SETTINGS].max_json_bytes)
    access, user = await auth.login(body.username, body.password, client=request.remote)
    return json_response(
        TokenResponse(
            access_token=access, token_type="bearer", expires_in=auth.settings.jwt_ttl_s, role=user.role
        )
    )


async def me(request: web.Request) -> web.StreamResponse:
    p = principal(request)
    return json_response(user_view(request.app[SERVICES].need_auth().get(p.username)))


async def list_users(request: web.Request) -> web.StreamResponse:
    auth = request.app[SERVICES].need_auth()
    await auth.catch_up()
    users = [UserOut(**user_view(u)) for u in sorted(auth.state.users.values(), key=lambda u: u.username)]  # type: ignore[arg-type]
    return json_response(UserList(users=users))


async def create_user(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, UserCreate, request.app[SETTINGS].max_json_bytes)
    user = (
        await request.app[SERVICES]
        .need_auth()
        .create(body.username, body.password, body.role, principal(request).username)
    )
    return json_response(user_view(user), status=201)


async def patch_user(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, UserPatch, request.app[SETTINGS].max_json_bytes)
    user = (
        await request.app[SERVICES]
        .need_auth()
        .update(
            request.match_info["name"],
            principal(request),
            role=body.role,
            password=body.password,
            disabled=body.disabled,
        )
    )
    return json_response(user_view(user))


async def delete_user(request: web.Request) -> web.StreamResponse:
    await request.app[SERVICES].need_auth().delete(request.match_info["name"], principal(request))
    return web.Response(status=204)


ROUTES = [
    Route(
        "POST",
        "/auth/token",
        token,
        ANYONE,
        "Exchange username and password for a JWT",
        body=TokenRequest,
        response=TokenResponse,
        tag="auth",
    ),
    Route("GET", "/me", me, EVERY_ROLE, "The caller", response=UserOut, tag="auth"),
    Route("GET", "/users", list_users, ADMIN, "List users", response=UserList, tag="users"),
    Route(
        "POST",
        "/users",
        create_user,
        ADMIN,
        "Create a user (usernames are unique: 409)",
        body=UserCreate,
        response=UserOut,
        status=201,
        tag="users",
    ),
    Route(
        "PATCH",
        "/users/{name}",
        patch_user,
        ADMIN,
        "Change a user's role, password or disabled flag",
        body=UserPatch,
        response=UserOut,
        tag="users",
    ),
    Route("DELETE", "/users/{name}", delete_user, ADMIN, "Delete a user", status=204, tag="users"),
]
