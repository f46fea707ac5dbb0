"""Dead-letter moves and redrive.

A message moved to a dead-letter queue keeps its id, seq, body and receive_count and
remembers its source queue's name; redrive sends it back there with receive_count 0.
"""

from __future__ import annotations

from typing import Any

from node.state import counters, keys, messages
from node.state.tables import Ctx


def _move(
    ctx: Ctx,
    source: dict[str, Any],
    target: dict[str, Any],
    meta: dict[str, Any],
    *,
    source_queue: str | None,
    receive_count: int,
) -> None:
    messages.remove(ctx, source, meta, keep_body=True)
    moved = messages.new_meta(
        seq=meta["seq"],
        ident=meta["id"],
        enqueued_at=meta["enq"],
        expire_ms=ctx.now_ms + target["retention_s"] * 1000,
        priority=meta["prio"],
        group_id=meta["group"],
        attributes=meta["attrs"],
        dedup_id=meta["dedup"],
        source_queue=source_queue,
        receive_count=receive_count,
        lease=meta["lease"],
    )
    messages.insert(ctx, target, moved, None, 0)


def dead_letter(ctx: Ctx, queue: dict[str, Any], meta: dict[str, Any]) -> bool:
    """Move a message to its queue's dead-letter queue; False if there is none."""
    dlq_name = queue["dead_letter_queue"]
    dlq = None if dlq_name is None else ctx.get(ctx.tables.queues, dlq_name.encode())
    if dlq is None:
        return False
    _move(
        ctx,
        queue,
        dlq,
        meta,
        source_queue=meta["src"] or queue["name"],
        receive_count=meta["rc"],
    )
    counters.bump(ctx, queue["id"], "dead_lettered_total")
    return True


def redrive(ctx: Ctx, dlq: dict[str, Any]) -> int:
    """Move every message not in flight back to its source queue (if that still exists)."""
    qid = dlq["id"]
    prefix = keys.u64(qid)
    position = keys.message_key(qid, 0)
    sources: dict[str, dict[str, Any] | None] = {}
    moved = 0
    while True:
        cur = ctx.txn.cursor(db=ctx.tables.messages)
        if not cur.set_range(position):
            break
        key = cur.key()
        if not key.startswith(prefix):
            break
        seq = keys.read_u64(key, 8)
        position = keys.message_key(qid, seq + 1)
        meta = messages.decode_meta(cur.value())
        src_name = meta["src"]
        if src_name is None or meta["state"] == messages.IN_FLIGHT:
            continue
        if src_name not in sources:
            sources[src_name] = ctx.get(ctx.tables.queues, src_name.encode())
        source = sources[src_name]
        if source is None or source["fifo"] != dlq["fifo"]:
            continue
        _move(ctx, dlq, source, meta, source_queue=None, receive_count=0)
        moved += 1
    return moved
