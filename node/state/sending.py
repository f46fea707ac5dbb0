"""The send op: validate a batch, deduplicate, enqueue (ready or delayed)."""

from __future__ import annotations

import hashlib
from typing import Any

from node.errors import BadRequest, TooLarge
from node.state import counters, dedup, fields, keys, messages, queue_expiry
from node.state.tables import META_NEXT_SEQ, Ctx

MESSAGE_FIELDS = frozenset({"body", "attributes", "delay_s", "dedup_id", "group_id", "priority"})


def check_message(msg: Any, i: int, queue: dict[str, Any]) -> dict[str, Any]:
    """Validate one message of a batch; the result is normalised (defaults filled).

    Runs for every message on every replica, so the common case (a body, maybe a dedup
    id, nothing else) takes no detour; field names for errors are built only on error.
    """
    if not isinstance(msg, dict):
        raise BadRequest(f"messages[{i}] must be a map", field=f"messages[{i}]")
    if not MESSAGE_FIELDS.issuperset(msg):
        key = next(k for k in msg if k not in MESSAGE_FIELDS)
        raise BadRequest(
            f"messages[{i}] has unknown field {str(key)[:40]!r}", field=f"messages[{i}].{key}"
        )
    body = msg.get("body")
    if type(body) is not bytes:
        raise BadRequest(f"messages[{i}].body must be bytes", field=f"messages[{i}].body")
    if len(body) > queue["max_message_bytes"]:
        raise TooLarge(
            f"messages[{i}].body is {len(body)} bytes; queue {queue['name']!r} allows "
            f"{queue['max_message_bytes']}",
            index=i,
        )
    delay = msg.get("delay_s")
    delay_ms = (
        0
        if delay is None
        else fields.seconds_to_ms(delay, f"messages[{i}].delay_s", 0, fields.MAX_DELAY_S)
    )
    priority = msg.get("priority")
    if priority is None:
        priority = 0
    else:
        priority = fields.int_field(priority, f"messages[{i}].priority", 0, 9)
    group_id = msg.get("group_id")
    if group_id is not None:
        if not fields.valid_id(group_id):
            raise fields.bad_id(f"messages[{i}].group_id")
    elif queue["fifo"]:
        raise BadRequest(
            f"messages[{i}].group_id is required on a FIFO queue", field=f"messages[{i}].group_id"
        )
    dedup_id = msg.get("dedup_id")
    if dedup_id is not None:
        if not fields.valid_id(dedup_id):
            raise fields.bad_id(f"messages[{i}].dedup_id")
    elif queue["content_based_dedup"]:
        dedup_id = hashlib.sha256(body).hexdigest()
    attrs = msg.get("attributes")
    return {
        "body": body,
        "attributes": {}
        if attrs is None
        else fields.attributes(attrs, f"messages[{i}].attributes"),
        # A per-message delay wins when given (> 0); otherwise the queue's delay applies.
        "delay_ms": delay_ms if delay_ms > 0 else queue["delay_s"] * 1000,
        "dedup_id": dedup_id,
        "group_id": group_id,
        "priority": priority,
    }


def check_batch(value: Any, queue: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise BadRequest("messages must be a non-empty list", field="messages")
    if len(value) > fields.MAX_BATCH:
        raise TooLarge(f"batch of {len(value)} messages exceeds {fields.MAX_BATCH}")
    return [check_message(m, i, queue) for i, m in enumerate(value)]


def _claim_all(ctx: Ctx, qid: int, batch: list[dict[str, Any]], last_seq: int, expire: int) -> bool:
    """Claim every dedup id of the batch at once if none is known (see dedup.claim_all)."""
    claims = [
        (keys.dedup_key(qid, msg["dedup_id"]), keys.dedup_record(last_seq + i, expire))
        for i, msg in enumerate(batch, 1)
        if msg["dedup_id"] is not None
    ]
    return bool(claims) and dedup.claim_all(ctx, claims)


def enqueue(ctx: Ctx, queue: dict[str, Any], batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Enqueue validated messages; a live dedup id answers the original id instead.

    Sequence numbers and the sent counter are read and written once per batch, not once
    per message: the stored result is the same, with two LMDB operations less per message.
    Likewise the dedup ids are first claimed all at once, assuming none is known (message
    i then gets seq last + 1 + i); only if one is known are they claimed one by one.
    """
    qid = queue["id"]
    if queue.get("expires_s"):
        queue_expiry.touch(ctx, queue)
    window_ms = queue["dedup_window_s"] * 1000
    expire_ms = ctx.now_ms + queue["retention_s"] * 1000
    dedup_expire = ctx.now_ms + window_ms
    remembered_ids: list[str] = []
    last_seq = seq = ctx.get_int(META_NEXT_SEQ)
    all_claimed = window_ms > 0 and _claim_all(ctx, qid, batch, last_seq, dedup_expire)
    grouped = queue["fifo"]  # FIFO groups: each insert reads the group's earlier ones
    new_messages: list[tuple[dict[str, Any], bytes, int]] = []
    results = []
    for msg in batch:
        dedup_id = msg["dedup_id"]
        if dedup_id is not None and all_claimed:
            remembered_ids.append(dedup_id)
        elif dedup_id is not None and window_ms > 0:
            dedup_key = keys.dedup_key(qid, dedup_id)
            if not dedup.claim(ctx, dedup_key, seq + 1, dedup_expire):
                remembered = dedup.stored(ctx, dedup_key)
                assert remembered is not None  # claim found it in this transaction
                if remembered[1] > ctx.now_ms:
                    first_seq = remembered[0]
                    results.append(
                        {"id": messages.message_id(first_seq), "seq": first_seq, "duplicate": True}
                    )
                    continue
                dedup.remember(ctx, dedup_key, seq + 1, dedup_expire, remembered)
            remembered_ids.append(dedup_id)
        seq += 1
        meta = messages.new_meta(
            seq=seq,
            ident=messages.message_id(seq),
            enqueued_at=ctx.now_ms,
            expire_ms=expire_ms,
            priority=msg["priority"],
            group_id=msg["group_id"],
            attributes=msg["attributes"],
            dedup_id=dedup_id,
        )
        if grouped:
            messages.insert(ctx, queue, meta, msg["body"], msg["delay_ms"])
        else:
            new_messages.append((meta, msg["body"], msg["delay_ms"]))
        results.append({"id": meta["id"], "seq": seq, "duplicate": False})
    if new_messages:
        messages.insert_new(ctx, queue, new_messages)
    if seq != last_seq:
        ctx.put_int(META_NEXT_SEQ, seq)
        counters.bump(ctx, qid, "sent_total", seq - last_seq)
    # last_seq + 1: the send's first new message, a seq no other send can have
    dedup.index_expiry(ctx, qid, dedup_expire, last_seq + 1, remembered_ids)
    return results
