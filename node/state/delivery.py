"""Receive, ack, nack and extend: leases on messages.

A receipt names one delivery (message id + lease number, tagged with an HMAC under the
cluster's receipt key: messages.receipt_of). It is valid only while that
delivery's lease is current: the message is in flight, the lease number matches and the
deadline has not passed. Anything else - expired, re-delivered, already acked, unknown,
malformed - is reported back as stale and changes nothing.
"""

from __future__ import annotations

from typing import Any

from node.state import counters, dead_letters, fields, keys, messages, queue_expiry
from node.state.queues import require_queue
from node.state.tables import Ctx


def receive(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("queue"))
    if queue.get("expires_s"):
        queue_expiry.touch(ctx, queue)
    max_n = fields.int_field(cmd.get("max", 1), "max", 1, fields.MAX_BATCH)
    vt = cmd.get("visibility_timeout_s")
    vt_ms = (
        queue["visibility_timeout_s"] * 1000
        if vt is None
        else fields.seconds_to_ms(vt, "visibility_timeout_s", 0, fields.MAX_VISIBILITY_TIMEOUT_S)
    )
    auto_ack = fields.bool_field(cmd.get("auto_ack", False), "auto_ack")
    qid = queue["id"]
    prefix = keys.u64(qid)
    deadline_ms = ctx.now_ms + vt_ms
    max_receives = queue["max_receives"]
    out: list[dict[str, Any]] = []
    leased = 0
    # One cursor walks node.ready: leasing deletes the key under it and steps to the next
    # candidate; any other outcome may write node.ready elsewhere, so the cursor re-seeks.
    cur = ctx.txn.cursor(db=ctx.tables.ready)
    cur.set_range(prefix)
    while len(out) < max_n:
        key = cur.key()  # b"" once the cursor ran off the end
        if not key.startswith(prefix):
            break
        _, seq = keys.split_ready_key(key)
        meta = messages.get(ctx, qid, seq)
        if meta["expire"] <= ctx.now_ms:  # retention ended but not yet released
            messages.remove(ctx, queue, meta, keep_body=False)
            counters.bump(ctx, qid, "expired_total")
            cur.set_range(prefix)
            continue
        if (
            max_receives > 0
            and meta["rc"] + 1 > max_receives
            and dead_letters.dead_letter(ctx, queue, meta)
        ):
            cur.set_range(prefix)
            continue
        meta["rc"] += 1
        meta["lease"] += 1
        out.append(
            {
                "id": meta["id"],
                "body": messages.body(ctx, seq),
                "attributes": meta["attrs"],
                "receipt": messages.receipt_of(ctx, queue["name"], meta),
                "receive_count": meta["rc"],
                "enqueued_at": meta["enq"],
                "group_id": meta["group"],
                "priority": meta["prio"],
                "seq": seq,
            }
        )
        if auto_ack:
            messages.remove(ctx, queue, meta, keep_body=False)
            counters.bump(ctx, qid, "acked_total")
            cur.set_range(prefix)
        else:
            messages.lease_at_cursor(ctx, cur, qid, meta, deadline_ms)
            leased += 1
    if leased:
        counters.bump(ctx, qid, "depth", -leased)
        counters.bump(ctx, qid, "in_flight", leased)
    return {"messages": out}


def current_lease(ctx: Ctx, queue: dict[str, Any], receipt: Any) -> dict[str, Any] | None:
    """The in-flight message a receipt names, if its lease is still current."""
    parsed = messages.parse_receipt(ctx, queue["name"], receipt)
    if parsed is None:
        return None
    seq, lease = parsed
    meta = messages.get(ctx, queue["id"], seq)
    if (
        meta is None
        or meta["state"] != messages.IN_FLIGHT
        or meta["lease"] != lease
        or meta["deadline"] <= ctx.now_ms
    ):
        return None
    return meta


def ack(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("queue"))
    qid, fifo = queue["id"], queue["fifo"]
    stale = []
    acked = 0
    for receipt in fields.receipts(cmd.get("receipts")):
        meta = current_lease(ctx, queue, receipt)
        if meta is None:
            stale.append(receipt)
            continue
        if fifo:  # promotes the group's next head (and counts it out of in_flight)
            messages.remove(ctx, queue, meta, keep_body=False)
        else:
            messages.drop_leased(ctx, qid, meta)
        acked += 1
    if acked:
        counters.bump(ctx, qid, "acked_total", acked)
        if not fifo:
            counters.bump(ctx, qid, "in_flight", -acked)
    return {"acked": acked, "stale": stale}


def nack(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("queue"))
    receipts = fields.receipts(cmd.get("receipts"))
    delay = cmd.get("delay_s")
    delay_ms = 0 if delay is None else fields.seconds_to_ms(delay, "delay_s", 0, fields.MAX_DELAY_S)
    stale = []
    nacked = 0
    for receipt in receipts:
        meta = current_lease(ctx, queue, receipt)
        if meta is None:
            stale.append(receipt)
            continue
        if delay_ms > 0:
            messages.transition(ctx, queue, meta, messages.DELAYED, ctx.now_ms + delay_ms)
        else:
            messages.transition(ctx, queue, meta, messages.READY)
        nacked += 1
    return {"nacked": nacked, "stale": stale}


def extend(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    queue = require_queue(ctx, cmd.get("queue"))
    receipts = fields.receipts(cmd.get("receipts"))
    vt = cmd.get("visibility_timeout_s")
    vt_ms = (
        queue["visibility_timeout_s"] * 1000
        if vt is None
        else fields.seconds_to_ms(vt, "visibility_timeout_s", 0, fields.MAX_VISIBILITY_TIMEOUT_S)
    )
    stale = []
    extended = 0
    for receipt in receipts:
        meta = current_lease(ctx, queue, receipt)
        if meta is None:
            stale.append(receipt)
            continue
        messages.transition(ctx, queue, meta, messages.IN_FLIGHT, ctx.now_ms + vt_ms)
        extended += 1
    return {"extended": extended, "stale": stale}
