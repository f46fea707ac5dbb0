"""Byte layouts of every key in the node.* sub-databases.

Why big-endian fixed-width integers: LMDB orders keys bytewise, so a key that starts with
a big-endian deadline or (queue id, priority, seq) makes "the earliest deadline" or "the
next message to deliver" the first key of a cursor range - no scans, no sorting.
"""

from __future__ import annotations

import struct

import msgpack

_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
# One pack call per composite key: these run several times per message on every replica.
_QQ = struct.Struct(">QQ")
_QBQ = struct.Struct(">QBQ")
_QQQ = struct.Struct(">QQQ")

MAX_PRIORITY = 9


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes, offset: int = 0) -> int:
    return _U64.unpack_from(b, offset)[0]


def message_key(qid: int, seq: int) -> bytes:
    """node.messages: (queue id, seq) -> message metadata."""
    return _QQ.pack(qid, seq)


def ready_key(qid: int, priority: int, seq: int) -> bytes:
    """node.ready: (queue id, priority descending, seq) -> b''. Delivery order is key order."""
    return _QBQ.pack(qid, MAX_PRIORITY - priority, seq)


def split_ready_key(key: bytes) -> tuple[int, int]:
    """(qid, seq) of a ready key."""
    return read_u64(key, 0), read_u64(key, 9)


def timer_key(at_ms: int, qid: int, seq: int) -> bytes:
    """node.leases / node.delayed / node.retention: (deadline, queue id, seq) -> b''."""
    return _QQQ.pack(at_ms, qid, seq)


def split_timer_key(key: bytes) -> tuple[int, int, int]:
    return read_u64(key, 0), read_u64(key, 8), read_u64(key, 16)


def group_key(qid: int, group_id: str, seq: int) -> bytes:
    """node.fifo_groups: (queue id, group, seq) -> b''; the first seq is the group's head."""
    g = group_id.encode()
    return _U64.pack(qid) + _U16.pack(len(g)) + g + _U64.pack(seq)


def group_prefix(qid: int, group_id: str) -> bytes:
    g = group_id.encode()
    return _U64.pack(qid) + _U16.pack(len(g)) + g


def dedup_key(qid: int, dedup_id: str) -> bytes:
    """node.dedup: (queue id, dedup id) -> dedup_record(seq, expire_ms)."""
    return _U64.pack(qid) + dedup_id.encode()


def dedup_record(seq: int, expire_ms: int) -> bytes:
    """node.dedup value: (message seq, expiry)."""
    return _QQ.pack(seq, expire_ms)


def split_dedup_record(raw: bytes) -> tuple[int, int]:
    if len(raw) != _QQ.size:  # written by an earlier version: a msgpack map
        legacy = msgpack.unpackb(raw, raw=False)
        return int(legacy["seq"]), int(legacy["expire"])
    seq, expire = _QQ.unpack(raw)
    return seq, expire


def expiry_key(expire_ms: int, ident: bytes) -> bytes:
    """node.dedup_expiry: (expiry, queue id) -> dedup ids (msgpack list), or the older
    (expiry, dedup key) -> b''; node.txn_expiry: (expiry, txn id) -> b''."""
    return _U64.pack(expire_ms) + ident
