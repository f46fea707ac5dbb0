"""Per-follower replication progress, as the leader tracks it (etcd's tracker.Progress).

Two states decide how eagerly the leader sends:

- PROBE: the leader does not know where the follower's log matches. It sends one APP
  and then waits (paused) for the answer or a heartbeat response, so a follower that is
  far behind is not flooded with appends it will reject.
- REPLICATE: the follower's match is known; the leader pipelines APPs optimistically,
  advancing `next_index` on send, bounded by an in-flight window counted both in
  messages and in bytes (flow control).
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    # The follower needs entries this leader compacted: a snapshot is on its way; no
    # appends until it reports the snapshot installed (or the transfer failed).
    SNAPSHOT = "snapshot"


class Inflights:
    """The window of APP messages sent but not yet acknowledged, by last index and size."""

    def __init__(self, max_msgs: int, max_bytes: int) -> None:
        self.max_msgs = max_msgs
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, int]] = deque()  # (last index, payload bytes)
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, last_index: int, size_bytes: int) -> None:
        self._items.append((last_index, size_bytes))
        self.total_bytes += size_bytes

    def free_le(self, index: int) -> None:
        """Forget every message whose last entry is at or below `index` (it was acked)."""
        while self._items and self._items[0][0] <= index:
            _, size = self._items.popleft()
            self.total_bytes -= size

    def free_first_one(self) -> None:
        if self._items:
            _, size = self._items.popleft()
            self.total_bytes -= size

    def full(self) -> bool:
        return len(self._items) >= self.max_msgs or self.total_bytes >= self.max_bytes

    def reset(self) -> None:
        self._items.clear()
        self.total_bytes = 0


class Progress:
    """What the leader knows about one peer's log, and whether it may send more."""

    def __init__(self, next_index: int, max_inflight_msgs: int, max_inflight_bytes: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.state = ProgressState.PROBE
        # PROBE only: an APP is outstanding; wait for its answer (or a heartbeat answer).
        self.probe_sent = False
        self.recent_active = False
        self.sent_commit = 0  # highest commit index sent to this peer in an APP
        self.pending_snapshot = 0  # SNAPSHOT only: the index of the snapshot being sent
        self.inflights = Inflights(max_inflight_msgs, max_inflight_bytes)

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match_index}, next={self.next_index}, "
            f"state={self.state.value}, inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            # After a snapshot, probe from its index: the peer has it (or will say no).
            self.next_index = max(self.match_index, self.pending_snapshot) + 1
            self.pending_snapshot = 0
        else:
            self.next_index = self.match_index + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflights.reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.pending_snapshot = 0
        self.probe_sent = False
        self.inflights.reset()

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, entry_count: int, size_bytes: int, last_index: int) -> None:
        """Account for an APP just sent with `entry_count` entries ending at `last_index`."""
        if self.state is ProgressState.REPLICATE:
            if entry_count > 0:
                self.next_index = last_index + 1
                self.inflights.add(last_index, size_bytes)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """The peer acknowledged its log matches ours through `index`; False if stale."""
        updated = False
        if index > self.match_index:
            self.match_index = index
            updated = True
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, next_probe_hint: int) -> bool:
        """The peer rejected an APP whose previous index was `rejected`.

        Returns False when the rejection is stale (answers an APP we already moved past).
        `next_probe_hint` is the last index where the leader's log may match the peer's
        (from its conflict hint), so a whole divergent term is skipped per round trip.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            self._lower_sent_commit()
            return True
        if self.next_index - 1 != rejected or rejected <= self.match_index:
            # Stale, or the peer lost entries it had acknowledged (a broken disk): do not
            # retry hot; the next heartbeat response resumes probing.
            return False
        self.next_index = max(min(rejected, next_probe_hint + 1), self.match_index + 1)
        self._lower_sent_commit()
        self.probe_sent = False
        return True

    def _lower_sent_commit(self) -> None:
        """The peer holds nothing at or after `next_index` yet, so it cannot have applied a
        commit index sent beyond it: the next APP must carry the commit again (etcd does)."""
        self.sent_commit = min(self.sent_commit, self.next_index - 1)
