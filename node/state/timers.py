"""Release of due work before each command: retention, leases, delays, dedup windows.

Every deadline lives in a sub-db keyed by (deadline, queue id, seq), so "what is due"
is a prefix of a cursor walk, never a scan of all messages. Each category releases at
most RELEASE_LIMIT entries per command so one command stays bounded; the rest is
released by the next command or tick (next_deadline_ms says when that is), and every
receipt check compares the deadline itself, so a late release is never observable as
an accepted stale ack. Each index's floor (Ctx.floors) lets a command with nothing due
skip the index without a cursor.
"""

from __future__ import annotations

from typing import Any

from node.state import counters, dedup, keys, messages, streams, transactions
from node.state.tables import TIMER_DELAYED, TIMER_LEASES, TIMER_RETENTION, Ctx

RELEASE_LIMIT = 10_000


def _due(ctx: Ctx, db: Any, index: int) -> tuple[int, int] | None:
    """(qid, seq) of the earliest entry of a timer index if it is due.

    Most commands find nothing due; the index's floor (see Ctx.floors) says so without a
    cursor (7% fewer instructions per 1-message send, callgrind).
    """
    if ctx.nothing_due(index):
        return None
    key = ctx.first_due(ctx.txn.cursor(db=db), index)
    if key is None:
        return None
    _at, qid, seq = keys.split_timer_key(key)
    return qid, seq


def _queue_of(ctx: Ctx, cache: dict[int, dict[str, Any]], qid: int) -> dict[str, Any]:
    queue = cache.get(qid)
    if queue is None:
        name = ctx.txn.get(keys.u64(qid), db=ctx.tables.queue_ids)
        queue = ctx.get(ctx.tables.queues, bytes(name))
        cache[qid] = queue
    return queue


def release_due(ctx: Ctx, limit: int | None = None) -> dict[str, int]:
    """Release what is due at ctx.now_ms (at most `limit` per category)."""
    if limit is None:
        limit = RELEASE_LIMIT
    cache: dict[int, dict[str, Any]] = {}
    expired = leases = delayed = 0
    while expired < limit and (due := _due(ctx, ctx.tables.retention, TIMER_RETENTION)) is not None:
        queue = _queue_of(ctx, cache, due[0])
        meta = messages.get(ctx, due[0], due[1])
        messages.remove(ctx, queue, meta, keep_body=False)
        counters.bump(ctx, queue["id"], "expired_total")
        expired += 1
    while leases < limit and (due := _due(ctx, ctx.tables.leases, TIMER_LEASES)) is not None:
        queue = _queue_of(ctx, cache, due[0])
        meta = messages.get(ctx, due[0], due[1])
        messages.transition(ctx, queue, meta, messages.READY)
        leases += 1
    while delayed < limit and (due := _due(ctx, ctx.tables.delayed, TIMER_DELAYED)) is not None:
        queue = _queue_of(ctx, cache, due[0])
        meta = messages.get(ctx, due[0], due[1])
        messages.transition(ctx, queue, meta, messages.READY)
        delayed += 1
    dedup_expired = dedup.expire_due(ctx, limit)
    txns_expired = transactions.expire_due(ctx, limit)
    streams.expire_due(ctx, limit)  # topic retention, group sessions (not in the result)
    return {
        "expired": expired,
        "leases_expired": leases,
        "delays_ended": delayed,
        "dedup_expired": dedup_expired,
        "txns_expired": txns_expired,
    }


def next_deadline_ms(ctx: Ctx) -> int | None:
    """The earliest lease / delay / retention / queue-expiry / topic timer deadline (dedup
    expiry is not urgent). Queue expiry (node/state/queue_expiry.py) happens in ticks only."""
    earliest = None
    for db in (
        ctx.tables.retention,
        ctx.tables.leases,
        ctx.tables.delayed,
        ctx.tables.queue_expiry,
        ctx.tables.topic_timers,
    ):
        cur = ctx.txn.cursor(db=db)
        if cur.first():
            at = keys.read_u64(cur.key())
            earliest = at if earliest is None else min(earliest, at)
    return earliest
