"""The core's view of its log: durable entries in LogStorage plus unstable ones in memory.

Entries the core appends (proposals, or entries received from a leader) first live in
the `unstable` tail; the driver persists them from a Ready and `stable_to` then moves the
boundary. The boundary matters for safety: the leader only counts itself toward a
quorum, and any node only hands entries out for applying, once they are durable here.

Pointers: `committed` (known committed, may exceed the persisted tail on a follower),
`applying` (handed out in a Ready), `applied` (confirmed by advance()).
"""

from __future__ import annotations

from collections.abc import Sequence

from raft.errors import Compacted, InvalidMessage, SafetyViolation, Unavailable
from raft.messages import ConfState, Entry, EntryKind, SnapshotMeta, decode_conf
from raft.storage import LogStorage

NO_LIMIT = 1 << 62


class LogConflict(SafetyViolation):
    """A peer asked to overwrite an entry this node knows is committed."""


class RaftLog:
    def __init__(self, storage: LogStorage, committed: int, applied: int) -> None:
        self.storage = storage
        last = storage.last_index()
        self.unstable: list[Entry] = []
        self.unstable_offset = last + 1  # index of unstable[0]
        # Highest index already handed to the driver for persisting (via a Ready).
        self.in_progress = last
        if applied > last:
            raise ValueError(f"applied index {applied} is beyond the last log index {last}")
        self.committed = max(committed, applied, storage.first_index() - 1)
        if self.committed > last:
            raise ValueError(f"commit index {self.committed} is beyond the last log index {last}")
        self.applied = max(applied, storage.first_index() - 1)
        self.applying = self.applied
        # Times an append replaced existing entries. A Ready carries the count from when
        # its entries were taken, and a persisted notice from before a later overwrite is
        # ignored (see `stable_to`).
        self.overwrites = 0
        # A snapshot received from the leader that replaces this log, until it is durable:
        # it answers term(index) and first_index() meanwhile (etcd's unstable snapshot).
        self.pending_snapshot: SnapshotMeta | None = None
        self._snapshot_handed_out = False
        # Membership follows the log (Raft thesis §4.1): the latest configuration entry in
        # it, durable or not, is in force, and a truncation that removes one brings the one
        # before back. `base_conf` is the configuration at the start of the log.
        self.base_conf: ConfState = storage.initial_state()[1]
        self.conf_entries: list[tuple[int, ConfState]] = []
        self.conf_version = 0  # bumped whenever the configuration in force may have changed
        first, last = storage.first_index(), storage.last_index()
        if last >= first:
            self._note_appended(storage.entries(first, last + 1))

    # ------------------------------------------------------------ reading

    # ------------------------------------------------------------ membership

    def conf(self) -> ConfState:
        """The configuration in force: the latest in the log (committed or not)."""
        return self.conf_entries[-1][1] if self.conf_entries else self.base_conf

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force once the log up to `index` is applied."""
        found = self.base_conf
        for at, conf in self.conf_entries:
            if at > index:
                break
            found = conf
        return found

    def last_conf_index(self) -> int:
        """Index of the latest configuration entry (0: none in the log)."""
        return self.conf_entries[-1][0] if self.conf_entries else 0

    def _note_appended(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.kind is EntryKind.CONF_CHANGE:
                try:
                    conf = decode_conf(e.data)
                except InvalidMessage as exc:
                    raise SafetyViolation(
                        f"configuration entry {e.index} (term {e.term}) is unreadable: {exc}"
                    ) from None
                self.conf_entries.append((e.index, conf))
                self.conf_version += 1

    def _note_truncated(self, first: int) -> None:
        """Entries from `first` on were replaced: their configurations no longer count."""
        if self.conf_entries and self.conf_entries[-1][0] >= first:
            self.conf_entries = [(i, c) for i, c in self.conf_entries if i < first]
            self.conf_version += 1

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        return self.unstable_offset - 1

    def persisted_last_index(self) -> int:
        """Last index of this log that is known durable (the storage prefix we still use)."""
        return self.unstable_offset - 1

    def term(self, index: int) -> int:
        """Term at `index`; raises Compacted / Unavailable outside the log."""
        if index >= self.unstable_offset:
            pos = index - self.unstable_offset
            if pos < len(self.unstable):
                return self.unstable[pos].term
            raise Unavailable(f"index {index} is beyond the last index {self.last_index()}")
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            raise Compacted(f"index {index} is covered by the snapshot at {snap.index}")
        if index < self.storage.first_index() - 1:
            raise Compacted(f"index {index} is compacted")
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (Compacted, Unavailable):
            return 0

    def last_term(self) -> int:
        return self.term_or_zero(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log at least as up to date as ours gets our vote."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def entries(self, lo: int, max_bytes: int = NO_LIMIT) -> list[Entry]:
        """Entries from `lo` to the end: at least one if any, then stop before max_bytes."""
        hi = self.last_index() + 1
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise Compacted(f"index {lo} is compacted")
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.storage.entries(lo, min(hi, self.unstable_offset), max_bytes)
            if out and out[-1].index < min(hi, self.unstable_offset) - 1:
                return out  # the byte limit cut the durable part short
        size = sum(e.size() for e in out)
        start = max(lo, self.unstable_offset) - self.unstable_offset
        for e in self.unstable[start:]:
            if out and size + e.size() > max_bytes:
                break
            out.append(e)
            size += e.size()
        return out

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs from ours; 0 if all match."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest index <= `index` whose term is <= `term`, and that term.

        Used on both sides of fast backtracking: every entry above the returned index
        has a term greater than `term`, so cannot match an entry of the other log
        whose term is `term` or lower.
        """
        index = min(index, self.last_index())
        while index > 0:
            try:
                our_term = self.term(index)
            except Compacted:
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # ------------------------------------------------------------ writing

    def append(self, entries: Sequence[Entry]) -> int:
        """Append (overwriting a conflicting suffix) to the unstable tail; new last index."""
        if not entries:
            return self.last_index()
        after = entries[0].index - 1
        if after < self.committed:
            raise LogConflict(f"append after {after} would overwrite committed {self.committed}")
        if after > self.last_index():
            raise ValueError(f"append after {after} leaves a gap after {self.last_index()}")
        first = entries[0].index
        if first <= self.last_index():
            self.overwrites += 1
            self._note_truncated(first)
        if first == self.unstable_offset + len(self.unstable):
            self.unstable.extend(entries)
        elif first <= self.unstable_offset:
            self.unstable = list(entries)
            self.unstable_offset = first
        else:
            self.unstable = self.unstable[: first - self.unstable_offset] + list(entries)
        self.in_progress = min(self.in_progress, first - 1)
        self._note_appended(entries)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower side of AppendEntries; new last index, or None if (index, log_term) mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogConflict(f"entry {conflict} conflicts with committed {self.committed}")
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(committed, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise ValueError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Advance commit to `index` only if that entry is of `term` (Raft §5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace this log by a snapshot from the leader (not yet durable).

        Everything up to its index is committed and will be in the state machine once the
        snapshot is installed; nothing at or below it is handed out for applying.
        """
        self.pending_snapshot = snap
        self._snapshot_handed_out = False
        self.unstable = []
        self.unstable_offset = snap.index + 1
        self.in_progress = snap.index
        self.committed = snap.index
        self.applying = max(self.applying, snap.index)
        self.overwrites += 1  # persisted notices of the replaced log no longer speak for it
        self.base_conf = snap.conf
        self.conf_entries = []
        self.conf_version += 1

    # ------------------------------------------------------------ Ready plumbing

    def has_snapshot_to_persist(self) -> bool:
        return self.pending_snapshot is not None and not self._snapshot_handed_out

    def take_snapshot_to_persist(self) -> SnapshotMeta | None:
        if not self.has_snapshot_to_persist():
            return None
        self._snapshot_handed_out = True
        return self.pending_snapshot

    def snapshot_stable(self, snap: SnapshotMeta) -> None:
        """The driver installed `snap` durably: storage and state machine are at its index."""
        if self.pending_snapshot == snap:
            self.pending_snapshot = None
        self.applied = max(self.applied, snap.index)
        self.applying = max(self.applying, snap.index)

    def has_entries_to_persist(self) -> bool:
        return self.last_index() > self.in_progress

    def take_entries_to_persist(self) -> tuple[Entry, ...]:
        start = max(self.in_progress + 1, self.unstable_offset) - self.unstable_offset
        out = tuple(self.unstable[start:])
        self.in_progress = self.last_index()
        return out

    def stable_to(self, index: int, term: int, overwrites: int) -> None:
        """The driver persisted entries through (index, term), taken when the log had been
        overwritten `overwrites` times: move them out of unstable.

        Matching (index, term) is not enough when writes are pipelined (etcd's ABA race):
        entries taken as 4@t2, overwritten by 4@t3, then by 4@t2 again from a re-elected
        leader, are three queued writes; the first one's notice matches the third one's
        entry while the disk still holds 4@t3 from the second. Reading the "stable" entry
        from storage would then apply an entry that was never committed. A notice taken
        before the latest overwrite is ignored; the overwriting Ready's own notice, which
        comes after every earlier write, moves the boundary instead.
        """
        if overwrites != self.overwrites:
            return  # the log was overwritten since: a later notice speaks for the disk
        if index < self.unstable_offset or not self.match_term(index, term):
            return  # already stable, or overwritten since the Ready was handed out
        self.unstable = self.unstable[index + 1 - self.unstable_offset :]
        self.unstable_offset = index + 1
        self.in_progress = max(self.in_progress, index)

    def _committed_durable(self) -> int:
        return min(self.committed, self.persisted_last_index())

    def has_committed_to_apply(self) -> bool:
        return self._committed_durable() > self.applying

    def take_committed_to_apply(self) -> tuple[Entry, ...]:
        hi = self._committed_durable()
        if hi <= self.applying:
            return ()
        out = tuple(self.storage.entries(self.applying + 1, hi + 1))
        self.applying = hi
        return out

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index
