"""Users over HTTP: add, list, show, change permissions, rotate a token, delete; whoami.

Why here and not in node/api.py: users are cluster administration with their own rules
(the token is made and hashed on the leader, shown once, never stored), and the queue
routes should not grow by another page. Every route but whoami and the binary session
needs `admin` on `*` (node/api.py ROUTES); node/auth.py has the token format and checks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from node.app_context import AUTH_KEY, PRINCIPAL_KEY, SERVICE_KEY, principal_of, request_body
from node.auth import credential_for, new_token
from node.http import bad_request, get_str, not_found, reject_unknown, respond
from node.queue_service import QueueService
from node.state.users import check_permissions, check_user_name, public


def _user_name(request: web.Request) -> str:
    name = request.match_info["user"]
    try:
        return check_user_name(name, "user")
    except Exception:
        raise bad_request("a user name matches [A-Za-z0-9_-]{1,64}", field="user") from None


def _permissions(value: Any) -> dict[str, list[str]]:
    try:
        return check_permissions(value)
    except Exception as exc:
        raise bad_request(str(exc), field="permissions") from None


async def _credential(service: QueueService, user: str) -> tuple[str, dict[str, Any]]:
    """A new token for `user` and the fields that store its hash (hashed off the loop)."""
    service.require_leader()  # a follower forwards: only the leader's token is the one kept
    token = new_token(user)
    return token, await asyncio.to_thread(credential_for, token)


async def list_users(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    await service.linearizable()
    return respond(request, {"users": service.sm.list_users()})


async def show_user(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _user_name(request)
    await service.linearizable()
    record = service.sm.user(name)
    if record is None:
        raise not_found(f"user {name!r} does not exist")
    return respond(request, public(name, record))


async def add_user(request: web.Request) -> web.Response:
    """POST /v1/users {name, permissions}: 201 with the user and its token (shown once)."""
    service: QueueService = request.app[SERVICE_KEY]
    body = await request_body(request)
    reject_unknown(body, {"name", "permissions"}, "body")
    name = get_str(body, "name", None, 64)
    try:
        check_user_name(name)
    except Exception:
        raise bad_request("name must match [A-Za-z0-9_-]{1,64}", field="name") from None
    assert name is not None
    permissions = _permissions(body.get("permissions", {}))
    token, credential = await _credential(service, name)
    result = await service.propose("user_add", name=name, permissions=permissions, **credential)
    return respond(request, {"user": result["user"], "token": token}, status=201)


async def rotate_token(request: web.Request) -> web.Response:
    """POST /v1/users/{user}/token: a new token; the old one stops working once applied."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _user_name(request)
    body = await request_body(request)
    reject_unknown(body, set(), "body")
    token, credential = await _credential(service, name)
    result = await service.propose("user_update", name=name, **credential)
    return respond(request, {"user": result["user"], "token": token})


async def set_permissions(request: web.Request) -> web.Response:
    """PUT /v1/users/{user}/permissions {read, write, admin}: replaces them all."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _user_name(request)
    permissions = _permissions(await request_body(request))
    result = await service.propose("user_update", name=name, permissions=permissions)
    return respond(request, result["user"])


async def delete_user(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _user_name(request)
    return respond(request, await service.propose("user_delete", name=name))


async def whoami(request: web.Request) -> web.Response:
    """GET /v1/whoami: the caller's user and permissions (null user when auth is off)."""
    principal = principal_of(request)
    return respond(
        request,
        {
            "user": principal.name,
            "permissions": principal.permissions,
            "auth": request.app[AUTH_KEY].enabled,
        },
    )


async def open_session(request: web.Request) -> web.Response:
    """POST /v1/auth {token}: check a token and answer as whoami. On the binary port this
    authenticates the connection for every later request on it (node/binary_api.py)."""
    body = await request_body(request)
    reject_unknown(body, {"token"}, "body")
    token = get_str(body, "token", None, 512)
    if not token:
        raise bad_request("token must be a string of 1..512 characters", field="token")
    auth = request.app[AUTH_KEY]
    principal = await auth.verify(token) if auth.enabled else principal_of(request)
    request[PRINCIPAL_KEY] = principal
    return respond(
        request,
        {"user": principal.name, "permissions": principal.permissions, "auth": auth.enabled},
    )
