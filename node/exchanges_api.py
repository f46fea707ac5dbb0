"""Exchanges over HTTP: declare, list, show, delete, bind, unbind, publish.

Why a module of its own: exchanges are a routing layer over the queue routes, with their
own records (node/state/exchanges.py); node/api.py only lists these handlers in ROUTES.

Access (node/auth.py, checked on the `{name}` of the path, i.e. the exchange's name):
admin to declare, delete, bind and unbind; write to publish; read to show. Binding also
needs write on the bound queue, and naming an alternate queue write on that queue (a
binding sends messages into the queue). A publish needs nothing more than write on the
exchange: its owner decided where it routes (RabbitMQ checks write on the exchange only).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.app_context import SERVICE_KEY, principal_of, request_body
from node.http import bad_request, not_found, reject_unknown, respond, too_large
from node.queue_service import QueueService
from node.state.exchanges import MATCH_MODES, MAX_ROUTING_KEY_BYTES, TYPES
from node.validation import MESSAGE_FIELDS, check_queue_name, parse_message

PUBLISH_MESSAGE_FIELDS = MESSAGE_FIELDS | {"routing_key", "headers"}
BINDING_FIELDS = frozenset({"queue", "routing_key", "pattern", "headers", "match"})


def _exchange_name(request: web.Request) -> str:
    return check_queue_name(request.match_info["name"], "exchange")


def _routing_key(body: dict[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > (
        MAX_ROUTING_KEY_BYTES
    ):
        raise bad_request(
            f"{where}.{key} must be a string of at most {MAX_ROUTING_KEY_BYTES} bytes", field=key
        )
    return value


def _headers(value: Any, limits: Any, where: str) -> dict[str, str]:
    """`headers`: an object of strings, within the attribute limits (a copy carries them
    as attributes)."""
    if not isinstance(value, dict):
        raise bad_request(f"{where}.headers must be an object of strings", field="headers")
    if len(value) > limits.max_attributes:
        raise bad_request(f"{where}.headers has more than {limits.max_attributes} entries")
    for k, v in value.items():
        if not isinstance(v, str) or not k or len(k) > 256:
            raise bad_request(f"{where}.headers[{k[:40]!r}] must be a string value")
        if len(k.encode()) + len(v.encode()) > limits.max_attribute_bytes:
            raise too_large(
                f"{where}.headers[{k[:40]!r}] exceeds {limits.max_attribute_bytes} bytes"
            )
    return dict(value)


async def put_exchange(request: web.Request) -> web.Response:
    """PUT /v1/exchanges/{name} {type, alternate_queue}: 201 created, 200 updated."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    body = await request_body(request)
    reject_unknown(body, {"type", "alternate_queue"}, "body")
    kind = body.get("type")
    if kind not in TYPES:
        raise bad_request(f"type must be one of {', '.join(TYPES)}", field="type")
    fields: dict[str, Any] = {"name": name, "type": kind}
    alternate = body.get("alternate_queue")
    if alternate is not None:
        if not isinstance(alternate, str):
            raise bad_request("alternate_queue must be a queue name or null")
        fields["alternate_queue"] = check_queue_name(alternate)
        principal_of(request).require("write", alternate)
    result = await service.propose("exchange_put", **fields)
    return respond(request, result["exchange"], status=201 if result.get("created") else 200)


async def list_exchanges(request: web.Request) -> web.Response:
    """The exchanges the caller holds any permission on (every one when auth is off)."""
    service: QueueService = request.app[SERVICE_KEY]
    await service.linearizable()
    principal = principal_of(request)
    found = [e for e in service.sm.list_exchanges() if principal.sees(e["name"])]
    return respond(request, {"exchanges": found})


async def show_exchange(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    await service.linearizable()
    info = service.sm.exchange_info(name)
    if info is None:
        raise not_found(f"exchange {name!r} does not exist")
    return respond(request, info)


async def delete_exchange(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    return respond(request, await service.propose("exchange_delete", name=name))


def _binding(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """The binding named by a bind/unbind body; the state machine makes it canonical for
    the exchange's type (which fields it takes)."""
    reject_unknown(body, BINDING_FIELDS, "body")
    queue = body.get("queue")
    if not isinstance(queue, str):
        raise bad_request("body.queue must be a queue name", field="queue")
    out: dict[str, Any] = {"queue": check_queue_name(queue)}
    for key in ("routing_key", "pattern"):
        value = _routing_key(body, key, "body")
        if value is not None:
            out[key] = value
    if body.get("headers") is not None:
        limits = request.app[SERVICE_KEY].config.limits
        out["headers"] = _headers(body["headers"], limits, "body")
    match = body.get("match")
    if match is not None:
        if match not in MATCH_MODES:
            raise bad_request("body.match must be all or any", field="match")
        out["match"] = match
    return out


async def bind(request: web.Request) -> web.Response:
    """POST /v1/exchanges/{name}/bindings: 201 when new, 200 when it existed already."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    binding = _binding(request, await request_body(request))
    principal_of(request).require("write", binding["queue"])
    result = await service.propose("exchange_bind", exchange=name, **binding)
    return respond(request, result, status=201 if result.get("created") else 200)


async def unbind(request: web.Request) -> web.Response:
    """DELETE /v1/exchanges/{name}/bindings (or POST .../bindings/delete) with the body
    that bound it."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    binding = _binding(request, await request_body(request))
    return respond(request, await service.propose("exchange_unbind", exchange=name, **binding))


def parse_publish(body: dict[str, Any], service: QueueService) -> list[dict[str, Any]]:
    limits = service.config.limits
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages must be a non-empty array", field="messages")
    if len(msgs) > limits.max_batch:
        raise too_large(f"batch of {len(msgs)} messages exceeds {limits.max_batch}")
    out = []
    for i, msg in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object")
        reject_unknown(msg, PUBLISH_MESSAGE_FIELDS, where)
        queue_part = {k: v for k, v in msg.items() if k not in ("routing_key", "headers")}
        # the queue's own limit and FIFO rule are checked per copy when it applies
        parsed = parse_message(queue_part, i, limits, limits.max_message_bytes, False)
        routing_key = _routing_key(msg, "routing_key", where)
        if routing_key:
            parsed["routing_key"] = routing_key
        if msg.get("headers") is not None:
            headers = _headers(msg["headers"], limits, where)
            if headers:
                parsed["headers"] = headers
        out.append(parsed)
    return out


async def publish(request: web.Request) -> web.Response:
    """POST /v1/exchanges/{name}/publish: every copy of every message in one entry."""
    service: QueueService = request.app[SERVICE_KEY]
    name = _exchange_name(request)
    service.require_leader()
    body = await request_body(request)
    reject_unknown(body, {"messages"}, "body")
    messages = parse_publish(body, service)
    if service.sm.exchange(name) is None:
        raise not_found(f"exchange {name!r} does not exist")
    result = await service.propose("exchange_publish", exchange=name, messages=messages)
    copies: dict[str, int] = {}
    for m in result.get("messages", ()):
        for q in m["routed_to"]:
            if q not in m["duplicates"]:
                copies[q] = copies.get(q, 0) + 1
    for q, n in sorted(copies.items()):
        service.wake(q)  # the copies reached q in this entry, not by a send to it
        service.metrics.count_sent(q, n)
    return respond(request, result)
