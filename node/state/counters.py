"""Per-queue counters (depth, in_flight, delayed, totals), stored in node.counters.

Why buffered: one send or receive touches a queue's counters once per message; the
deltas are summed in the command's context and written once when the command finishes
(`flush`), which keeps a 1000-message batch from rewriting the same record 1000 times.
"""

from __future__ import annotations

from typing import Any

from node.state import keys
from node.state.tables import Ctx

# Order matters: it is the order of the stored (and hashed) map.
COUNTER_NAMES: tuple[str, ...] = (
    "depth",
    "in_flight",
    "delayed",
    "sent_total",
    "acked_total",
    "dead_lettered_total",
    "expired_total",
)


def zero() -> dict[str, int]:
    return dict.fromkeys(COUNTER_NAMES, 0)


def bump(ctx: Ctx, qid: int, name: str, delta: int = 1) -> None:
    pending = ctx.pending_counters.setdefault(qid, {})
    pending[name] = pending.get(name, 0) + delta


def flush(ctx: Ctx) -> None:
    """Write every buffered delta (order-independent: each queue's record is one put)."""
    for qid, deltas in ctx.pending_counters.items():
        key = keys.u64(qid)
        current = ctx.get(ctx.t.counters, key)
        if current is None:  # the queue was deleted within this command
            continue
        for name, delta in deltas.items():
            current[name] += delta
        ctx.put(ctx.t.counters, key, current)
    ctx.pending_counters.clear()


def read(ctx: Ctx, qid: int) -> dict[str, Any]:
    flush(ctx)
    current = ctx.get(ctx.t.counters, keys.u64(qid))
    return zero() if current is None else current
