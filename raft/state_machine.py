"""The contract between the Raft driver and the replicated application.

The driver hands every committed entry, in log order, to `apply`; NOOP (and later
CONF_CHANGE) entries are passed too so the state machine can record `applied_index`
for them. The implementation applies the whole batch in ONE LMDB write transaction that
also stores `applied_index`, so state and applied index never disagree after a crash.
`apply` runs on the driver's storage thread; it must be deterministic (no clock, no
randomness: time comes inside the commands).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from raft.messages import Entry


@runtime_checkable
class StateMachine(Protocol):
    def applied_index(self) -> int:
        """The index of the last applied entry (0 for a fresh state machine)."""
        ...

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply the batch atomically; return one result per entry (None for NOOP)."""
        ...


@runtime_checkable
class SharedTxnStateMachine(StateMachine, Protocol):
    """A state machine living in the Raft log's own LMDB environment.

    The driver may then apply a batch inside the same write transaction that appends the
    next log entries: one commit (LMDB's fsyncs paid once) instead of two per batch.
    """

    def apply_in_txn(self, txn: Any, entries: Sequence[Entry]) -> list[Any]:
        """Like `apply`, but inside the caller's write transaction (which commits it)."""
        ...

    def committed(self, entries: Sequence[Entry]) -> None:
        """The transaction holding `apply_in_txn(…, entries)` committed: publish caches."""
        ...


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A state machine snapshot written to a file: what a leader streams to a follower."""

    path: str
    applied_index: int
    size: int
    digest: bytes  # SHA-256 of the whole file


@runtime_checkable
class SnapshotStateMachine(SharedTxnStateMachine, Protocol):
    """A shared-transaction state machine that can be copied to a follower as a file.

    Why both halves here: the leader writes its whole state at one applied index from a
    read transaction (any thread), and a follower replaces its state from that file in
    the same write transaction that replaces its log, so a crash never leaves a log that
    starts after state the machine does not hold.
    """

    def write_snapshot(self, path: str) -> SnapshotFile:
        """Write every record at the applied index to `path` (atomically)."""
        ...

    def restore_in_txn(self, txn: Any, path: str) -> int:
        """Replace the whole state by the file, inside the caller's write transaction;
        returns the applied index the file holds."""
        ...

    def restored(self) -> None:
        """The transaction that restored a snapshot committed: drop every cache."""
        ...
