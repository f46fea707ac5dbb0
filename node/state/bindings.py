"""Binding keys of node.bindings and its reverse index node.queue_bindings.

Layout:
  node.bindings:       exchange NUL queue NUL digest -> the binding {"queue", ...}
  node.queue_bindings: queue NUL exchange NUL digest -> b""

`digest` is 16 bytes of SHA-256 over the binding's canonical msgpack, so a binding is
identified by what it says (binding the same thing twice is one binding) and keys stay
short whatever its routing key or headers. Names never hold NUL (the queue-name rule),
so a prefix scan of one exchange (or one queue) never reaches another's.

Why apart from exchanges.py: deleting a queue (queues.py) removes its bindings, and
exchanges.py imports queues.py, so this small module is what both can import.
"""

from __future__ import annotations

import hashlib
from typing import Any

from node.state.tables import Ctx, unpack
from raft.messages import pack

SEP = b"\x00"


def digest(binding: dict[str, Any]) -> bytes:
    return hashlib.sha256(pack(binding)).digest()[:16]


def binding_key(exchange: str, queue: str, dig: bytes) -> bytes:
    return exchange.encode() + SEP + queue.encode() + SEP + dig


def reverse_key(exchange: str, queue: str, dig: bytes) -> bytes:
    return queue.encode() + SEP + exchange.encode() + SEP + dig


def _keys_with_prefix(ctx: Ctx, db: Any, prefix: bytes) -> list[bytes]:
    out = []
    cur = ctx.txn.cursor(db=db)
    if cur.set_range(prefix):
        for key in cur.iternext(values=False):
            if not key.startswith(prefix):
                break
            out.append(bytes(key))
    return out


def of_exchange(ctx: Ctx, exchange: str) -> list[tuple[bytes, dict[str, Any]]]:
    """(key, binding) of every binding of `exchange`, in key order (queue name, digest)."""
    prefix = exchange.encode() + SEP
    out = []
    cur = ctx.txn.cursor(db=ctx.tables.bindings)
    if cur.set_range(prefix):
        for key, value in cur.iternext():
            if not key.startswith(prefix):
                break
            out.append((bytes(key), unpack(value)))
    return out


def remove(ctx: Ctx, exchange: str, queue: str, dig: bytes) -> bool:
    ctx.txn.delete(reverse_key(exchange, queue, dig), db=ctx.tables.queue_bindings)
    return bool(ctx.txn.delete(binding_key(exchange, queue, dig), db=ctx.tables.bindings))


def drop_queue(ctx: Ctx, queue: str) -> dict[str, int]:
    """Remove every binding to `queue` (it is being deleted) and lower each exchange's
    binding count; answers how many went, per exchange."""
    dropped: dict[str, int] = {}
    for key in _keys_with_prefix(ctx, ctx.tables.queue_bindings, queue.encode() + SEP):
        rest = key[len(queue.encode()) + 1 :]
        exchange_raw, _, dig = rest.partition(SEP)
        exchange = exchange_raw.decode()
        ctx.txn.delete(key, db=ctx.tables.queue_bindings)
        ctx.txn.delete(binding_key(exchange, queue, dig), db=ctx.tables.bindings)
        dropped[exchange] = dropped.get(exchange, 0) + 1
    for exchange in sorted(dropped):
        record = ctx.get(ctx.tables.exchanges, exchange.encode())
        if record is not None:
            record["bindings"] -= dropped[exchange]
            ctx.put(ctx.tables.exchanges, exchange.encode(), record)
    return dropped


def drop_exchange(ctx: Ctx, exchange: str) -> int:
    """Remove every binding of `exchange` (it is being deleted); answers how many."""
    n = 0
    prefix = exchange.encode() + SEP
    for key in _keys_with_prefix(ctx, ctx.tables.bindings, prefix):
        queue_raw, _, dig = key[len(prefix) :].partition(SEP)
        ctx.txn.delete(key, db=ctx.tables.bindings)
        ctx.txn.delete(reverse_key(exchange, queue_raw.decode(), dig), db=ctx.tables.queue_bindings)
        n += 1
    return n
