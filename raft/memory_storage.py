"""An in-memory LogStorage + DurableStorage for tests and the seeded simulation.

`save` is atomic and "durable" the moment it returns, like an fsynced LMDB transaction.
A crash is modelled with `crash_copy()`: a fresh storage holding exactly what was saved,
which a restarted core is built on (nothing of the old core's memory survives).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from raft.errors import Compacted, StorageError, Unavailable
from raft.messages import ConfState, Entry, EntryKind, HardState, SnapshotMeta, decode_conf


class MemoryStorage:
    def __init__(
        self,
        hard_state: HardState | None = None,
        conf_state: ConfState | None = None,
        entries: Sequence[Entry] = (),
    ) -> None:
        self._hard_state = hard_state or HardState()
        self._conf_state = conf_state or ConfState(voters=())
        self._snapshot_index = 0  # index covered by the (future) snapshot; 0 = none
        self._snapshot_term = 0
        self._entries: list[Entry] = []
        self.closed = False
        if entries:
            self.save(None, entries)

    # ------------------------------------------------------------ LogStorage

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def first_index(self) -> int:
        return self._snapshot_index + 1

    def last_index(self) -> int:
        return self._snapshot_index + len(self._entries)

    def term(self, index: int) -> int:
        if index < self._snapshot_index:
            raise Compacted(f"index {index} is compacted (first {self.first_index()})")
        if index == self._snapshot_index:
            return self._snapshot_term
        if index > self.last_index():
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        return self._entries[index - self._snapshot_index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted (first {self.first_index()})")
        if hi > self.last_index() + 1:
            raise Unavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        out: list[Entry] = []
        size = 0
        base = self._snapshot_index + 1
        for e in self._entries[lo - base : hi - base]:
            if out and max_bytes is not None and size + e.size() > max_bytes:
                break
            out.append(e)
            size += e.size()
        return out

    # ------------------------------------------------------------ DurableStorage

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if self.closed:
            raise StorageError("storage is closed")
        if entries:
            first = entries[0].index
            for prev, nxt in itertools.pairwise(entries):
                if nxt.index != prev.index + 1:
                    raise StorageError(f"entries not consecutive at {prev.index}->{nxt.index}")
            if first <= self._snapshot_index:
                raise StorageError(f"entry {first} is below the snapshot {self._snapshot_index}")
            if first > self.last_index() + 1:
                raise StorageError(f"entry {first} leaves a gap after {self.last_index()}")
        new_last = entries[-1].index if entries else self.last_index()
        if hard_state is not None and hard_state.commit > new_last:
            raise StorageError(f"commit {hard_state.commit} is beyond the log end {new_last}")
        if entries:
            keep = entries[0].index - self._snapshot_index - 1
            del self._entries[keep:]  # suffix truncation on conflict (no-op when appending)
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def compact(self, index: int) -> None:
        """Drop entries below `index` (the new first index); only applied ones may go."""
        if index <= self.first_index():
            return
        if index > self.last_index() + 1:
            raise Unavailable(f"compact({index}) beyond the last index {self.last_index()}")
        if index - 1 > self._hard_state.commit:
            raise StorageError(f"compact({index}): entry {index - 1} is not committed")
        term = self.term(index - 1)
        gone = self._entries[: index - self.first_index()]
        for e in reversed(gone):  # the membership in force at the compaction point
            if e.kind is EntryKind.CONF_CHANGE:
                self._conf_state = decode_conf(e.data)
                break
        del self._entries[: index - self.first_index()]
        self._snapshot_index, self._snapshot_term = index - 1, term

    def apply_snapshot(self, snap: SnapshotMeta) -> None:
        """Replace the log by a snapshot: no entries, first index after it, commit at it."""
        if snap.index <= self._hard_state.commit:
            raise StorageError(
                f"snapshot at {snap.index} is not ahead of the commit {self._hard_state.commit}"
            )
        self._entries = []
        self._snapshot_index, self._snapshot_term = snap.index, snap.term
        self._conf_state = snap.conf
        self._hard_state = HardState(self._hard_state.term, self._hard_state.vote, snap.index)

    def snapshot_point(self) -> tuple[int, int]:
        return self._snapshot_index, self._snapshot_term

    def close(self) -> None:
        self.closed = True

    # ------------------------------------------------------------ test helpers

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def all_entries(self) -> list[Entry]:
        return list(self._entries)

    def crash_copy(self) -> MemoryStorage:
        """What survives a crash: everything saved (save is the fsync), nothing else."""
        copy = MemoryStorage(self._hard_state, self._conf_state)
        copy._snapshot_index = self._snapshot_index
        copy._snapshot_term = self._snapshot_term
        copy._entries = list(self._entries)
        return copy
