"""How a Raft node handles its core's Readies, without I/O: the one policy that the asyncio
driver runs on real disks and sockets and the seeded simulation runs on virtual ones.

Why one home: the driver pipelines Readies (up to `max_inflight_readies` on their way to
the disk), group-commits them, holds every reply until its own Ready is durable, and
advances the core in two halves (stable entries once persisted, applied entries once
applied). Those are exactly where the etcd "async storage writes" bugs live, and a
simulation that drives bare cores with a loop of its own can never find them.

The pieces:
- `ReadyHandler` takes Readies from the core (`issue`) and feeds the storage step's
  completions back to it (`persisted`, `applied`).
- `StorageJob` is one Ready on its way to the disk and the state machine.
- `StorageStep` persists a group of jobs (one write per segment, cut where a Ready
  overwrites an earlier one's entries) and applies their committed entries, through
  injected primitives, posting the completions in order.
Where the step runs (inline in the driver task, on a storage thread, at a virtual time)
and what the primitives touch (LMDB, memory) is the caller's business.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import structlog

from raft.errors import StorageError
from raft.messages import Entry, HardState, Message, MessageType, Ready, SnapshotMeta

log = structlog.get_logger("raft.ready")

# Messages that may leave before the local fsync: leader-originated replication traffic.
# Everything else (votes, every response) asserts durable state and waits for the persist.
SEND_BEFORE_PERSIST = frozenset(
    {MessageType.APP, MessageType.HEARTBEAT, MessageType.TIMEOUT_NOW, MessageType.SNAP}
)


class StorageJob:
    """One Ready on its way through the storage step.

    `applying` is the part of `rd.committed_entries` not applied before (a restarted core
    hands out entries the state machine already holds); `deferred` are messages the core
    put in `rd.messages` that must not leave before the persist after all.
    """

    __slots__ = ("applying", "deferred", "rd")

    def __init__(self, rd: Ready, applying: list[Entry], deferred: list[Message]) -> None:
        self.rd = rd
        self.applying = applying
        self.deferred = deferred


class ReadyHandler:
    """Takes Readies from a core and advances it as the storage step reports back.

    The caller's loop: feed input to `core`; while `wants_ready()`, `issue()` a job, send
    the messages it returns and hand the job to the storage step; when the step reports,
    call `persisted(segment)` (and send what it returns) and `applied(jobs)`.
    """

    def __init__(self, core: Any, applied_index: int, max_inflight_readies: int) -> None:
        if max_inflight_readies < 1:
            raise ValueError(f"max_inflight_readies must be >= 1: {max_inflight_readies}")
        self.core = core
        self.max_inflight_readies = max_inflight_readies
        self.inflight = 0  # issued jobs whose persist has not been reported yet
        self.apply_issued = applied_index  # highest index handed to the state machine

    def wants_ready(self) -> bool:
        return self.inflight < self.max_inflight_readies and self.core.has_ready()

    def issue(self) -> tuple[StorageJob, list[Message]]:
        """Take one Ready: the job for the storage step and the messages to send now."""
        rd: Ready = self.core.ready()
        send_now: list[Message] = []
        deferred: list[Message] = []
        for m in rd.messages:
            if m.type in SEND_BEFORE_PERSIST:
                send_now.append(m)
            else:
                deferred.append(m)  # never let a response out before its state is durable
        if deferred:
            log.error(
                "raft.core_order_violation",
                detail="response/vote in Ready.messages; sent after persist instead",
                types=sorted({m.type.name for m in deferred}),
            )
        if rd.snapshot is not None:  # installing it brings the state machine this far
            self.apply_issued = max(self.apply_issued, rd.snapshot.index)
        applying = [e for e in rd.committed_entries if e.index > self.apply_issued]
        if applying:
            self.apply_issued = applying[-1].index
        self.inflight += 1
        return StorageJob(rd, applying, deferred), send_now

    def persisted(self, jobs: Sequence[StorageJob]) -> list[Message]:
        """The jobs' hard state and entries are durable: advance the log; the replies to send."""
        self.inflight -= len(jobs)
        out: list[Message] = []
        for job in jobs:
            out.extend(job.deferred)
            out.extend(job.rd.messages_after_persist)
            if job.rd.entries or job.rd.hard_state is not None or job.rd.snapshot is not None:
                # Stability now; the committed part is advanced once it is applied.
                self.core.advance(replace(job.rd, committed_entries=()))
        return out

    def applied(self, jobs: Sequence[StorageJob]) -> None:
        """The jobs' committed entries are applied: advance the core's applied index."""
        for job in jobs:
            if job.rd.committed_entries:
                self.core.advance(Ready(committed_entries=job.rd.committed_entries))


# ---------------------------------------------------------------- group commit


def merge_entries(merged: list[Entry], entries: Sequence[Entry]) -> list[Entry]:
    """Append `entries` to `merged` the way storage would: a lower first index overwrites."""
    if not entries:
        return merged
    if not merged:
        return list(entries)
    first = entries[0].index
    if first == merged[-1].index + 1:
        merged.extend(entries)
        return merged
    if first <= merged[0].index:
        return list(entries)
    if first > merged[-1].index + 1:
        raise StorageError(f"entries from {first} leave a gap after {merged[-1].index}")
    del merged[first - merged[0].index :]
    merged.extend(entries)
    return merged


def split_at_overwrites(jobs: Sequence[StorageJob]) -> list[list[StorageJob]]:
    """Cut a group commit where a Ready's entries overwrite an earlier Ready's in the group,
    and before a Ready that installs a snapshot (which replaces the whole log).

    Each earlier Ready's append replies must be true when they leave: its entries must
    reach the disk, so they cannot be merged away by a later overwrite in the same save.
    """
    segments: list[list[StorageJob]] = [[]]
    last = 0
    for job in jobs:
        entries = job.rd.entries
        if segments[-1] and (
            job.rd.snapshot is not None or (entries and last and entries[0].index <= last)
        ):
            segments.append([])
            last = 0
        segments[-1].append(job)
        if entries:
            last = entries[-1].index
    return segments


def merged_write(segment: Sequence[StorageJob]) -> tuple[HardState | None, list[Entry]]:
    """One save for a segment: the latest hard state, the entries appended in order."""
    hard_state = None
    entries: list[Entry] = []
    for job in segment:
        if job.rd.hard_state is not None:
            hard_state = job.rd.hard_state
        entries = merge_entries(entries, job.rd.entries)
    return hard_state, entries


def segment_snapshot(segment: Sequence[StorageJob]) -> SnapshotMeta | None:
    """The snapshot a segment installs first: only its first job may carry one."""
    return segment[0].rd.snapshot if segment else None


# ---------------------------------------------------------------- the storage step

Save = Callable[[HardState | None, list[Entry]], None]
Apply = Callable[[list[Entry]], list[Any]]
SaveWithApply = Callable[[HardState | None, list[Entry], list[Entry]], list[Any]]
Install = Callable[[SnapshotMeta], None]
OnPersisted = Callable[[list[StorageJob]], None]
OnApplied = Callable[[list[StorageJob], list[Entry], list[Any]], None]


class StorageStep:
    """Persists and applies a group of jobs, then reports, in the order the driver needs.

    Every job queued while the previous write ran is persisted in as few saves as the
    overwrites allow (group commit: concurrent batches share an fsync), and the committed
    entries of all of them are applied in ONE state machine batch. Committed entries are
    handed out only once durable, so persist and apply may run in either order: a leader
    applies first (answers leave one fsync sooner), a follower persists first (its append
    replies, which the leader's commit waits for, leave sooner).

    With `save_with_apply` (a state machine in the log's own store), each segment is ONE
    write that also applies the batch (the first segment): one commit instead of two.

    A segment that starts with a snapshot first installs it (`install`: the state machine
    and the log replaced together, atomically), then saves what follows it.
    """

    def __init__(
        self,
        *,
        save: Save,
        apply: Apply,
        on_persisted: OnPersisted,
        on_applied: OnApplied,
        apply_first: Callable[[], bool],
        save_with_apply: SaveWithApply | None = None,
        install: Install | None = None,
    ) -> None:
        self._save = save
        self._apply = apply
        self._on_persisted = on_persisted
        self._on_applied = on_applied
        self._apply_first = apply_first
        self._save_with_apply = save_with_apply
        self._install = install

    def _install_first(self, segment: Sequence[StorageJob]) -> None:
        snap = segment_snapshot(segment)
        if snap is not None:
            if self._install is None:
                raise StorageError(f"cannot install the snapshot at {snap.index}: no installer")
            self._install(snap)

    def run(self, jobs: list[StorageJob]) -> None:
        """Persist and apply `jobs` now, reporting each step as it completes."""
        for _ in self.writes(jobs):
            pass

    def writes(self, jobs: list[StorageJob]) -> Iterator[None]:
        """The same, one durable write at a time: it pauses after each write (and its
        report), so a simulated disk can take time per write while the node's loop goes on
        handling what was reported, as the driver task does beside its storage thread."""
        applying = [e for job in jobs for e in job.applying]
        segments = split_at_overwrites(jobs)
        if self._save_with_apply is not None:
            for k, segment in enumerate(segments):
                self._install_first(segment)
                hard_state, entries = merged_write(segment)
                apply_now = applying if k == 0 else []
                results = self._save_with_apply(hard_state, entries, apply_now)
                self._on_persisted(segment)
                if k == 0:
                    self._on_applied(jobs, apply_now, results)
                yield
            return
        apply_first = self._apply_first()
        if apply_first:
            self._on_applied(jobs, applying, self._apply(applying) if applying else [])
        for segment in segments:
            self._install_first(segment)
            hard_state, entries = merged_write(segment)
            if hard_state is not None or entries:
                self._save(hard_state, entries)
            self._on_persisted(segment)
            yield
        if not apply_first:
            self._on_applied(jobs, applying, self._apply(applying) if applying else [])
