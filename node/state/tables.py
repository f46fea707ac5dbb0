"""The node.* sub-database handles and the per-command context.

Why one object: every handle must be opened before any write transaction starts (opening
a sub-db runs its own write transaction, which would deadlock inside another), and every
model function needs the same three things - the transaction, the handles and the
command's effective time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack

from node.state import keys
from raft.lmdb_env import LmdbEnv
from raft.messages import pack

# Every sub-db the queue state machine owns, in the order state_hash visits them.
TABLE_NAMES: tuple[str, ...] = (
    "node.meta",
    "node.queues",
    "node.queue_ids",
    "node.counters",
    "node.messages",
    "node.bodies",
    "node.ready",
    "node.leases",
    "node.delayed",
    "node.retention",
    "node.fifo_groups",
    "node.dedup",
    "node.dedup_expiry",
    "node.producers",
    "node.txns",
    "node.txn_expiry",
    "node.users",
    # exchanges (node/state/exchanges.py) and queue expiry (node/state/queue_expiry.py)
    "node.exchanges",
    "node.bindings",
    "node.queue_bindings",
    "node.queue_expiry",
    "node.queue_used",
    # topics and consumer groups (node/state/topics.py, groups.py)
    "node.topics",
    "node.topic_ids",
    "node.topic_parts",
    "node.records",
    "node.topic_timers",
    "node.groups",
)

# The timer indexes (keys start with a big-endian u64 deadline), by position in Ctx.floors.
TIMER_RETENTION, TIMER_LEASES, TIMER_DELAYED, TIMER_DEDUP_EXPIRY, TIMER_TXN_EXPIRY = range(5)
TIMER_TABLES: tuple[str, ...] = (
    "node.retention",
    "node.leases",
    "node.delayed",
    "node.dedup_expiry",
    "node.txn_expiry",
    "node.topic_timers",
)
# Topic retention and group member sessions share one index (node/state/streams.py).
TIMER_TOPICS = 5
UNKNOWN_FLOOR = 0  # no bound known: look at the index
EMPTY_FLOOR = 1 << 64  # the index is empty: nothing is due until something is added

META_APPLIED_INDEX = b"applied_index"
META_LAST_TS = b"last_ts_ms"
META_NEXT_QUEUE_ID = b"next_queue_id"
META_NEXT_SEQ = b"next_seq"
META_NEXT_PRODUCER = b"next_producer_id"
META_USERS_BOOTSTRAPPED = b"users_bootstrapped"
#: The cluster's receipt key, once its first leader proposed one (messages.set_receipt_key).
META_RECEIPT_KEY = b"receipt_key"
META_NEXT_TOPIC_ID = b"next_topic_id"
META_NEXT_MEMBER = b"next_member_id"


class Tables:
    """Open handles of every node.* sub-db in one LmdbEnv."""

    def __init__(self, env: LmdbEnv) -> None:
        self.env = env
        self.handles: dict[str, Any] = {name: env.db(name) for name in TABLE_NAMES}
        h = self.handles
        self.meta = h["node.meta"]
        self.queues = h["node.queues"]
        self.queue_ids = h["node.queue_ids"]
        self.counters = h["node.counters"]
        self.messages = h["node.messages"]
        self.bodies = h["node.bodies"]
        self.ready = h["node.ready"]
        self.leases = h["node.leases"]
        self.delayed = h["node.delayed"]
        self.retention = h["node.retention"]
        self.fifo_groups = h["node.fifo_groups"]
        self.dedup = h["node.dedup"]
        self.dedup_expiry = h["node.dedup_expiry"]
        self.producers = h["node.producers"]
        self.txns = h["node.txns"]
        self.txn_expiry = h["node.txn_expiry"]
        self.users = h["node.users"]
        self.exchanges = h["node.exchanges"]
        self.bindings = h["node.bindings"]
        self.queue_bindings = h["node.queue_bindings"]
        self.queue_expiry = h["node.queue_expiry"]
        self.queue_used = h["node.queue_used"]
        self.topics = h["node.topics"]
        self.topic_ids = h["node.topic_ids"]
        self.topic_parts = h["node.topic_parts"]
        self.records = h["node.records"]
        self.topic_timers = h["node.topic_timers"]
        self.groups = h["node.groups"]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


@dataclass(slots=True)
class Ctx:
    """One command's view: its transaction, the tables and its effective time."""

    txn: lmdb.Transaction
    tables: Tables
    now_ms: int
    pending_counters: dict[int, dict[str, int]] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    #: Per timer index (TIMER_RETENTION ... TIMER_TXN_EXPIRY): a deadline that no entry
    #: of it is earlier than, so release_due can skip an index with nothing due without
    #: opening a cursor. None (reads, tests) means no bounds: every index is looked at.
    floors: list[int] | None = None
    #: The cluster's receipt key (node/state/messages.py receipt_of): the same on every
    #: replica, so a receipt made by one is checked alike by all.
    receipt_key: bytes = b""

    def timer_added(self, index: int, at: int) -> None:
        """An entry due at `at` was put in timer index `index`: lower its floor to match.

        Every put into a timer index must call this (or the floor would skip a due entry
        on this replica only); tests check floor <= first key after every command.
        """
        floors = self.floors
        if floors is not None and at < floors[index]:
            floors[index] = at

    def nothing_due(self, index: int) -> bool:
        """True when timer index `index` holds nothing due at now_ms (by its floor)."""
        floors = self.floors
        return floors is not None and self.now_ms < floors[index]

    def first_due(self, cursor: Any, index: int) -> bytes | None:
        """Put `cursor` (on timer index `index`) on the index's first entry and return its
        key if it is due at now_ms; else None, and the index's floor becomes that entry's
        deadline (or EMPTY_FLOOR for an empty index)."""
        if not cursor.first():
            at = EMPTY_FLOOR
        else:
            key = cursor.key()
            at = keys.read_u64(key)
            if at <= self.now_ms:
                return key
        if self.floors is not None:
            self.floors[index] = at
        return None

    def get(self, db: Any, key: bytes) -> Any:
        raw = self.txn.get(key, db=db)
        return None if raw is None else unpack(raw)

    def put(self, db: Any, key: bytes, value: Any) -> None:
        self.txn.put(key, pack(value), db=db)

    def get_int(self, key: bytes, default: int = 0) -> int:
        raw = self.txn.get(key, db=self.tables.meta)
        return default if raw is None else int.from_bytes(raw, "big")

    def put_int(self, key: bytes, value: int) -> None:
        self.txn.put(key, value.to_bytes(8, "big"), db=self.tables.meta)

    def next_counter(self, key: bytes) -> int:
        """Allocate the next value of a global counter (starts at 1)."""
        n = self.get_int(key) + 1
        self.put_int(key, n)
        return n

    def first_key(self, db: Any, prefix: bytes = b"") -> bytes | None:
        """The smallest key starting with `prefix`, or None."""
        cur = self.txn.cursor(db=db)
        if not cur.set_range(prefix):
            return None
        key = cur.key()
        return key if key.startswith(prefix) else None
