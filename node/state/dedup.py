"""Idempotent produce: remembered dedup ids per queue, with an expiry index.

An entry outlives its message (a retry after the ack is still a duplicate) but not its
window: node.dedup_expiry orders entries by expiry so the table stays bounded without a
scan.
"""

from __future__ import annotations

from typing import Any

from node.state import keys
from node.state.tables import Ctx


def stored(ctx: Ctx, key: bytes) -> dict[str, Any] | None:
    """The entry under `key`, live or expired-but-not-yet-purged (live: expire > now)."""
    return ctx.get(ctx.t.dedup, key)


def remember(
    ctx: Ctx,
    qid: int,
    dedup_id: str,
    ident: str,
    seq: int,
    window_ms: int,
    old: dict[str, Any] | None,
) -> None:
    """Store (queue, dedup id) -> message for `window_ms`.

    `old` is what `stored` returned for that key just before (the caller read it to spot
    a duplicate); an expired one's expiry index record is replaced.
    """
    key = keys.dedup_key(qid, dedup_id)
    if old is not None:
        ctx.txn.delete(keys.expiry_key(old["expire"], key), db=ctx.t.dedup_expiry)
    expire = ctx.now_ms + window_ms
    ctx.put(ctx.t.dedup, key, {"id": ident, "seq": seq, "expire": expire})
    ctx.txn.put(keys.expiry_key(expire, key), b"", db=ctx.t.dedup_expiry)


def expire_due(ctx: Ctx, limit: int) -> int:
    """Forget entries whose window ended; at most `limit` per call."""
    n = 0
    cur = ctx.txn.cursor(db=ctx.t.dedup_expiry)
    while n < limit and cur.first():
        key = cur.key()
        if keys.read_u64(key) > ctx.now_ms:
            break
        ctx.txn.delete(key[8:], db=ctx.t.dedup)
        cur.delete()
        n += 1
    return n
