"""Idempotent producer sessions: (producer id, epoch, seq) per queue.

Why: a client that retries a send after a timeout or a leader change must not enqueue
twice, even without per-message dedup ids. The session of (producer, queue) remembers
the last seq and its result: a repeat of that seq answers the same result marked
duplicate; a gap or a reorder is refused (out_of_order_sequence); a zombie producer with
an older epoch than the latest producer_init is fenced (producer_fenced).

Layout in node.producers:
  b"P" + producer id           -> {"epoch"}                    (latest epoch)
  b"S" + qid(8) + producer id  -> {"epoch", "seq", "result"}   (per-queue session)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.errors import BadRequest, OutOfOrderSequence, ProducerFenced
from node.state import fields, keys, sending
from node.state.tables import META_NEXT_PRODUCER, Ctx

MAX_EPOCH = (1 << 31) - 1
MAX_SEQ = (1 << 63) - 1
MAX_PRODUCER_ID_CHARS = fields.MAX_ID_CHARS + fields.MAX_SCOPE_CHARS


def _producer_key(producer_id: str) -> bytes:
    return b"P" + producer_id.encode()


def _session_key(qid: int, producer_id: str) -> bytes:
    return b"S" + keys.u64(qid) + producer_id.encode()


def producer_init(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """A new producer id at epoch 0, or the next epoch of an existing one (fencing the old)."""
    producer_id = fields.optional_id(cmd.get("producer_id"), "producer_id", MAX_PRODUCER_ID_CHARS)
    if producer_id is None:
        # a new id, in the caller's namespace when the API gives one ("user/", node/auth.py)
        scope = fields.optional_id(cmd.get("scope"), "scope", fields.MAX_SCOPE_CHARS) or ""
        producer_id = f"{scope}p{ctx.next_counter(META_NEXT_PRODUCER):016x}"
    record = ctx.get(ctx.tables.producers, _producer_key(producer_id))
    epoch = 0 if record is None else record["epoch"] + 1
    if epoch > MAX_EPOCH:
        raise BadRequest("producer epoch exhausted; use a new producer id", field="producer_id")
    ctx.put(ctx.tables.producers, _producer_key(producer_id), {"epoch": epoch})
    return {"producer_id": producer_id, "epoch": epoch}


def check_producer(value: Any) -> tuple[str, int, int]:
    if not isinstance(value, dict):
        raise BadRequest("producer must be a map {id, epoch, seq}", field="producer")
    producer_id = fields.optional_id(value.get("id"), "producer.id", MAX_PRODUCER_ID_CHARS)
    if producer_id is None:
        raise BadRequest("producer.id is required", field="producer.id")
    epoch = fields.int_field(value.get("epoch"), "producer.epoch", 0, MAX_EPOCH)
    seq = fields.int_field(value.get("seq"), "producer.seq", 0, MAX_SEQ)
    return producer_id, epoch, seq


def send_with_session(
    ctx: Ctx, queue: dict[str, Any], batch: list[dict[str, Any]], producer: Any
) -> dict[str, Any]:
    """Enqueue `batch` once per (producer, epoch, seq) in the producer's session with
    `queue` (run_with_session has the rules)."""
    return run_with_session(
        ctx,
        lambda producer_id: _session_key(queue["id"], producer_id),
        producer,
        lambda: {"messages": sending.enqueue(ctx, queue, batch)},
        "messages",
    )


def drop_sessions(ctx: Ctx, qid: int) -> None:
    """Forget every producer session of a deleted queue."""
    drop_prefix(ctx, b"S" + keys.u64(qid))


def topic_session_key(topic_id: int, producer_id: str) -> bytes:
    """node.producers: a producer's session with one topic (its seqs count appends to it)."""
    return b"T" + keys.u64(topic_id) + producer_id.encode()


def run_with_session(
    ctx: Ctx,
    session_key: Callable[[str], bytes],
    producer: Any,
    run: Callable[[], dict[str, Any]],
    items: str,
) -> dict[str, Any]:
    """`run()` once per (producer, epoch, seq) in the session `session_key(producer id)`
    (a queue's or a topic's): a repeat of the last seq answers its result with every item
    of `result[items]` marked duplicate; a gap is out_of_order_sequence; an older epoch
    than the latest producer_init or session is fenced (producer_fenced). A new session
    (or a new epoch) starts at whatever seq the producer sends first."""
    producer_id, epoch, seq = check_producer(producer)
    record = ctx.get(ctx.tables.producers, _producer_key(producer_id))
    latest_epoch = -1 if record is None else record["epoch"]
    skey = session_key(producer_id)
    session = ctx.get(ctx.tables.producers, skey)
    if session is not None:
        latest_epoch = max(latest_epoch, session["epoch"])
    if epoch < latest_epoch:
        raise ProducerFenced(
            f"producer {producer_id!r} epoch {epoch} is fenced by epoch {latest_epoch}",
            producer_id=producer_id,
            epoch=latest_epoch,
        )
    if session is not None and session["epoch"] == epoch:
        if seq == session["seq"]:
            return {items: [{**m, "duplicate": True} for m in session["result"][items]]}
        if seq != session["seq"] + 1:
            raise OutOfOrderSequence(
                f"producer {producer_id!r} sent seq {seq}; expected {session['seq'] + 1}",
                expected_seq=session["seq"] + 1,
                last_seq=session["seq"],
            )
    if record is None or record["epoch"] < epoch:
        ctx.put(ctx.tables.producers, _producer_key(producer_id), {"epoch": epoch})
    result = run()
    ctx.put(ctx.tables.producers, skey, {"epoch": epoch, "seq": seq, "result": result})
    return result


def drop_prefix(ctx: Ctx, prefix: bytes) -> None:
    """Forget every producer session whose key starts with `prefix`."""
    cur = ctx.txn.cursor(db=ctx.tables.producers)
    cur.set_range(prefix)
    while True:
        key = cur.key()
        if not key or not key.startswith(prefix):
            break
        cur.delete()
