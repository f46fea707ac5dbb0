"""A tiny deterministic key-value state machine for testing and benchmarking the Raft layer.

Why it exists: the driver, the demo node, the integration test and the benchmark need a
real state machine on the node's LMDB environment (state and `applied_index` in the same
transaction, so a kill -9 can never make them disagree) without depending on the queue
state machine in node/. It also keeps a running digest of everything applied, so two
replicas can be compared with one number.

Commands (the entry payload):
  - ``S<key>\\x00<value>`` set key to value; result: the entry index.
  - ``I<key>`` increment the integer counter at key; result: the new value.
  - anything else is applied as an opaque blob (counted, digested); result: the entry index.
Keys are at most 511 bytes (LMDB's key limit); a longer key gets a deterministic error
string as its result and changes nothing but the digest.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Any

from raft.lmdb_env import LmdbEnv
from raft.messages import Entry, EntryKind

MAX_KEY_BYTES = 511
_META_APPLIED = b"applied_index"
_META_COUNT = b"applied_count"
_META_DIGEST = b"digest"
_U64 = struct.Struct(">Q")


def _u64(raw: bytes | None) -> int:
    return 0 if raw is None else _U64.unpack(raw)[0]


class KvStateMachine:
    """Counter/KV state machine on an LmdbEnv; implements raft.state_machine.StateMachine."""

    def __init__(self, env: LmdbEnv, *, prefix: str = "kv") -> None:
        self._env = env
        self._kv = env.db(f"{prefix}.data")
        self._meta = env.db(f"{prefix}.meta")
        self._applied_index = env.read(lambda txn: _u64(txn.get(_META_APPLIED, db=self._meta)))

    def applied_index(self) -> int:
        return self._applied_index

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply the batch in one write transaction that also records applied_index."""
        if not entries:
            return []
        if entries[0].index <= self._applied_index:
            raise ValueError(
                f"entry {entries[0].index} already applied (applied_index={self._applied_index})"
            )

        results = self._env.write(lambda txn: self.apply_in_txn(txn, entries))
        self.committed(entries)
        return results

    def committed(self, entries: Sequence[Entry]) -> None:
        if entries:
            self._applied_index = entries[-1].index

    def apply_in_txn(self, txn: Any, entries: Sequence[Entry]) -> list[Any]:
        """Apply inside the caller's write transaction (the driver's, shared with the log)."""
        kv, meta = self._kv, self._meta
        count = _u64(txn.get(_META_COUNT, db=meta))
        digest = _u64(txn.get(_META_DIGEST, db=meta))
        results: list[Any] = []
        for e in entries:
            if e.kind != EntryKind.NORMAL:
                results.append(None)
                continue
            count += 1
            data = e.data
            digest = zlib.crc32(data, zlib.crc32(_U64.pack(e.index), digest))
            results.append(self._apply_one(txn, kv, e.index, data))
        txn.put(_META_COUNT, _U64.pack(count), db=meta)
        txn.put(_META_DIGEST, _U64.pack(digest), db=meta)
        txn.put(_META_APPLIED, _U64.pack(entries[-1].index), db=meta)
        return results

    @staticmethod
    def _apply_one(txn: Any, kv: Any, index: int, data: bytes) -> Any:
        op = data[:1]
        if op == b"S":
            key, sep, value = data[1:].partition(b"\x00")
            if not sep or not key or len(key) > MAX_KEY_BYTES:
                return "error: bad set command"
            txn.put(key, value, db=kv)
            return index
        if op == b"I":
            key = data[1:]
            if not key or len(key) > MAX_KEY_BYTES:
                return "error: bad incr command"
            raw = txn.get(key, db=kv)
            try:
                value = int(raw) + 1 if raw is not None else 1
            except ValueError:
                return "error: not a counter"
            txn.put(key, str(value).encode(), db=kv)
            return value
        return index

    # ------------------------------------------------------------ reads (any thread)

    def get(self, key: bytes) -> bytes | None:
        return self._env.read(lambda txn: txn.get(key, db=self._kv))

    def summary(self) -> dict[str, int]:
        """applied_index, applied_count, digest and a crc over every (key, value) pair."""

        def read(txn: Any) -> dict[str, int]:
            kv_crc = 0
            n_keys = 0
            for key, value in txn.cursor(db=self._kv):
                kv_crc = zlib.crc32(value, zlib.crc32(key, kv_crc))
                n_keys += 1
            return {
                "applied_index": _u64(txn.get(_META_APPLIED, db=self._meta)),
                "applied_count": _u64(txn.get(_META_COUNT, db=self._meta)),
                "digest": _u64(txn.get(_META_DIGEST, db=self._meta)),
                "keys": n_keys,
                "kv_crc": kv_crc,
            }

        return self._env.read(read)

    def keys(self) -> list[bytes]:
        return self._env.read(lambda txn: [k for k, _ in txn.cursor(db=self._kv)])
