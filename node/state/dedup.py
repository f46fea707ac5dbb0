"""Idempotent produce: remembered dedup ids per queue, with an expiry index.

An entry outlives its message (a retry after the ack is still a duplicate) but not its
window: node.dedup_expiry orders entries by expiry so the table stays bounded without a
scan. Every id one send remembers shares its expiry (stamp + window), so one expiry record
per send lists them all: one index write per send instead of one per message. Its key is
(expiry, queue id, seq of the send's first new message): sends that share a stamp (many do,
under load) write records of their own instead of rewriting one growing list. Two older
layouts still expire: (expiry, queue id) -> ids, and (expiry, full dedup key) -> b''.
"""

from __future__ import annotations

import msgpack

from node.state import keys
from node.state.tables import TIMER_DEDUP_EXPIRY, Ctx
from raft.messages import pack


def stored(ctx: Ctx, key: bytes) -> tuple[int, int] | None:
    """(seq, expire_ms) under `key`, live or expired-but-not-yet-purged (live: expire > now).

    A fixed 16-byte record, not a msgpack map: one is written and read per message sent
    with a dedup id, on every replica. The message id is derived from the seq.
    """
    raw = ctx.txn.get(key, db=ctx.tables.dedup)
    return None if raw is None else keys.split_dedup_record(raw)


def claim(ctx: Ctx, key: bytes, seq: int, expire: int) -> bool:
    """Store `key` (see keys.dedup_key) -> message `seq` until `expire` if `key` is unknown.

    True when stored. False when a record is there already, live or expired-but-not-yet-
    purged: the caller reads it with `stored` and, if expired, takes it over with
    `remember`. A new id, the common case, costs one B-tree descent instead of a get and
    a put. The caller indexes the expiry with `index_expiry`, once per send.
    """
    record = keys.dedup_record(seq, expire)
    return bool(ctx.txn.put(key, record, db=ctx.tables.dedup, overwrite=False))


def claim_all(ctx: Ctx, claims: list[tuple[bytes, bytes]]) -> bool:
    """Store every (dedup key, dedup record) of `claims` if none of the keys is known.

    True when all were new and are now stored: the common case, one `putmulti` for the
    whole send instead of one `claim` per message. Otherwise nothing is left changed
    (the records this call added are deleted again: each holds a fresh seq that no
    earlier record can hold) and False tells the caller to claim one by one, which
    handles duplicates, expired records and an id repeated within the batch.
    """
    _consumed, added = ctx.txn.cursor(db=ctx.tables.dedup).putmulti(claims, overwrite=False)
    if added == len(claims):
        return True
    for key, record in claims:
        if ctx.txn.get(key, db=ctx.tables.dedup) == record:
            ctx.txn.delete(key, db=ctx.tables.dedup)
    return False


def remember(ctx: Ctx, key: bytes, seq: int, expire: int, old: tuple[int, int]) -> None:
    """Replace the expired record `old` of `key` with message `seq` until `expire`.

    An expired `old` may still be listed in an older expiry record: `expire_due` skips it
    there, as the stored expiry no longer matches.
    """
    ctx.txn.delete(keys.expiry_key(old[1], key), db=ctx.tables.dedup_expiry)  # older format
    ctx.txn.put(key, keys.dedup_record(seq, expire), db=ctx.tables.dedup)


def index_expiry(ctx: Ctx, qid: int, expire: int, first_seq: int, dedup_ids: list[str]) -> None:
    """List `dedup_ids` of queue `qid` (just remembered until `expire`) for expiry.

    `first_seq` (the seq of the send's first new message) makes the key unique per send.
    """
    if dedup_ids:
        key = keys.expiry_key(expire, keys.u64(qid) + keys.u64(first_seq))
        ctx.txn.put(key, pack(dedup_ids), db=ctx.tables.dedup_expiry)
        ctx.timer_added(TIMER_DEDUP_EXPIRY, expire)


def drop_expiry_records(ctx: Ctx, qid: int, expire: int) -> None:
    """Delete every per-send expiry record of queue `qid` ending at `expire` (queue delete)."""
    prefix = keys.expiry_key(expire, keys.u64(qid))
    cur = ctx.txn.cursor(db=ctx.tables.dedup_expiry)
    while cur.set_range(prefix) and cur.key()[: len(prefix)] == prefix:
        cur.delete()


def expire_due(ctx: Ctx, limit: int) -> int:
    """Forget entries whose window ended; stops after the record that reaches `limit`."""
    if ctx.nothing_due(TIMER_DEDUP_EXPIRY):
        return 0
    n = 0
    dedup_db = ctx.tables.dedup
    cur = ctx.txn.cursor(db=ctx.tables.dedup_expiry)
    while n < limit and (key := ctx.first_due(cur, TIMER_DEDUP_EXPIRY)) is not None:
        expire = keys.read_u64(key)
        listed = cur.value()
        if not listed:  # oldest format: one record per dedup key
            ctx.txn.delete(key[8:], db=dedup_db)
            n += 1
        else:
            ident = key[8:16]  # the queue id; a seq may follow
            for dedup_id in msgpack.unpackb(listed, raw=False):
                dedup_key = ident + dedup_id.encode()
                raw = ctx.txn.get(dedup_key, db=dedup_db)
                if raw is not None and keys.split_dedup_record(raw)[1] == expire:
                    ctx.txn.delete(dedup_key, db=dedup_db)
                    n += 1
        cur.delete()
    return n
