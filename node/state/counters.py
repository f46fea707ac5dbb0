"""Per-queue counters (depth, in_flight, delayed, totals), stored in node.counters.

Why buffered: one send or receive touches a queue's counters once per message; the
deltas are summed in the command's context and written once when the command finishes
(`flush`), which keeps a 1000-message batch from rewriting the same record 1000 times.
"""

from __future__ import annotations

import struct
from typing import Any

from node.state import keys
from node.state.tables import Ctx, unpack

# Order matters: it is the order of the stored (and hashed) fields.
COUNTER_NAMES: tuple[str, ...] = (
    "depth",
    "in_flight",
    "delayed",
    "sent_total",
    "acked_total",
    "dead_lettered_total",
    "expired_total",
)


_RECORD = struct.Struct(f">{len(COUNTER_NAMES)}q")
_POSITION = {name: i for i, name in enumerate(COUNTER_NAMES)}


def zero() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)


def encode(values: dict[str, int]) -> bytes:
    """A queue's counters as fixed-width fields in COUNTER_NAMES order.

    Why not a msgpack map: the record is read and rewritten once per command on every
    replica; a map decode and encode cost several times the struct's. Records that
    earlier versions wrote as maps still decode.
    """
    return _RECORD.pack(*[values[name] for name in COUNTER_NAMES])


def _fields(raw: bytes) -> list[int]:
    """The stored values in COUNTER_NAMES order, from either record format."""
    if len(raw) == _RECORD.size:
        return list(_RECORD.unpack(raw))
    legacy = unpack(raw)  # a map, written by an earlier version
    return [legacy[name] for name in COUNTER_NAMES]


def decode(raw: bytes) -> dict[str, int]:
    return dict(zip(COUNTER_NAMES, _fields(raw), strict=True))


def store(ctx: Ctx, qid: int, values: dict[str, int]) -> None:
    ctx.txn.put(keys.u64(qid), encode(values), db=ctx.tables.counters)


def bump(ctx: Ctx, qid: int, name: str, delta: int = 1) -> None:
    pending = ctx.pending_counters.setdefault(qid, {})
    pending[name] = pending.get(name, 0) + delta


def flush(ctx: Ctx) -> None:
    """Write every buffered delta (order-independent: each queue's record is one put)."""
    db = ctx.tables.counters
    for qid, deltas in ctx.pending_counters.items():
        key = keys.u64(qid)
        raw = ctx.txn.get(key, db=db)
        if raw is None:  # the queue was deleted within this command
            continue
        fields = _fields(raw)
        for name, delta in deltas.items():
            fields[_POSITION[name]] += delta
        ctx.txn.put(key, _RECORD.pack(*fields), db=db)
    ctx.pending_counters.clear()


def read(ctx: Ctx, qid: int) -> dict[str, Any]:
    flush(ctx)
    raw = ctx.txn.get(keys.u64(qid), db=ctx.tables.counters)
    return zero() if raw is None else decode(raw)
