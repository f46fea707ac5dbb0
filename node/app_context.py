"""What every route module takes from the aiohttp application: its typed keys and the body.

Why a module of its own: the queue routes (node/api.py) and the membership routes
(node/membership.py) both read the queue service and the node from the app; with the keys
in node/api.py, membership had to import api back (an import circle).
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from node.auth import ANYONE, Authenticator, Principal, unauthorized
from node.http import bad_request, get_int, read_body, reject_unknown
from node.queue_service import QueueService


class NodeAdmin(Protocol):
    """What the cluster and admin routes need of the node beyond its queue service
    (node.server.NodeServer implements it)."""

    @property
    def incarnation(self) -> str:
        """This node's incarnation: new whenever its Raft state is new (node/data_dir.py)."""
        ...

    def committed_log(self, lo: int, hi: int | None, limit: int) -> list[list[int]]:
        """[index, term, crc] of stored committed entries in [lo, hi], at most `limit`."""
        ...


SERVICE_KEY = web.AppKey("queue_service", QueueService)
NODE_KEY = web.AppKey("node", NodeAdmin)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
#: The request's authenticated caller, set before its handler runs (node/api.py
#: serve_request); a binary connection sets it once per session (node/binary_api.py).
PRINCIPAL_KEY = "raftq.principal"


def principal_of(request: web.Request) -> Principal:
    """Who made `request` (ANYONE when auth is off). A request with none set while auth
    is on is refused rather than trusted: no route can slip through unauthenticated."""
    principal = request.get(PRINCIPAL_KEY)
    if principal is not None:
        return principal
    if request.app[AUTH_KEY].enabled:
        raise unauthorized("this request was not authenticated")
    return ANYONE


async def request_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON or msgpack object, within this node's body size and depth limits."""
    limits = request.app[SERVICE_KEY].config.limits
    return await read_body(request, limits.max_body_bytes, limits.max_json_depth)


def parse_producer(request: web.Request, body: dict[str, Any]) -> dict[str, Any] | None:
    """The body's producer session {id, epoch, seq}, its id in the caller's namespace."""
    producer = body.get("producer")
    if producer is None:
        return None
    if not isinstance(producer, dict):
        raise bad_request("producer must be an object {id, epoch, seq}")
    reject_unknown(producer, {"id", "epoch", "seq"}, "producer")
    if not isinstance(producer.get("id"), str) or not 0 < len(producer["id"]) <= 128:
        raise bad_request("producer.id must be a string of 1 to 128 characters")
    seq = get_int(producer, "seq", None, 0, 1 << 62, "producer")
    if seq is None:
        raise bad_request("producer.seq is required")
    return {
        "id": principal_of(request).scoped(producer["id"]),
        "epoch": get_int(producer, "epoch", 0, 0, (1 << 31) - 1, "producer"),
        "seq": seq,
    }
