"""Queue records: create/update, delete, purge, and the read-side info views.

A queue is node.queues[name] = {"id", "name", **config}; node.queue_ids[id] = name and
node.counters[id] hold the rest. The numeric id prefixes every message key, so deleting
a queue and creating one with the same name never mixes their messages.
"""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest, Conflict, NotFound
from node.state import bindings, counters, dedup, keys, messages, producers, queue_expiry
from node.state.queue_config import DEFAULTS, check_queue_name, merge_config
from node.state.tables import META_NEXT_QUEUE_ID, Ctx


def get_queue(ctx: Ctx, name: str) -> dict[str, Any] | None:
    return ctx.get(ctx.tables.queues, name.encode())


def require_queue(ctx: Ctx, name: Any, field: str = "queue") -> dict[str, Any]:
    check_queue_name(name, field=field)
    queue = get_queue(ctx, name)
    if queue is None:
        raise NotFound(f"queue {name!r} does not exist", queue=name)
    return queue


def public_config(queue: dict[str, Any]) -> dict[str, Any]:
    return {"name": queue["name"], **{k: queue.get(k, v) for k, v in DEFAULTS.items()}}


def queue_put(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    name = check_queue_name(cmd.get("name"))
    existing = get_queue(ctx, name)
    config = merge_config(name, existing, cmd.get("config"))
    dlq_name = config["dead_letter_queue"]
    if dlq_name is not None:
        dlq = get_queue(ctx, dlq_name)
        if dlq is None:
            raise BadRequest(
                f"dead_letter_queue {dlq_name!r} does not exist", field="dead_letter_queue"
            )
        if dlq["fifo"] != config["fifo"]:
            raise BadRequest(
                "dead_letter_queue must be FIFO exactly when this queue is",
                field="dead_letter_queue",
            )
    if existing is None:
        qid = ctx.next_counter(META_NEXT_QUEUE_ID)
        ctx.txn.put(keys.u64(qid), name.encode(), db=ctx.tables.queue_ids)
        counters.store(ctx, qid, counters.zero())
    else:
        qid = existing["id"]
    record = {"id": qid, "name": name, **config}
    ctx.put(ctx.tables.queues, name.encode(), record)
    if record["expires_s"] is not None:
        queue_expiry.declared(ctx, record)
    return {"created": existing is None, "queue": public_config(record)}


def _referencing_queues(ctx: Ctx, name: str) -> list[str]:
    """Names of queues that use `name` as their dead-letter queue (queues are few)."""
    return [q["name"] for q in all_queues(ctx) if q["dead_letter_queue"] == name]


def queue_delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("name"), field="name")
    users = _referencing_queues(ctx, queue["name"])
    if users:
        raise Conflict(
            f"queue {queue['name']!r} is the dead_letter_queue of {', '.join(users)}",
            used_by=users,
        )
    qid = queue["id"]
    dropped = messages.drop_all(ctx, queue)
    _drop_dedup(ctx, qid)
    producers.drop_sessions(ctx, qid)
    queue_expiry.forget(ctx, qid)
    unbound = bindings.drop_queue(ctx, queue["name"])
    ctx.pending_counters.pop(qid, None)
    ctx.txn.delete(keys.u64(qid), db=ctx.tables.counters)
    ctx.txn.delete(keys.u64(qid), db=ctx.tables.queue_ids)
    ctx.txn.delete(queue["name"].encode(), db=ctx.tables.queues)
    result: dict[str, Any] = {"deleted": True, "messages": dropped}
    if unbound:
        result["unbound"] = unbound  # bindings removed, per exchange
    return result


def _drop_dedup(ctx: Ctx, qid: int) -> None:
    prefix = keys.u64(qid)
    expiries: set[int] = set()  # the ids of one send share one per-send expiry record
    cur = ctx.txn.cursor(db=ctx.tables.dedup)
    cur.set_range(prefix)
    while True:
        key = cur.key()
        if not key or not key.startswith(prefix):
            break
        _seq, expire = keys.split_dedup_record(cur.value())
        expiries.add(expire)
        ctx.txn.delete(keys.expiry_key(expire, key), db=ctx.tables.dedup_expiry)  # older format
        cur.delete()
    for expire in expiries:
        dedup.drop_expiry_records(ctx, qid, expire)


def queue_purge(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("name"), field="name")
    counters.flush(ctx)
    purged = messages.drop_all(ctx, queue)
    current = counters.read(ctx, queue["id"])
    current["depth"] = current["in_flight"] = current["delayed"] = 0
    counters.store(ctx, queue["id"], current)
    return {"purged": purged}


def info(ctx: Ctx, queue: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Config plus live counters of one queue (read-only)."""
    stats = counters.read(ctx, queue["id"])
    first = ctx.first_key(ctx.tables.messages, keys.u64(queue["id"]))
    oldest_age_ms = None
    if first is not None:
        oldest = messages.decode_meta(ctx.txn.get(first, db=ctx.tables.messages))
        oldest_age_ms = max(0, now_ms - oldest["enq"])
    return {**public_config(queue), **stats, "oldest_age_ms": oldest_age_ms}


def all_queues(ctx: Ctx) -> list[dict[str, Any]]:
    return [ctx.get(ctx.tables.queues, key) for key, _ in ctx.txn.cursor(db=ctx.tables.queues)]
