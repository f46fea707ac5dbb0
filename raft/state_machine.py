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
