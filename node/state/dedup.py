"""Idempotent produce: remembered dedup ids per queue, with an expiry index.

An entry outlives its message (a retry after the ack is still a duplicate) but not its
window: node.dedup_expiry orders entries by expiry so the table stays bounded without a
scan.
"""

from __future__ import annotations

from node.state import keys
from node.state.tables import Ctx


def stored(ctx: Ctx, key: bytes) -> tuple[int, int] | None:
    """(seq, expire_ms) under `key`, live or expired-but-not-yet-purged (live: expire > now).

    A fixed 16-byte record, not a msgpack map: one is written and read per message sent
    with a dedup id, on every replica. The message id is derived from the seq.
    """
    raw = ctx.txn.get(key, db=ctx.t.dedup)
    return None if raw is None else keys.split_dedup_record(raw)


def remember(ctx: Ctx, key: bytes, seq: int, window_ms: int, old: tuple[int, int] | None) -> None:
    """Store `key` (see keys.dedup_key) -> message `seq` for `window_ms`.

    `old` is what `stored` returned for that key just before (the caller read it to spot
    a duplicate); an expired one's expiry index record is replaced.
    """
    if old is not None:
        ctx.txn.delete(keys.expiry_key(old[1], key), db=ctx.t.dedup_expiry)
    expire = ctx.now_ms + window_ms
    ctx.txn.put(key, keys.dedup_record(seq, expire), db=ctx.t.dedup)
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
