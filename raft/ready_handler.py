"""How a Raft node handles its core's Readies, without I/O: the one policy that the asyncio
driver runs on real disks and sockets and the seeded simulation runs on virtual ones.

Why one home: the driver holds every reply until its own Ready is durable, and advances
the core in two halves (stable entries once persisted, applied entries once applied),
its completions reaching the core a turn after the write. Those are exactly where the
etcd "async storage writes" bugs live, and a simulation that drives bare cores with a
loop of its own can never find them.

The pieces:
- `ReadyHandler` takes Readies from the core (`issue`) and feeds the storage step's
  completions back to it (`persisted`, `applied`).
- `StorageJob` is one Ready on its way to the disk and the state machine.
- `StorageStep` persists a job and applies its committed entries, through injected
  primitives, posting the completions in order.
When the step runs (inline in the driver task, or at a virtual time that blocks a
simulated node's loop) and what the primitives touch (LMDB, memory) is the caller's
business.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    The caller's loop: feed input to `core`; when `wants_ready()`, `issue()` a job, send
    the messages it returns and hand the job to the storage step; when the step reports,
    call `persisted(jobs)` (and send what it returns) and `applied(jobs)`. One job at a
    time: the next Ready is taken once the last one's persist was reported.
    """

    def __init__(self, core: Any, applied_index: int) -> None:
        self.core = core
        self.inflight = 0  # issued jobs whose persist has not been reported yet (0 or 1)
        self.apply_issued = applied_index  # highest index handed to the state machine

    def wants_ready(self) -> bool:
        return not self.inflight and self.core.has_ready()

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


# ---------------------------------------------------------------- the storage step

Save = Callable[[HardState | None, list[Entry]], None]
Apply = Callable[[list[Entry]], list[Any]]
SaveWithApply = Callable[[HardState | None, list[Entry], list[Entry]], list[Any]]
Install = Callable[[SnapshotMeta], None]
OnPersisted = Callable[[list[StorageJob]], None]
OnApplied = Callable[[list[StorageJob], list[Entry], list[Any]], None]


class StorageStep:
    """Persists and applies one job, then reports, in the order the driver needs.

    The Ready's hard state and entries are ONE save, then its committed entries are ONE
    state machine batch (the order measured no different from a leader applying first;
    raft/driver.py has the figures).

    With `save_with_apply` (a state machine in the log's own store), it is ONE write that
    persists and applies: one commit instead of two.

    A Ready that carries a snapshot first installs it (`install`: the state machine and the
    log replaced together, atomically), then saves what follows it.
    """

    def __init__(
        self,
        *,
        save: Save,
        apply: Apply,
        on_persisted: OnPersisted,
        on_applied: OnApplied,
        save_with_apply: SaveWithApply | None = None,
        install: Install | None = None,
    ) -> None:
        self._save = save
        self._apply = apply
        self._on_persisted = on_persisted
        self._on_applied = on_applied
        self._save_with_apply = save_with_apply
        self._install = install

    def _install_snapshot(self, snap: SnapshotMeta | None) -> None:
        if snap is not None:
            if self._install is None:
                raise StorageError(f"cannot install the snapshot at {snap.index}: no installer")
            self._install(snap)

    def run(self, job: StorageJob) -> None:
        """Persist and apply `job` now, reporting each step as it completes."""
        rd, applying, jobs = job.rd, job.applying, [job]
        hard_state, entries = rd.hard_state, list(rd.entries)
        if self._save_with_apply is not None:
            self._install_snapshot(rd.snapshot)
            results = self._save_with_apply(hard_state, entries, applying)
            self._on_persisted(jobs)
            self._on_applied(jobs, applying, results)
            return
        self._install_snapshot(rd.snapshot)
        if hard_state is not None or entries:
            self._save(hard_state, entries)
        self._on_persisted(jobs)
        self._on_applied(jobs, applying, self._apply(applying) if applying else [])
