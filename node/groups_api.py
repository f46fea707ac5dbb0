"""Consumer groups over HTTP: join, heartbeat, leave, commit offsets, show.

Access (node/auth.py): every group route needs `read` on the group's topic, checked in
the handler (the topic is in the join's body, or is the group's own topic); the group's
name itself is not a permission name. So whoever may read a topic may consume it in any
group of it, and commit that group's offsets only as a member in the current generation.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.app_context import SERVICE_KEY, principal_of, request_body
from node.auth import CLUSTER
from node.http import bad_request, get_int, get_number, get_str, not_found, reject_unknown, respond
from node.queue_service import QueueService
from node.state.queue_config import valid_queue_name
from node.validation import check_queue_name

MAX_MEMBER_ID_CHARS = 128


def _group_name(request: web.Request) -> str:
    return check_queue_name(request.match_info["group"], "group", field="group")


def _member_id(body: dict[str, Any], required: bool) -> str | None:
    member_id = get_str(body, "member_id", None, MAX_MEMBER_ID_CHARS)
    if member_id is None and required:
        raise bad_request("member_id is required", field="member_id")
    return member_id


def _may_read_something(request: web.Request) -> None:
    """403 for a caller with no read permission at all, before a group is looked up: such
    a caller learns nothing, not even whether the group exists."""
    principal = principal_of(request)
    if not principal.may_any("read"):
        principal.require("read", CLUSTER)


def _group_topic(service: QueueService, name: str) -> str:
    """The topic of an existing group (404 if none), from the leader's applied state."""
    info = service.sm.group_info(name)
    if info is None:
        raise not_found(f"group {name!r} does not exist")
    return str(info["topic"])


async def _member_op(request: web.Request, extra: set[str]) -> dict[str, Any]:
    service: QueueService = request.app[SERVICE_KEY]
    name = _group_name(request)
    service.require_leader()
    body = await request_body(request)
    reject_unknown(body, {"member_id", *extra}, "body")
    fields: dict[str, Any] = {"group": name, "member_id": _member_id(body, required=True)}
    _may_read_something(request)
    principal_of(request).require("read", _group_topic(service, name))
    if "generation" in extra:
        generation = get_int(body, "generation", None, 0, 1 << 62)
        if generation is not None:
            fields["generation"] = generation
    return {"service": service, "body": body, "fields": fields}


async def join(request: web.Request) -> web.Response:
    """POST /v1/groups/{group}/join {topic, member_id?, session_timeout_s?, start?}."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _group_name(request)
    body = await request_body(request)
    reject_unknown(body, {"topic", "member_id", "session_timeout_s", "start"}, "body")
    topic = get_str(body, "topic", None, 80)
    if topic is None or not valid_queue_name(topic):
        raise bad_request("topic must name a topic", field="topic")
    principal_of(request).require("read", topic)
    fields: dict[str, Any] = {"group": name, "topic": topic}
    member_id = _member_id(body, required=False)
    if member_id is not None:
        fields["member_id"] = member_id
    timeout_s = get_number(body, "session_timeout_s", None, 0.1, 3600)
    if timeout_s is not None:
        fields["session_timeout_ms"] = round(timeout_s * 1000)
    start = body.get("start", "earliest")
    if start not in ("earliest", "latest"):
        raise bad_request("start must be 'earliest' or 'latest'", field="start")
    fields["start"] = start
    return respond(request, await service.propose("group_join", **fields))


async def heartbeat(request: web.Request) -> web.Response:
    """POST /v1/groups/{group}/heartbeat {member_id}: the generation and partitions now."""
    op = await _member_op(request, {"generation"})
    fields = op["fields"]
    fields.pop("generation", None)  # informative only: the answer says the current one
    return respond(request, await op["service"].propose("group_heartbeat", **fields))


async def leave(request: web.Request) -> web.Response:
    op = await _member_op(request, set())
    return respond(request, await op["service"].propose("group_leave", **op["fields"]))


async def commit(request: web.Request) -> web.Response:
    """POST /v1/groups/{group}/commit {member_id, generation, offsets: [...]}."""
    op = await _member_op(request, {"generation", "offsets"})
    fields = op["fields"]
    if "generation" not in fields:
        raise bad_request("generation is required", field="generation")
    offsets = op["body"].get("offsets")
    if not isinstance(offsets, list) or not offsets:
        raise bad_request("offsets must be a non-empty array", field="offsets")
    checked = []
    for i, item in enumerate(offsets):
        where = f"offsets[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object {{topic, partition, offset}}")
        reject_unknown(item, {"topic", "partition", "offset"}, where)
        partition = get_int(item, "partition", None, 0, 1 << 20, where)
        offset = get_int(item, "offset", None, 0, 1 << 62, where)
        if partition is None or offset is None:
            raise bad_request(f"{where} needs partition and offset")
        entry: dict[str, Any] = {"partition": partition, "offset": offset}
        topic = item.get("topic")
        if topic is not None:
            if not isinstance(topic, str):
                raise bad_request(f"{where}.topic must be a string")
            entry["topic"] = topic
        checked.append(entry)
    fields["offsets"] = checked
    return respond(request, await op["service"].propose("group_commit", **fields))


async def show_group(request: web.Request) -> web.Response:
    """GET /v1/groups/{group}: members, generation, committed offsets and lag."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _group_name(request)
    _may_read_something(request)
    await service.linearizable()
    info = service.sm.group_info(name)
    if info is None:
        raise not_found(f"group {name!r} does not exist")
    principal_of(request).require("read", info["topic"])
    return respond(request, info)
