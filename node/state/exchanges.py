"""Exchanges: named routers that copy a published message into the queues bound to them.

An exchange is node.exchanges[name] = {"name", "type", "alternate_queue", "bindings",
"created_ms", "published_total", "routed_total", "unroutable_total"}; its bindings live in
node.bindings (layout in node/state/bindings.py). Types, as in AMQP 0-9-1:
- direct:  a binding's `routing_key` equals the message's routing key;
- fanout:  every bound queue, whatever the routing key;
- topic:   a binding's `pattern` matches the routing key (node/state/topic_match.py);
- headers: the binding's `headers` pairs all (`match: all`, the default) or any
           (`match: any`) equal the message's headers.

A publish is ONE command: every message is routed, then every copy is enqueued with the
queue's own semantics (sending.check_message + sending.enqueue: size limit, dedup window,
delay, FIFO groups; DLQ on later receives). Any copy refused (too large for one queue, a
FIFO queue without group_id) refuses the whole command, which then changes nothing.
Queues are visited in sorted name order and a message is copied at most once per queue
(even when several bindings match), so every replica enqueues the same sequence numbers.

A message no binding matches is unroutable: counted on the exchange and, when the exchange
has an `alternate_queue` that exists, sent there (RabbitMQ's alternate exchange, here a
queue). Deleting a queue removes its bindings (bindings.drop_queue); an alternate queue
deleted later is skipped (the message is counted unroutable and dropped).
"""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest, Conflict, NotFound, TooLarge
from node.state import bindings, fields, sending
from node.state.queue_config import check_queue_name, valid_queue_name
from node.state.queues import get_queue, require_queue
from node.state.tables import Ctx, unpack
from node.state.topic_match import TopicTrie

TYPES = ("direct", "fanout", "topic", "headers")
MATCH_MODES = ("all", "any")
MAX_ROUTING_KEY_BYTES = 255  # AMQP's short string
MAX_BINDINGS = 1000  # per exchange: a publish reads them all
#: Copies one publish may enqueue (messages x matching queues): one entry stays bounded
#: work on every replica, whatever the batch and the bindings multiply to.
MAX_COPIES = 10_000
PUBLISH_FIELDS = sending.MESSAGE_FIELDS | {"routing_key", "headers"}
COUNTERS = ("published_total", "routed_total", "unroutable_total")


def check_exchange_name(name: Any, field: str = "name") -> str:
    if not valid_queue_name(name):
        raise BadRequest(
            f"invalid exchange name {str(name)[:100]!r}: use 1-80 characters of A-Z a-z 0-9 _ . -",
            field=field,
        )
    return name


def check_routing_key(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > (
        MAX_ROUTING_KEY_BYTES
    ):
        raise BadRequest(
            f"{field} must be a string of at most {MAX_ROUTING_KEY_BYTES} bytes", field=field
        )
    return value


def get_exchange(ctx: Ctx, name: str) -> dict[str, Any] | None:
    return ctx.get(ctx.tables.exchanges, name.encode())


def require_exchange(ctx: Ctx, name: Any) -> dict[str, Any]:
    check_exchange_name(name)
    record = get_exchange(ctx, name)
    if record is None:
        raise NotFound(f"exchange {name!r} does not exist", exchange=name)
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": record["name"],
        "type": record["type"],
        "alternate_queue": record["alternate_queue"],
        "binding_count": record["bindings"],
        **{k: record[k] for k in COUNTERS},
    }


def _check_alternate(ctx: Ctx, value: Any) -> str | None:
    if value is None:
        return None
    check_queue_name(value, field="alternate_queue")
    if get_queue(ctx, value) is None:
        raise BadRequest(f"alternate_queue {value!r} does not exist", field="alternate_queue")
    return value


def exchange_put(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """Create an exchange, or change an existing one's alternate_queue (its type is fixed)."""
    name = check_exchange_name(cmd.get("name"))
    kind = cmd.get("type")
    if kind not in TYPES:
        raise BadRequest(f"type must be one of {', '.join(TYPES)}", field="type")
    existing = get_exchange(ctx, name)
    if existing is not None and existing["type"] != kind:
        raise Conflict(
            f"exchange {name!r} exists with type {existing['type']!r}; its type cannot change",
            field="type",
        )
    alternate = _check_alternate(ctx, cmd.get("alternate_queue"))
    if existing is None:
        record = {
            "name": name,
            "type": kind,
            "alternate_queue": alternate,
            "bindings": 0,
            "created_ms": ctx.now_ms,
            **dict.fromkeys(COUNTERS, 0),
        }
    else:
        record = {**existing, "alternate_queue": alternate}
    ctx.put(ctx.tables.exchanges, name.encode(), record)
    return {"created": existing is None, "exchange": public(record)}


def exchange_delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    record = require_exchange(ctx, cmd.get("name"))
    dropped = bindings.drop_exchange(ctx, record["name"])
    ctx.txn.delete(record["name"].encode(), db=ctx.tables.exchanges)
    return {"deleted": record["name"], "bindings": dropped}


def check_binding(kind: str, cmd: dict[str, Any]) -> dict[str, Any]:
    """The binding a bind/unbind command names, canonical for its exchange's type."""
    queue = check_queue_name(cmd.get("queue"), field="queue")
    given = {k for k in ("routing_key", "pattern", "headers", "match") if cmd.get(k) is not None}
    allowed = {
        "direct": {"routing_key"},
        "fanout": set(),
        "topic": {"pattern", "routing_key"},
        "headers": {"headers", "match"},
    }[kind]
    extra = sorted(given - allowed)
    if extra:
        raise BadRequest(f"a {kind} exchange's binding takes no {', '.join(extra)}", field=extra[0])
    binding: dict[str, Any] = {"queue": queue}
    if kind == "direct":
        binding["routing_key"] = check_routing_key(cmd.get("routing_key"), "routing_key")
    elif kind == "topic":
        if "pattern" in given and "routing_key" in given:
            raise BadRequest("give pattern or routing_key, not both", field="pattern")
        where = "pattern" if "pattern" in given else "routing_key"
        binding["pattern"] = check_routing_key(cmd.get(where), where)
    elif kind == "headers":
        headers = cmd.get("headers")
        if headers is None:
            raise BadRequest("a headers exchange's binding needs headers", field="headers")
        binding["headers"] = fields.attributes(headers, "headers")
        match = cmd.get("match", "all") or "all"
        if match not in MATCH_MODES:
            raise BadRequest("match must be all or any", field="match")
        binding["match"] = match
    return binding


def exchange_bind(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    record = require_exchange(ctx, cmd.get("exchange"))
    binding = check_binding(record["type"], cmd)
    require_queue(ctx, binding["queue"])
    dig = bindings.digest(binding)
    key = bindings.binding_key(record["name"], binding["queue"], dig)
    if ctx.txn.get(key, db=ctx.tables.bindings) is not None:
        return {"created": False, "binding": binding}
    if record["bindings"] >= MAX_BINDINGS:
        raise TooLarge(f"exchange {record['name']!r} already has {MAX_BINDINGS} bindings")
    ctx.put(ctx.tables.bindings, key, binding)
    reverse = bindings.reverse_key(record["name"], binding["queue"], dig)
    ctx.txn.put(reverse, b"", db=ctx.tables.queue_bindings)
    record["bindings"] += 1
    ctx.put(ctx.tables.exchanges, record["name"].encode(), record)
    return {"created": True, "binding": binding}


def exchange_unbind(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    record = require_exchange(ctx, cmd.get("exchange"))
    binding = check_binding(record["type"], cmd)
    if not bindings.remove(ctx, record["name"], binding["queue"], bindings.digest(binding)):
        raise NotFound(f"exchange {record['name']!r} has no such binding", binding=binding)
    record["bindings"] -= 1
    ctx.put(ctx.tables.exchanges, record["name"].encode(), record)
    return {"deleted": True, "binding": binding}


def all_bindings(ctx: Ctx, name: str) -> list[dict[str, Any]]:
    return [b for _key, b in bindings.of_exchange(ctx, name)]


def all_exchanges(ctx: Ctx) -> list[dict[str, Any]]:
    cursor = ctx.txn.cursor(db=ctx.tables.exchanges)
    return [unpack(value) for _key, value in cursor]


# ---------------------------------------------------------------- routing


class Router:
    """The bindings of one exchange, ready to route many messages (one publish)."""

    def __init__(self, kind: str, binds: list[dict[str, Any]]) -> None:
        self.kind = kind
        self.queues = sorted({b["queue"] for b in binds})
        self.direct: dict[str, set[str]] = {}
        self.headers = [b for b in binds if "headers" in b]
        self.trie = TopicTrie()
        for b in binds:
            if kind == "direct":
                self.direct.setdefault(b["routing_key"], set()).add(b["queue"])
            elif kind == "topic":
                self.trie.add(b["pattern"], b["queue"])

    def route(self, routing_key: str, headers: dict[str, str]) -> list[str]:
        """The queues one message goes to, sorted (deterministic, one copy per queue)."""
        if self.kind == "fanout":
            return self.queues
        if self.kind == "direct":
            return sorted(self.direct.get(routing_key, ()))
        if self.kind == "topic":
            return sorted(self.trie.match(routing_key))
        return sorted({b["queue"] for b in self.headers if headers_match(b, headers)})


def headers_match(binding: dict[str, Any], headers: dict[str, str]) -> bool:
    """AMQP x-match: `all` needs every pair of the binding, `any` at least one."""
    pairs = binding["headers"].items()
    if binding["match"] == "any":
        return any(headers.get(k) == v for k, v in pairs)
    return all(headers.get(k) == v for k, v in pairs)


def _check_publish_message(msg: Any, i: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(routing key, headers, the queue message) of one published message."""
    if not isinstance(msg, dict):
        raise BadRequest(f"messages[{i}] must be a map", field=f"messages[{i}]")
    if not PUBLISH_FIELDS.issuperset(msg):
        key = next(k for k in msg if k not in PUBLISH_FIELDS)
        raise BadRequest(
            f"messages[{i}] has unknown field {str(key)[:40]!r}", field=f"messages[{i}].{key}"
        )
    routing_key = check_routing_key(msg.get("routing_key"), f"messages[{i}].routing_key")
    headers = fields.attributes(msg.get("headers"), f"messages[{i}].headers")
    queue_msg = {k: v for k, v in msg.items() if k in sending.MESSAGE_FIELDS}
    if headers:  # a copy carries the headers as attributes (its own attributes win)
        own = fields.attributes(msg.get("attributes"), f"messages[{i}].attributes")
        queue_msg["attributes"] = {**headers, **own}
    return routing_key, headers, queue_msg


def exchange_publish(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    record = require_exchange(ctx, cmd.get("exchange"))
    batch = cmd.get("messages")
    if not isinstance(batch, list) or not batch:
        raise BadRequest("messages must be a non-empty list", field="messages")
    if len(batch) > fields.MAX_BATCH:
        raise TooLarge(f"batch of {len(batch)} messages exceeds {fields.MAX_BATCH}")
    router = Router(record["type"], all_bindings(ctx, record["name"]))
    alternate = record["alternate_queue"]
    per_queue: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    routes: list[list[str]] = []
    matched: list[bool] = []
    for i, msg in enumerate(batch):
        routing_key, headers, queue_msg = _check_publish_message(msg, i)
        targets = router.route(routing_key, headers)
        matched.append(bool(targets))
        if not targets:
            targets = [alternate] if alternate is not None else []
        routes.append(targets)
        for name in targets:
            per_queue.setdefault(name, []).append((i, queue_msg))
    n_copies = sum(len(targets) for targets in routes)
    if n_copies > MAX_COPIES:
        raise TooLarge(
            f"this publish would enqueue {n_copies} copies; one publish may enqueue at most "
            f"{MAX_COPIES}: publish fewer messages per request"
        )
    ids: list[dict[str, str]] = [{} for _ in batch]
    duplicates: list[list[str]] = [[] for _ in batch]
    copies = 0
    for name in sorted(per_queue):
        queue = get_queue(ctx, name)
        if queue is None:  # only an alternate queue deleted since: skipped
            for i, _msg in per_queue[name]:
                routes[i] = [q for q in routes[i] if q != name]
            continue
        checked = [sending.check_message(m, i, queue) for i, m in per_queue[name]]
        for (i, _msg), result in zip(
            per_queue[name], sending.enqueue(ctx, queue, checked), strict=True
        ):
            ids[i][name] = result["id"]
            if result["duplicate"]:
                duplicates[i].append(name)
            else:
                copies += 1
    record["published_total"] += len(batch)
    record["routed_total"] += copies
    record["unroutable_total"] += matched.count(False)
    ctx.put(ctx.tables.exchanges, record["name"].encode(), record)
    return {
        "messages": [
            {
                "routed_to": routes[i],
                "ids": ids[i],
                "duplicates": duplicates[i],
                "unroutable": not matched[i],
            }
            for i in range(len(batch))
        ]
    }
