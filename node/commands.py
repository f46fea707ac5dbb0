"""The replicated command format: what the leader proposes and every replica applies.

A command is a versioned msgpack map `{"v": 1, "op": ..., "ts": ..., **fields}`. `ts`
is the leader's clock stamp in milliseconds: the state machine never reads a clock, so
time must travel inside the command. Bodies stay bytes (msgpack bin), never base64.
`decode_command` validates the envelope only; each op validates its own fields while it
executes, so a bad command becomes an error result and never an exception out of apply.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.errors import BadRequest
from raft.messages import pack

COMMAND_VERSION = 1
MAX_TS_MS = (1 << 63) - 1

QUEUE_OPS = frozenset(
    {
        "queue_put",
        "queue_delete",
        "queue_purge",
        "send",
        "receive",
        "ack",
        "nack",
        "extend",
        "redrive",
        "tick",
    }
)
EXACTLY_ONCE_OPS = frozenset({"producer_init", "txn"})
# Users of the client API (node/state/users.py): a token's hash, never the token.
USER_OPS = frozenset({"user_add", "user_update", "user_delete"})
# Ops the leader may coalesce into one `batch` entry: concurrent requests then share one
# Raft entry, one proposal and one decode on every replica. Each still runs on its own.
BATCHABLE_OPS = frozenset({"send", "receive", "ack", "nack", "extend", "txn", "topic_append"})
# Topics (partitioned logs) and their consumer groups (node/state/topics.py, groups.py).
TOPIC_OPS = frozenset(
    {
        "topic_put",
        "topic_delete",
        "topic_append",
        "group_join",
        "group_heartbeat",
        "group_leave",
        "group_commit",
    }
)
# Ops of the cluster itself, proposed by the leader (not by a client request).
CLUSTER_OPS = frozenset({"receipt_key"})
OPS = QUEUE_OPS | EXACTLY_ONCE_OPS | USER_OPS | CLUSTER_OPS | TOPIC_OPS | {"batch"}
# Exchanges (node/state/exchanges.py): routing into queues.
EXCHANGE_OPS = frozenset(
    {"exchange_put", "exchange_delete", "exchange_bind", "exchange_unbind", "exchange_publish"}
)
OPS = OPS | EXCHANGE_OPS
MAX_BATCH_COMMANDS = 1000
# What `encode_batch` adds around its ops, at most: a map header, "v", "op": "batch",
# "ts" as a 9-byte int, "cmds" and an array header.
BATCH_ENVELOPE_BYTES = 64


def encode_command(op: str, ts_ms: int, **fields: Any) -> bytes:
    """Encode one command; `fields` must be msgpack-friendly (bytes for bodies)."""
    if op not in OPS:
        raise ValueError(f"unknown command op {op!r}")
    _check_ts(ts_ms)
    return pack({"v": COMMAND_VERSION, "op": op, "ts": ts_ms, **fields})


def _check_ts(ts_ms: int) -> None:
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_TS_MS:
        raise ValueError(f"ts_ms must be a non-negative int, got {ts_ms!r}")


def encode_op(op: str, **fields: Any) -> bytes:
    """One command of a batch, without the envelope: `{"op": op, **fields}` as msgpack."""
    if op not in BATCHABLE_OPS:
        raise ValueError(f"op {op!r} cannot be batched")
    return pack({"op": op, **fields})


def encode_batch(ts_ms: int, encoded_ops: list[bytes]) -> bytes:
    """A `batch` command from ops already encoded by `encode_op` (no re-encoding).

    The bytes equal `encode_command("batch", ts_ms, cmds=[...decoded ops...])`.
    """
    if not 0 < len(encoded_ops) <= MAX_BATCH_COMMANDS:
        raise ValueError(f"a batch holds 1..{MAX_BATCH_COMMANDS} commands")
    _check_ts(ts_ms)
    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack_map_header(4)
    for key, value in (("v", COMMAND_VERSION), ("op", "batch"), ("ts", ts_ms)):
        head += packer.pack(key) + packer.pack(value)
    head += packer.pack("cmds") + packer.pack_array_header(len(encoded_ops))
    return head + b"".join(encoded_ops)


def batch_ops(cmd: dict[str, Any]) -> list[Any]:
    """The sub-commands of a decoded `batch` command (each checked when it runs)."""
    cmds = cmd.get("cmds")
    if not isinstance(cmds, list) or not 0 < len(cmds) <= MAX_BATCH_COMMANDS:
        raise BadRequest(f"cmds must be a list of 1..{MAX_BATCH_COMMANDS} commands", field="cmds")
    return cmds


def check_batched_op(sub: Any, ts_ms: int) -> dict[str, Any]:
    """One decoded sub-command, stamped in place with the batch's time (it is ours: no copy)."""
    if not isinstance(sub, dict) or sub.get("op") not in BATCHABLE_OPS:
        op = sub.get("op") if isinstance(sub, dict) else None
        raise BadRequest(f"op {op!r} cannot be batched", field="op")
    if "v" in sub or "ts" in sub:
        raise BadRequest("a batched command takes the batch's v and ts", field="ts")
    sub["ts"] = ts_ms
    return sub


def decode_command(data: bytes) -> dict[str, Any]:
    """Decode and check the envelope; raise BadRequest (never anything else) on bad bytes."""
    try:
        cmd = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise BadRequest(f"command is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(cmd, dict):
        raise BadRequest("command must be a msgpack map")
    if cmd.get("v") != COMMAND_VERSION or type(cmd.get("v")) is not int:
        raise BadRequest(f"unsupported command version {cmd.get('v')!r}", field="v")
    op = cmd.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise BadRequest(f"unknown command op {op!r}", field="op")
    ts = cmd.get("ts")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise BadRequest("command ts must be a non-negative int (ms)", field="ts")
    return cmd
