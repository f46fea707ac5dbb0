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
OPS = QUEUE_OPS | EXACTLY_ONCE_OPS


def encode_command(op: str, ts_ms: int, **fields: Any) -> bytes:
    """Encode one command; `fields` must be msgpack-friendly (bytes for bodies)."""
    if op not in OPS:
        raise ValueError(f"unknown command op {op!r}")
    if type(ts_ms) is not int or not 0 <= ts_ms <= MAX_TS_MS:
        raise ValueError(f"ts_ms must be a non-negative int, got {ts_ms!r}")
    return msgpack.packb({"v": COMMAND_VERSION, "op": op, "ts": ts_ms, **fields}, use_bin_type=True)


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
