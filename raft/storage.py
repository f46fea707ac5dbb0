"""The storage contracts between the Raft core, its driver and the disk.

The core only *reads* through `LogStorage` (the etcd `Storage` shape): the terms and
entries that are already durable. Writes happen in the driver, which persists each
Ready through `DurableStorage.save` in one transaction with one fsync.
`MemoryStorage` (raft/memory_storage.py) implements both for tests and simulation;
`LmdbStorage` (raft/lmdb_storage.py) is the real one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from raft.messages import ConfState, Entry, HardState, SnapshotMeta

T = TypeVar("T")


@runtime_checkable
class LogStorage(Protocol):
    """Read side of the durable log, as the core sees it.

    Index 0 is a sentinel with term 0 (an empty log has first_index()=1, last_index()=0).
    """

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The hard state and membership the node restarts with."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still available (1 until compaction)."""
        ...

    def last_index(self) -> int:
        """Index of the last durable entry (0 if none)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; term(first_index()-1) must work (snapshot/0 sentinel).

        Raises Compacted below that and Unavailable above last_index().
        """
        ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one entry if lo < hi, then stop before max_bytes."""
        ...


@runtime_checkable
class DurableStorage(LogStorage, Protocol):
    """Write side used by the driver (on its single storage thread)."""

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Persist hard state and entries in ONE transaction, fsynced before returning.

        If entries[0].index <= last_index(), every stored entry from that index on is
        deleted first (suffix truncation on conflict).
        """
        ...

    def close(self) -> None: ...


@runtime_checkable
class PreparedWrite(Protocol):
    """A validated, encoded change to the log, written inside someone's transaction."""

    def write(self, txn: Any) -> None:
        """Put the change into the open write transaction `txn`."""
        ...

    def publish(self) -> None:
        """The transaction committed: make the change visible to readers of the log."""
        ...


@runtime_checkable
class TransactionalStorage(DurableStorage, Protocol):
    """A log that can share its write transactions with the state machine (both in one
    LMDB environment): the driver then persists the next entries and applies earlier
    ones in ONE commit, and installs a snapshot's state and log start atomically."""

    def prepare_save(
        self, hard_state: HardState | None, entries: Sequence[Entry]
    ) -> PreparedWrite | None:
        """Like `save`, to be written inside `run_write`'s transaction (None: no change)."""
        ...

    def prepare_apply_snapshot(self, snap: SnapshotMeta) -> PreparedWrite:
        """Replace the log by the snapshot's start, inside `run_write`'s transaction."""
        ...

    def run_write(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(txn)` in one durable write transaction of the shared environment."""
        ...
