"""Queues that delete themselves after `expires_s` unused (RabbitMQ's x-expires).

Why: a request-reply client makes a reply queue per request; if it dies before deleting
it, the queue must not stay forever. A queue with `expires_s` set is deleted by the first
`tick` applied once `expires_s` passed since it was last used - created or re-declared
(queue_put), sent to (any send: plain, transactional, through an exchange) or received
from (a receive command; a long-poll that waits without proposing one does not count).
Only applied commands and their stamps decide, so every replica deletes it at the same
entry.

Layout: node.queue_used[qid] = u64 last use (ms), written by `touch` (one put: the hot
paths pay nothing else); node.queue_expiry holds (u64 deadline, u64 qid) -> b"", written
when a queue is declared. An entry that comes due is checked lazily: if the queue was used
since, the entry moves to the new deadline instead (dedup.py's expiry index works alike).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.errors import Conflict
from node.state import keys
from node.state.tables import Ctx

#: Queues deleted at most per tick (the rest go with the next one).
EXPIRE_LIMIT = 100


def touch(ctx: Ctx, queue: dict[str, Any]) -> None:
    """`queue` was used now: its expiry moves to now + expires_s."""
    ctx.txn.put(keys.u64(queue["id"]), keys.u64(ctx.now_ms), db=ctx.tables.queue_used)


def declared(ctx: Ctx, queue: dict[str, Any]) -> None:
    """`queue` was created or re-declared: used now, and an expiry entry at its deadline."""
    touch(ctx, queue)
    at = ctx.now_ms + queue["expires_s"] * 1000
    ctx.txn.put(keys.u64(at) + keys.u64(queue["id"]), b"", db=ctx.tables.queue_expiry)


def forget(ctx: Ctx, qid: int) -> None:
    """The queue is deleted: its last use goes (a due expiry entry then finds no queue)."""
    ctx.txn.delete(keys.u64(qid), db=ctx.tables.queue_used)


def next_deadline_ms(ctx: Ctx) -> int | None:
    cur = ctx.txn.cursor(db=ctx.tables.queue_expiry)
    return keys.read_u64(cur.key()) if cur.first() else None


def expire_due(ctx: Ctx, delete: Callable[[Ctx, dict[str, Any]], Any]) -> list[str]:
    """Delete the queues whose expiry is due at ctx.now_ms; answers their names.

    `delete` is queues.queue_delete (passed in: queues.py imports this module). A queue
    that is another's dead-letter queue cannot be deleted: it waits another expires_s.
    """
    expired: list[str] = []
    cur = ctx.txn.cursor(db=ctx.tables.queue_expiry)
    for _ in range(EXPIRE_LIMIT):
        if not cur.first():
            break
        key = bytes(cur.key())
        at, qid = keys.read_u64(key), keys.read_u64(key, 8)
        if at > ctx.now_ms:
            break
        cur.delete()
        raw_name = ctx.txn.get(keys.u64(qid), db=ctx.tables.queue_ids)
        queue = None if raw_name is None else ctx.get(ctx.tables.queues, bytes(raw_name))
        if queue is None or not queue.get("expires_s"):
            continue  # deleted, or no longer expiring
        used = ctx.txn.get(keys.u64(qid), db=ctx.tables.queue_used)
        deadline = (0 if used is None else keys.read_u64(used)) + queue["expires_s"] * 1000
        if deadline <= ctx.now_ms:
            try:
                delete(ctx, {"name": queue["name"]})
                expired.append(queue["name"])
                continue
            except Conflict:  # a dead-letter queue still in use: try again later
                deadline = ctx.now_ms + queue["expires_s"] * 1000
        ctx.txn.put(keys.u64(deadline) + keys.u64(qid), b"", db=ctx.tables.queue_expiry)
    return expired
