"""Topics over HTTP: create/update, list, show, delete, append records, fetch records.

Why a module of its own: topics are a second data model beside queues, with their own
validation and their own long-poll (a fetch waits for an append to its partition), and
node/api.py only lists the routes (ROUTES). Writes are proposed like every other op;
a fetch is a read: served from the leader's applied state after a linearizable check,
with no Raft entry per read, woken by the appends this leader applies.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from node.app_context import SERVICE_KEY, parse_producer, principal_of, request_body
from node.errors import CommandError
from node.http import (
    ApiError,
    bad_request,
    get_int,
    not_found,
    reject_unknown,
    render_bytes,
    respond,
    too_large,
)
from node.queue_service import QueueService
from node.state.queue_config import valid_queue_name
from node.state.topics import DEFAULTS, MAX_FETCH, MAX_KEY_BYTES, MAX_PARTITIONS
from node.validation import check_attributes, check_queue_name, decode_body

TOPIC_CONFIG_FIELDS = frozenset(DEFAULTS)
RECORD_FIELDS = frozenset({"key", "value", "value_b64", "headers", "partition"})
#: A fetch answers at most this many bytes of values (and always at least one record).
MAX_FETCH_BYTES = 4 << 20


def topic_name(request: web.Request) -> str:
    return check_queue_name(request.match_info["name"], "topic")


def fetch_key(topic: str, partition: int) -> str:
    """The wake-up key of a partition's fetches (no queue name holds a NUL)."""
    return f"\0topic/{topic}/{partition}"


def command_error(exc: CommandError) -> ApiError:
    """A refusal read from the state (a fetch is not a command) as the API's error."""
    return ApiError(exc.http_status, exc.code, exc.message, **exc.extra)


# ---------------------------------------------------------------- admin


async def put_topic(request: web.Request) -> web.Response:
    """PUT /v1/topics/{name}: create (201) or update (200); partitions may only grow."""
    service: QueueService = request.app[SERVICE_KEY]
    name = topic_name(request)
    body = await request_body(request)
    reject_unknown(body, TOPIC_CONFIG_FIELDS, "topic config")
    config: dict[str, Any] = {}
    if "partitions" in body:
        config["partitions"] = get_int(body, "partitions", None, 1, MAX_PARTITIONS)
    for key in ("retention_s", "retention_bytes"):
        if key in body:
            config[key] = get_int(body, key, None, 1, 1 << 50)
    result = await service.propose("topic_put", name=name, config=config)
    return respond(request, result["topic"], status=201 if result.get("created") else 200)


async def list_topics(request: web.Request) -> web.Response:
    """The topics the caller holds any permission on (every topic when auth is off)."""
    service: QueueService = request.app[SERVICE_KEY]
    await service.linearizable()
    principal = principal_of(request)
    found = [t for t in service.sm.list_topics() if principal.sees(t["name"])]
    return respond(request, {"topics": found})


async def show_topic(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    name = topic_name(request)
    await service.linearizable()
    info = service.sm.topic_info(name)
    if info is None:
        raise not_found(f"topic {name!r} does not exist")
    return respond(request, info)


async def delete_topic(request: web.Request) -> web.Response:
    service: QueueService = request.app[SERVICE_KEY]
    return respond(request, await service.propose("topic_delete", name=topic_name(request)))


# ---------------------------------------------------------------- append


def parse_records(service: QueueService, body: dict[str, Any]) -> list[dict[str, Any]]:
    limits = service.config.limits
    records = body.get("records")
    if not isinstance(records, list) or not records:
        raise bad_request("records must be a non-empty array", field="records")
    if len(records) > limits.max_batch:
        raise too_large(f"a request may hold at most {limits.max_batch} records")
    out = []
    for i, rec in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(rec, dict):
            raise bad_request(f"{where} must be an object")
        reject_unknown(rec, RECORD_FIELDS, where)
        value = decode_body(rec, where, "value")
        if len(value) > limits.max_message_bytes:
            raise too_large(
                f"{where} value is {len(value)} bytes; at most {limits.max_message_bytes}",
                index=i,
            )
        item: dict[str, Any] = {"value": value}
        key = rec.get("key")
        if key is not None:
            if not isinstance(key, str) or not key or len(key.encode()) > MAX_KEY_BYTES:
                raise bad_request(f"{where}.key must be a string of 1..{MAX_KEY_BYTES} bytes")
            item["key"] = key
        partition = get_int(rec, "partition", None, 0, MAX_PARTITIONS - 1, where)
        if partition is not None:
            item["partition"] = partition
        headers = check_attributes(rec.get("headers"), limits, where)
        if headers:
            item["headers"] = {k: headers[k] for k in sorted(headers)}
        out.append(item)
    return out


async def append_records(request: web.Request) -> web.Response:
    """POST /v1/topics/{name}/records: each record at the end of its partition."""
    service: QueueService = request.app[SERVICE_KEY]
    name = topic_name(request)
    service.require_leader()
    body = await request_body(request)
    reject_unknown(body, {"records", "producer"}, "body")
    fields: dict[str, Any] = {"topic": name, "records": parse_records(service, body)}
    producer = parse_producer(request, body)
    if producer is not None:
        fields["producer"] = producer
    result = await service.propose("topic_append", **fields)
    for p in sorted({r["partition"] for r in result.get("records", ())}):
        service.wake(fetch_key(name, p))
    return respond(request, result)


# ---------------------------------------------------------------- in transactions


def txn_publishes(service: QueueService, body: dict[str, Any]) -> list[dict[str, Any]]:
    """A transaction's `publish`: [{topic, records}], records as an append takes them."""
    items = body.get("publish")
    if items is None:
        return []
    if not isinstance(items, list):
        raise bad_request("publish must be an array of {topic, records}", field="publish")
    out = []
    for i, item in enumerate(items):
        where = f"publish[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object {{topic, records}}")
        reject_unknown(item, {"topic", "records"}, where)
        topic = item.get("topic")
        if not valid_queue_name(topic):
            raise bad_request(f"{where}.topic must name a topic", field=f"{where}.topic")
        out.append({"topic": topic, "records": parse_records(service, item)})
    return out


def txn_offsets(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A transaction's `commit_offsets`: [{group, generation, topic, partition, offset,
    member_id?}]; the topic is required here, where the caller's `read` on it is checked."""
    items = body.get("commit_offsets")
    if items is None:
        return []
    if not isinstance(items, list):
        raise bad_request("commit_offsets must be an array", field="commit_offsets")
    out = []
    for i, item in enumerate(items):
        where = f"commit_offsets[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object")
        reject_unknown(
            item, {"group", "generation", "topic", "partition", "offset", "member_id"}, where
        )
        checked: dict[str, Any] = {}
        for key in ("group", "topic"):
            value = item.get(key)
            if not valid_queue_name(value):
                raise bad_request(f"{where}.{key} must be a name", field=f"{where}.{key}")
            checked[key] = value
        for key, hi in (
            ("generation", 1 << 62),
            ("partition", MAX_PARTITIONS - 1),
            ("offset", 1 << 62),
        ):
            value = get_int(item, key, None, 0, hi, where)
            if value is None:
                raise bad_request(f"{where}.{key} is required", field=f"{where}.{key}")
            checked[key] = value
        member_id = item.get("member_id")
        if member_id is not None:
            if not isinstance(member_id, str) or not 0 < len(member_id) <= 128:
                raise bad_request(f"{where}.member_id must be a string of 1..128 characters")
            checked["member_id"] = member_id
        out.append(checked)
    return out


def wake_fetches(service: QueueService, result: dict[str, Any]) -> None:
    """Wake the fetches of the partitions a committed transaction published to."""
    results = result.get("results")
    for item in results.get("publish", ()) if isinstance(results, dict) else ():
        for p in sorted({r["partition"] for r in item["records"]}):
            service.wake(fetch_key(item["topic"], p))


# ---------------------------------------------------------------- fetch


def _query_int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{key} must be an integer", field=key) from None
    if not lo <= value <= hi:
        raise bad_request(f"{key} must be between {lo} and {hi}", field=key)
    return value


async def fetch_records(request: web.Request) -> web.Response:
    """GET /v1/topics/{name}/partitions/{p}/records?offset=&max=&wait_s=: records from
    `offset` on; with wait_s and nothing at `offset` yet, waits for an append."""
    service: QueueService = request.app[SERVICE_KEY]
    name = topic_name(request)
    try:
        partition = int(request.match_info["p"])
    except ValueError:
        raise bad_request("the partition must be an integer", field="p") from None
    if not 0 <= partition < MAX_PARTITIONS:
        raise bad_request(f"the partition must be in 0..{MAX_PARTITIONS - 1}", field="p")
    offset = _query_int(request, "offset", 0, 0, 1 << 62)
    max_records = _query_int(request, "max", 100, 1, MAX_FETCH)
    try:
        wait_s = float(request.query.get("wait_s", "0"))
    except ValueError:
        raise bad_request("wait_s must be a number", field="wait_s") from None
    if not 0 <= wait_s <= service.config.limits.max_wait_s:  # also refuses nan
        raise bad_request(
            f"wait_s must be between 0 and {service.config.limits.max_wait_s}", field="wait_s"
        )
    await service.linearizable()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        event = service.queue_event(fetch_key(name, partition))  # before looking: no lost wakeup
        try:
            result = service.sm.topic_fetch(name, partition, offset, max_records, MAX_FETCH_BYTES)
        except CommandError as exc:
            raise command_error(exc) from None
        remaining = deadline - loop.time()
        if result["records"] or remaining <= 0 or service.closing:
            break
        with service.long_poll(), contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), remaining)
        service.require_leader()
    return respond(
        request,
        {
            **result,
            "partition": partition,
            "records": render_bytes(request, result["records"], "value"),
        },
    )
