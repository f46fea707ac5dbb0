"""Transactional commit: acks, sends, topic publishes and group offset commits applied all
or nothing, once per txn_id.

Why: a consumer that reads from one queue and writes to another must not duplicate its
output when it crashes and retries, and a zombie consumer whose lease already expired
must not commit at all. One Raft entry carries the whole transaction and runs in the
command's nested LMDB transaction: any stale receipt raises, which aborts every change
made so far. A committed txn_id is remembered (node.txns, expiring via node.txn_expiry)
so that a retry answers the first result marked duplicate and applies nothing.
"""

from __future__ import annotations

from typing import Any

from node.errors import BadRequest, Conflict
from node.state import counters, delivery, fields, groups, keys, messages, sending, topics
from node.state.queues import require_queue
from node.state.tables import TIMER_TXN_EXPIRY, Ctx

TXN_DEDUP_WINDOW_MS = 300_000
MAX_TXN_ITEMS = 1000
MAX_TXN_ID_CHARS = 256 + fields.MAX_SCOPE_CHARS


def _list_field(cmd: dict[str, Any], name: str) -> list[Any]:
    value = cmd.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TXN_ITEMS:
        raise BadRequest(f"{name} must be a list of at most {MAX_TXN_ITEMS} items", field=name)
    return value


def txn(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    txn_id = fields.optional_id(cmd.get("txn_id"), "txn_id", max_chars=MAX_TXN_ID_CHARS)
    if txn_id is None:
        raise BadRequest("txn_id is required", field="txn_id")
    acks = _list_field(cmd, "ack")
    sends = _list_field(cmd, "send")
    publishes = _list_field(cmd, "publish")
    offsets = _list_field(cmd, "commit_offsets")
    seen = ctx.get(ctx.tables.txns, txn_id.encode())
    if seen is not None and seen["expire"] > ctx.now_ms:
        return {**seen["result"], "duplicate": True}

    stale: list[dict[str, Any]] = []
    acked = 0
    for i, item in enumerate(acks):
        if not isinstance(item, dict) or set(item) != {"queue", "receipt"}:
            raise BadRequest(f"ack[{i}] must be a map {{queue, receipt}}", field=f"ack[{i}]")
        queue = require_queue(ctx, item["queue"], field=f"ack[{i}].queue")
        meta = delivery.current_lease(ctx, queue, item["receipt"])
        if meta is None:
            stale.append({"queue": item["queue"], "receipt": item["receipt"]})
            continue
        messages.remove(ctx, queue, meta, keep_body=False)
        counters.bump(ctx, queue["id"], "acked_total")
        acked += 1
    if stale:
        # Raising aborts the nested transaction: the acks above are undone too.
        raise Conflict(
            f"transaction {txn_id!r} has {len(stale)} stale receipt(s); nothing was applied",
            stale=stale,
        )
    send_results = []
    for i, item in enumerate(sends):
        if not isinstance(item, dict) or set(item) != {"queue", "messages"}:
            raise BadRequest(f"send[{i}] must be a map {{queue, messages}}", field=f"send[{i}]")
        queue = require_queue(ctx, item["queue"], field=f"send[{i}].queue")
        batch = sending.check_batch(item["messages"], queue)
        send_results.append(
            {"queue": queue["name"], "messages": sending.enqueue(ctx, queue, batch)}
        )
    results: dict[str, Any] = {"send": send_results, "ack": acked}
    if publishes:  # topics (node/state/topics.py): only then in the result, as before
        results["publish"] = topics.txn_publish(ctx, publishes)
    if offsets:
        results["commit_offsets"] = groups.txn_commit_offsets(ctx, offsets)
    result = {"committed": True, "txn_id": txn_id, "results": results}
    expire = ctx.now_ms + TXN_DEDUP_WINDOW_MS
    ctx.put(ctx.tables.txns, txn_id.encode(), {"result": result, "expire": expire})
    ctx.txn.put(keys.expiry_key(expire, txn_id.encode()), b"", db=ctx.tables.txn_expiry)
    ctx.timer_added(TIMER_TXN_EXPIRY, expire)
    return {**result, "duplicate": False}


def expire_due(ctx: Ctx, limit: int) -> int:
    """Forget committed txn ids whose window ended; at most `limit` per call."""
    if ctx.nothing_due(TIMER_TXN_EXPIRY):
        return 0
    n = 0
    cur = ctx.txn.cursor(db=ctx.tables.txn_expiry)
    while n < limit and (key := ctx.first_due(cur, TIMER_TXN_EXPIRY)) is not None:
        txn_id = key[8:]
        entry = ctx.get(ctx.tables.txns, txn_id)
        if entry is not None and entry["expire"] == keys.read_u64(key):
            ctx.txn.delete(txn_id, db=ctx.tables.txns)
        cur.delete()
        n += 1
    return n
