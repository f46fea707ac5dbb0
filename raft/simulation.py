"""Seeded simulation of a Raft cluster: raftq's `trio.testing` for the consensus core.

N `RaftCore`s on `MemoryStorage` talk through an in-memory network on a virtual clock
(integer milliseconds). One `random.Random(seed)` drives everything: tick jitter, message
latency, drops, duplicates, partitions, crash-restarts, client proposals and ReadIndex
requests. The harness is each node's driver and follows the `Ready` order exactly (send
`messages`, persist, send `messages_after_persist`, apply, advance), so a crash at any
point loses exactly what a real process would: everything not yet persisted.

After every event `SafetyChecker` asserts the Raft safety properties (one leader per
term, log matching, leader completeness, committed entries never change, one apply
sequence, linearizable ReadIndex). After the fault phase everything heals and the run
must converge within a bounded virtual time (liveness).

Replaying a seed
----------------
Every failure message ends with a one-line replay command, e.g.::

    .venv/bin/python -m raft.simulation --seed 1234 --nodes 5 --verbose

prints the whole event trace of that run (same seed + same parameters = same run, event
for event) and exits 1 on failure. The same run under pytest (for a debugger)::

    RAFTQ_SIM_SEED=1234 RAFTQ_SIM_NODES=5 .venv/bin/python -m pytest \\
        tests/raft/test_simulation.py -k replay -s

Non-default parameters (e.g. `--fault-ms`) are part of the printed command
(`RAFTQ_SIM_FAULT_MS` under pytest). `--core-logs` adds the core's own structlog events.
Trace lines read `<virtual ms> <who> <what>`; `deliver` lines show each message as it
reaches its destination (`APP 1->2 t3 i5/lt2 +2[6..7] c4` = term 3, prev index 5 with
term 2, entries 6..7, commit 4).

Each node runs the driver's own Ready policy (`raft.ready_handler`) the way the driver
runs it: the storage step inline, so a write takes virtual time during which the node's
loop is blocked (no ticks; messages wait in its socket buffer), and a crash before the
write's end loses it, under disk stalls and slow disks.

Seed sets: the CI set runs 1,000 seeds on 3 and on 5 nodes (tests/raft/test_simulation.py);
a deep run is `RAFTQ_SIM_SEEDS=2000 .venv/bin/python -m pytest tests/raft/test_simulation.py
-k deep` (longer fault phase, `RAFTQ_SIM_SEED_BASE` picks where the seeds start).

A seed replays the same run only with the same harness and core code: after a change
to either, re-run the seed, do not expect the old trace.

Use from a test::

    result = Simulation(SimParams(seed=7, nodes=3)).run()   # raises SimulationFailure
    Simulation(params, core_factory=my_mutant_factory).run()  # drive another core
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import heapq
import random
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import msgpack

from raft.errors import NotLeader, ProposalDropped, RaftError
from raft.membership_policy import drop_message, next_change, unsafe_change
from raft.messages import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Member,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)
from raft.ready_handler import ReadyHandler, StorageJob, StorageStep
from raft.snapshot_transfer import SnapshotReceiver, SnapshotSender, SnapshotSource

# ------------------------------------------------------------------ failures


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold; `invariant` names which one."""

    def __init__(self, invariant: str, detail: str) -> None:
        self.invariant = invariant
        self.detail = detail
        super().__init__(f"[{invariant}] {detail}")


class LivenessFailure(AssertionError):
    """The healed cluster did not converge within the virtual-time budget."""


class SimulationFailure(AssertionError):
    """A simulation run failed; the message carries seed, virtual time, trace and replay."""

    def __init__(self, message: str, params: SimParams, now_ms: int, cause: BaseException) -> None:
        self.params = params
        self.now_ms = now_ms
        self.cause = cause
        super().__init__(message)


# ------------------------------------------------------------------ clock and events


class VirtualClock:
    """Virtual time in integer milliseconds; only the event loop moves it forward."""

    def __init__(self) -> None:
        self.now_ms = 0

    def advance_to(self, at_ms: int) -> None:
        if at_ms < self.now_ms:
            raise ValueError(f"virtual time cannot go back: {at_ms} < {self.now_ms}")
        self.now_ms = at_ms


class EventKind(Enum):
    TICK = "tick"
    DELIVER = "deliver"
    PROPOSE = "propose"
    READ = "read"
    FAULT = "fault"
    RESTART = "restart"
    HEAL = "heal"  # a scheduled end of a partition
    CRASH = "crash"  # a scheduled crash of one node (incarnation)
    STORAGE = "storage"  # a node's inline write ends; its loop, blocked meanwhile, goes on


class EventQueue:
    """Min-heap of (time, sequence) ordered events: equal times run in scheduling order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, EventKind, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at_ms: int, kind: EventKind, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at_ms, self._seq, kind, payload))

    def pop(self) -> tuple[int, EventKind, Any]:
        at_ms, _, kind, payload = heapq.heappop(self._heap)
        return at_ms, kind, payload


# ------------------------------------------------------------------ network


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """How unreliable the links are right now (the fault scheduler swaps profiles)."""

    drop_rate: float = 0.0
    dup_rate: float = 0.0
    min_latency_ms: int = 1
    max_latency_ms: int = 5
    spike_rate: float = 0.0  # chance a message is delayed by up to spike_max_ms more
    spike_max_ms: int = 0


CALM = NetworkProfile()
PROFILES: dict[str, NetworkProfile] = {
    "calm": CALM,
    "lossy": NetworkProfile(drop_rate=0.2, dup_rate=0.05, max_latency_ms=10),
    "slow": NetworkProfile(min_latency_ms=5, max_latency_ms=40, spike_rate=0.1, spike_max_ms=150),
    "chaotic": NetworkProfile(
        drop_rate=0.1, dup_rate=0.1, max_latency_ms=30, spike_rate=0.2, spike_max_ms=300
    ),
    # Some messages arrive seconds late, after elections moved on (stale terms, old APPs).
    "stale": NetworkProfile(dup_rate=0.1, max_latency_ms=10, spike_rate=0.1, spike_max_ms=2_000),
}


@dataclass(slots=True)
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0


class Network:
    """In-memory network of directed links: latency (hence reordering), drops, duplicates
    and cuts. A cut is one direction, like one proxy per directed link in the chaos suite;
    a message in flight on a link that gets cut is lost (checked again at delivery)."""

    def __init__(self, rng: random.Random, queue: EventQueue, clock: VirtualClock) -> None:
        self._rng = rng
        self._queue = queue
        self._clock = clock
        self.profile = CALM
        self.cut_links: set[tuple[int, int]] = set()
        self.stats = NetworkStats()

    def link_up(self, frm: int, to: int) -> bool:
        return (frm, to) not in self.cut_links

    def cut(self, frm: int, to: int) -> None:
        self.cut_links.add((frm, to))

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Cut every link (both ways) between nodes of different groups."""
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self.cut_links.add((x, y))
                        self.cut_links.add((y, x))

    def isolate(self, node: int, peers: Sequence[int], inbound: bool, outbound: bool) -> None:
        for p in peers:
            if p == node:
                continue
            if outbound:
                self.cut_links.add((node, p))
            if inbound:
                self.cut_links.add((p, node))

    def heal(self) -> None:
        self.cut_links.clear()

    def latency_ms(self) -> int:
        p = self.profile
        delay = self._rng.randint(p.min_latency_ms, p.max_latency_ms)
        if p.spike_rate and self._rng.random() < p.spike_rate:
            delay += self._rng.randint(0, p.spike_max_ms)
        return delay

    def send(self, msg: Message, incarnation: str = "") -> int:
        """Put `msg` on the wire; returns how many copies will be delivered (0 = dropped).
        `incarnation` is the sender's data dir when it sent it (a connection's handshake
        says it in raftq; a message outlives its sender's disk)."""
        self.stats.sent += 1
        p = self.profile
        if (msg.frm, msg.to) in self.cut_links or (
            p.drop_rate and self._rng.random() < p.drop_rate
        ):
            self.stats.dropped += 1
            return 0
        copies = 1
        if p.dup_rate and self._rng.random() < p.dup_rate:
            copies = 2
            self.stats.duplicated += 1
        now = self._clock.now_ms
        for _ in range(copies):
            self._queue.schedule(now + self.latency_ms(), EventKind.DELIVER, (msg, incarnation))
        return copies

    def arrives(self, msg: Message) -> bool:
        """Delivery-time check: the link may have been cut while the message was in flight."""
        if (msg.frm, msg.to) in self.cut_links:
            self.stats.dropped += 1
            return False
        self.stats.delivered += 1
        return True


# ------------------------------------------------------------------ safety checker


def state_fp(prev: bytes, e: Entry) -> bytes:
    """The simulated state machine's state after applying `e` on a state `prev`: a hash
    chain of every applied entry (what a snapshot must reproduce exactly)."""
    head = e.index.to_bytes(8, "big") + e.term.to_bytes(8, "big") + bytes([int(e.kind)])
    return hashlib.sha256(prev + head + e.data).digest()


def _same(a: Entry, b: Entry) -> bool:
    return a.term == b.term and a.kind == b.kind and a.data == b.data


def _show(e: Entry | None) -> str:
    if e is None:
        return "<none>"
    return f"({e.index},t{e.term},{e.kind.name},{e.data[:24]!r})"


class SafetyChecker:
    """Checks the Raft safety properties incrementally, from what drivers observe.

    It keeps its own mirror of each node's durable log (updated on every persist), the
    global committed prefix (with the term in which each index was committed) and every
    (term, leader) ever seen. Each `on_*` call checks only what that observation can
    break, so checking after every event stays cheap. Violations raise
    `InvariantViolation`; the checker never repairs state.
    """

    def __init__(self, node_ids: Sequence[int]) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.logs: dict[int, list[Entry]] = {n: [] for n in node_ids}
        # Prefix fingerprint of each node's log: fp[i] covers entries 1..i+1.
        self._fps: dict[int, list[int]] = {n: [] for n in node_ids}
        self._entry_fp: dict[tuple[int, int], int] = {}  # (index, term) -> prefix fingerprint
        self.committed: list[Entry] = []  # committed[i-1] is the entry committed at index i
        self.commit_term: list[int] = []  # term in which index i was (first known) committed
        self._committed_payload: dict[bytes, int] = {}
        self.node_commit: dict[int, int] = {n: 0 for n in node_ids}  # last persisted commit
        self.applied: dict[int, int] = {n: 0 for n in node_ids}
        self.max_acked_index = 0
        self.reads: dict[bytes, tuple[int, int, int]] = {}  # ctx -> (node, min index, acked)
        self.reads_ahead: list[tuple[int, bytes, int]] = []  # answered above known commit
        self.committed_fps: list[bytes] = []  # state fingerprint after each committed index
        self.snapshots_ahead: list[tuple[int, int, int, bytes]] = []  # (node, index, term, fp)
        self.reads_answered = 0
        # Logs of wiped nodes: node -> [(log, prefix fingerprints)] (see on_wipe).
        self._lost_logs: dict[int, list[tuple[list[Entry], list[int]]]] = {}

    # -- helpers
    @property
    def commit_index(self) -> int:
        return len(self.committed)

    def _entry_at(self, node: int, index: int) -> Entry | None:
        log = self.logs[node]
        return log[index - 1] if 0 < index <= len(log) else None

    # -- observations
    def on_leader(self, node: int, term: int) -> None:
        """`node` is leader of `term` (from its soft state). Checks election safety and
        leader completeness: every entry committed in an earlier term is in its log."""
        seen = self.leaders.get(term)
        if seen is None:
            self.leaders[term] = node
        elif seen != node:
            raise InvariantViolation(
                "election-safety", f"two leaders in term {term}: node {seen} and node {node}"
            )
        else:
            return  # already checked when it became leader
        for i, (entry, cterm) in enumerate(zip(self.committed, self.commit_term, strict=True)):
            if cterm >= term:
                continue
            mine = self._entry_at(node, i + 1)
            if mine is None or not _same(mine, entry):
                raise InvariantViolation(
                    "leader-completeness",
                    f"node {node} became leader of term {term} but its entry {i + 1} is "
                    f"{_show(mine)}; committed in term {cterm}: {_show(entry)}",
                )

    def on_persist(self, node: int, entries: Sequence[Entry]) -> None:
        """`entries` became durable on `node` (suffix from entries[0].index replaced)."""
        if not entries:
            return
        log = self.logs[node]
        fps = self._fps[node]
        first = entries[0].index
        if first < 1 or first > len(log) + 1:
            raise InvariantViolation(
                "log-shape", f"node {node} persisted from index {first} onto a log of {len(log)}"
            )
        own_commit = self.node_commit[node]
        for e in entries:
            if e.index <= own_commit:
                old = log[e.index - 1]
                if not _same(old, e):
                    raise InvariantViolation(
                        "committed-unchanged",
                        f"node {node} overwrote its committed entry {_show(old)} with "
                        f"{_show(e)} (its commit index is {own_commit})",
                    )
        last = entries[-1].index
        if last < own_commit:
            raise InvariantViolation(
                "committed-unchanged",
                f"node {node} truncated its log to {last} below its commit index {own_commit}",
            )
        del log[first - 1 :]
        del fps[first - 1 :]
        prev_fp = fps[-1] if fps else 0
        expected = first
        for e in entries:
            if e.index != expected:
                raise InvariantViolation(
                    "log-shape", f"node {node} persisted non-consecutive index {e.index}"
                )
            expected += 1
            fp = hash((prev_fp, e.term, e.kind, e.data))
            key = (e.index, e.term)
            known = self._entry_fp.setdefault(key, fp)
            if known != fp:
                raise InvariantViolation(
                    "log-matching",
                    f"node {node} holds entry {_show(e)} whose (index, term) another log "
                    f"also held with a different prefix up to index {e.index}",
                )
            log.append(e)
            fps.append(fp)
            prev_fp = fp

    def on_hard_state(self, node: int, hs: HardState) -> None:
        """`hs` became durable on `node`: its commit index says entries are committed."""
        commit = hs.commit
        if commit <= self.node_commit[node]:
            self.node_commit[node] = max(commit, self.node_commit[node])
            return
        log = self.logs[node]
        if commit > len(log):
            raise InvariantViolation(
                "commit-bound", f"node {node} commit index {commit} beyond its log of {len(log)}"
            )
        lo = self.node_commit[node]
        known = len(self.committed)
        for i in range(lo, min(commit, known)):
            if not _same(log[i], self.committed[i]):
                raise InvariantViolation(
                    "committed-unchanged",
                    f"node {node} commits {_show(log[i])} at index {i + 1} but "
                    f"{_show(self.committed[i])} was committed there",
                )
        # A leader's commit advance commits in its own term; a follower learning it first
        # gives an upper bound (checks leader completeness less strictly).
        self._learn_committed(log, commit, hs.term)
        self.node_commit[node] = commit

    def _learn_committed(self, log: list[Entry], upto: int, term: int) -> None:
        """Entries up to `upto` of `log` are committed (in `term` at the latest)."""
        for i in range(len(self.committed), upto):
            e = log[i]
            self.committed.append(e)
            self.commit_term.append(term)
            prev = self.committed_fps[-1] if self.committed_fps else b""
            self.committed_fps.append(state_fp(prev, e))
            if e.kind == EntryKind.NORMAL and e.data:
                prior = self._committed_payload.setdefault(e.data, e.index)
                if prior != e.index:
                    raise InvariantViolation(
                        "no-duplicates",
                        f"payload {e.data!r} committed twice: at {prior} and {e.index}",
                    )

    def on_snapshot(self, node: int, snap: SnapshotMeta, fp: bytes, source: int) -> None:
        """`node` installed a snapshot that `source` sent: it must be the committed state
        at its index (checked now, or once the checker learns that commit)."""
        index = snap.index
        src_log, src_fps = self.logs[source], self._fps[source]
        for lost_log, lost_fps in self._lost_logs.get(source, []):
            if index > len(src_log) or src_log[index - 1].term != snap.term:
                src_log, src_fps = lost_log, lost_fps  # sent before the source was wiped
        if index > len(src_log) or src_log[index - 1].term != snap.term:
            raise InvariantViolation(
                "snapshot-content",
                f"node {node} installed a snapshot at ({index}, t{snap.term}) that node "
                f"{source}'s log does not hold there",
            )
        if index <= len(self.committed):
            self._check_snapshot(node, index, snap.term, fp)
        else:
            self.snapshots_ahead.append((node, index, snap.term, fp))
        self.logs[node] = list(src_log[:index])
        self._fps[node] = list(src_fps[:index])
        self.applied[node] = max(self.applied[node], index)
        self.node_commit[node] = max(self.node_commit[node], index)

    def _check_snapshot(self, node: int, index: int, term: int, fp: bytes) -> None:
        if self.committed[index - 1].term != term or self.committed_fps[index - 1] != fp:
            raise InvariantViolation(
                "snapshot-content",
                f"node {node} installed a snapshot at ({index}, t{term}) whose state is not "
                "the committed state there",
            )

    def check_snapshots_committed(self) -> None:
        for node, index, term, fp in self.snapshots_ahead:
            if index > len(self.committed):
                raise InvariantViolation(
                    "snapshot-content",
                    f"node {node} installed a snapshot at {index}, never committed",
                )
            self._check_snapshot(node, index, term, fp)

    def on_restart(self, node: int, hs: HardState) -> None:
        self.node_commit[node] = hs.commit

    def on_wipe(self, node: int) -> None:
        """`node` lost its disk: its log, commit and applied state start from nothing
        (what the cluster committed stays committed: that is what is checked). A snapshot
        it sent before may still arrive: what its log held is kept for that check."""
        self._lost_logs.setdefault(node, []).append((self.logs[node], self._fps[node]))
        self.logs[node] = []
        self._fps[node] = []
        self.node_commit[node] = 0
        self.applied[node] = 0

    def on_apply(self, node: int, entry: Entry, term: int = 0) -> bool:
        """`node` applies `entry`; returns False when it is a replay of an applied index.

        A node applies only entries it knows are committed and holds durably. Its own
        commit index may reach the disk later than the apply (a leader applies as soon as a
        majority holds an entry), so an apply beyond what the checker knows is committed
        teaches it that commit (in `term` at the latest, the node's current term); another
        node committing something else there is then caught as a conflict.
        """
        log = self.logs[node]
        held = self._entry_at(node, entry.index)
        if held is None or not _same(held, entry):
            raise InvariantViolation(
                "apply-durable",
                f"node {node} applies {_show(entry)} but its durable log holds {_show(held)}",
            )
        if entry.index > len(self.committed):
            if term <= 0:
                raise InvariantViolation(
                    "apply-committed",
                    f"node {node} applies {_show(entry)} beyond the commit index "
                    f"{len(self.committed)}",
                )
            for i in range(self.applied[node], min(entry.index, len(self.committed))):
                if not _same(log[i], self.committed[i]):
                    raise InvariantViolation(
                        "committed-unchanged",
                        f"node {node} applies {_show(log[i])} at index {i + 1} but "
                        f"{_show(self.committed[i])} was committed there",
                    )
            self._learn_committed(log, entry.index, term)
        committed = self.committed[entry.index - 1]
        if not _same(entry, committed):
            raise InvariantViolation(
                "apply-sequence",
                f"node {node} applies {_show(entry)} but {_show(committed)} was committed there",
            )
        applied = self.applied[node]
        if entry.index <= applied:
            return False
        if entry.index != applied + 1:
            raise InvariantViolation(
                "apply-sequence",
                f"node {node} applies index {entry.index} right after {applied} (gap)",
            )
        self.applied[node] = entry.index
        return True

    def on_ack(self, index: int) -> None:
        """A client got the answer for the proposal at `index` (applied on its leader)."""
        self.max_acked_index = max(self.max_acked_index, index)

    def on_read_issued(self, node: int, ctx: bytes) -> None:
        """A ReadIndex request starts: its answer must cover everything committed so far."""
        self.reads[ctx] = (node, self.commit_index, self.max_acked_index)

    def on_read_state(self, node: int, rs: ReadState) -> None:
        issued = self.reads.get(rs.context)
        if issued is None:
            raise InvariantViolation(
                "read-index", f"node {node} answered unknown read context {rs.context!r}"
            )
        at_node, min_index, acked = issued
        if at_node != node:
            raise InvariantViolation(
                "read-index", f"read {rs.context!r} issued at node {at_node} answered by {node}"
            )
        if rs.index < min_index:
            raise InvariantViolation(
                "read-index",
                f"node {node} answered read {rs.context!r} with index {rs.index} but "
                f"{min_index} was committed (and {acked} acknowledged) when it was issued",
            )
        if rs.index > self.commit_index:
            # The leader's commit index may reach a disk (where the checker learns it)
            # after the ReadState leaves; the read is served only once applied >= index.
            # So the index must be committed by the end, checked by `check_reads_committed`.
            self.reads_ahead.append((node, rs.context, rs.index))
        self.reads_answered += 1

    def check_reads_committed(self) -> None:
        """Every ReadState index handed out must have been committed in the end."""
        for node, ctx, index in self.reads_ahead:
            if index > self.commit_index:
                raise InvariantViolation(
                    "read-index",
                    f"node {node} answered read {ctx!r} with index {index}, never committed "
                    f"(commit {self.commit_index})",
                )


# ------------------------------------------------------------------ nodes and cores


class CrashPoint(Enum):
    """Where inside the next non-trivial Ready an armed node crashes."""

    BEFORE_PERSIST = "before-persist"  # `messages` sent, nothing persisted
    AFTER_PERSIST = "after-persist"  # persisted, `messages_after_persist` never sent


CoreFactory = Callable[[int, tuple[int, ...], Any, random.Random, dict[str, Any]], Any]
StorageFactory = Callable[[int], Any]


def default_core_factory(
    node_id: int,
    peers: tuple[int, ...],
    storage: Any,
    rng: random.Random,
    options: dict[str, Any],
) -> Any:
    """Build a `raft.core.RaftCore`, passing only the Config fields it actually has."""
    from raft.core import Config, RaftCore

    wanted = {"id": node_id, "peers": peers, **options}
    if dataclasses.is_dataclass(Config):
        names = {f.name for f in dataclasses.fields(Config)}
        wanted = {k: v for k, v in wanted.items() if k in names}
    return RaftCore(Config(**wanted), storage, rng)


def default_storage_factory(node_id: int) -> Any:
    from raft.memory_storage import MemoryStorage

    return MemoryStorage()


@dataclass(slots=True)
class SimStateMachine:
    """A node's durable state machine: the applied index, the state fingerprint and the
    applied payloads (which make snapshots grow with the log, like a real queue's)."""

    applied: int = 0
    fp: bytes = b""
    payloads: list[bytes] = field(default_factory=list)

    def apply(self, e: Entry) -> bool:
        if e.index <= self.applied:
            return False  # a replay after a restart or below an installed snapshot
        self.applied = e.index
        self.fp = state_fp(self.fp, e)
        self.payloads.append(e.data)
        return True

    def snapshot_bytes(self, term: int) -> bytes:
        return msgpack.packb([self.applied, term, self.fp, self.payloads], use_bin_type=True)

    @classmethod
    def from_snapshot(cls, data: bytes) -> tuple[int, int, SimStateMachine]:
        index, term, fp, payloads = msgpack.unpackb(data, raw=False)
        return index, term, cls(index, fp, list(payloads))


@dataclass(slots=True)
class SimNode:
    id: int
    storage: Any
    core: Any = None  # None while crashed
    handler: ReadyHandler | None = None  # the driver's Ready policy, shared with raft.driver
    step: StorageStep | None = None
    hard_state: HardState = field(default_factory=HardState)
    soft_state: SoftState = field(default_factory=lambda: SoftState(0, Role.FOLLOWER))
    crash_point: CrashPoint | None = None
    crash_trigger: str = "any"  # which Ready the armed crash waits for: any, vote, append
    crash_job: StorageJob | None = None  # the armed crash happens at this job's write
    pending: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # index -> (term, data)
    paused_until_ms: int = 0  # a stopped process (GC pause, SIGSTOP): no ticks, no input
    incarnation: int = 0  # bumped on every restart: events of an older one are void
    job: StorageJob | None = None  # the Ready being written (the loop waits for it)
    notices: deque[tuple[Any, ...]] = field(default_factory=deque)  # posted completions
    slow_disk_until_ms: int = 0  # a slow fsync period: writes take much longer
    disk_stalled_until_ms: int = 0  # the disk hangs: a write, and the loop, wait
    sm: SimStateMachine = field(default_factory=SimStateMachine)  # durable
    receiver: SnapshotReceiver | None = None
    incoming: bytearray = field(default_factory=bytearray)  # a snapshot being received
    # Snapshots received whole, waiting for the core to install them: (index, term) ->
    # (bytes, sender id).
    received: dict[tuple[int, int], tuple[bytes, int]] = field(default_factory=dict)
    senders: dict[int, SnapshotSender] = field(default_factory=dict)  # leader side
    # Its data dir's incarnation (new on every wipe) and the peers' as announced to it
    # (the transport learns them in the handshake; here from each delivery).
    identity: str = ""
    seen: dict[int, str] = field(default_factory=dict)
    wipes: int = 0

    @property
    def up(self) -> bool:
        return self.core is not None

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.soft_state.role == Role.LEADER


class _CrashNow(Exception):
    """Raised inside a node's storage step to crash it at an armed point."""


# ------------------------------------------------------------------ parameters and results


@dataclass(frozen=True, slots=True)
class SimParams:
    """Everything that defines a run: same params, same run (event for event)."""

    seed: int
    nodes: int = 3
    fault_ms: int = 2_000  # virtual duration of the fault phase
    liveness_budget_ms: int = 30_000  # after healing, converge within this
    tick_ms: int = 10
    tick_jitter_ms: int = 2
    final_proposals: int = 3
    trace_len: int = 40  # recent events kept for failure messages
    verbose: bool = False  # keep the full trace (replay)
    fault_mix: str = ""  # "" = every fault; "membership" = mostly disks lost and churn

    def replay_command(self) -> str:
        extra = ""
        env_extra = ""
        default = SimParams(seed=0)
        if self.fault_ms != default.fault_ms:
            extra += f" --fault-ms {self.fault_ms}"
            env_extra += f" RAFTQ_SIM_FAULT_MS={self.fault_ms}"
        if self.fault_mix:
            extra += f" --fault-mix {self.fault_mix}"
            env_extra += f" RAFTQ_SIM_FAULT_MIX={self.fault_mix}"
        return (
            f".venv/bin/python -m raft.simulation --seed {self.seed} --nodes {self.nodes}"
            f"{extra} --verbose   # or: RAFTQ_SIM_SEED={self.seed} RAFTQ_SIM_NODES={self.nodes}"
            f"{env_extra} .venv/bin/python -m pytest tests/raft/test_simulation.py -k replay -s"
        )


@dataclass(slots=True)
class SimResult:
    params: SimParams
    end_ms: int
    healed_at_ms: int
    converged_at_ms: int
    events: int
    commit_index: int
    terms: int
    proposals_accepted: int
    proposals_committed: int
    proposals_superseded: int
    proposals_acked: int
    reads_issued: int
    reads_answered: int
    crashes: dict[str, int]
    faults: dict[str, int]
    network: NetworkStats
    core_options: dict[str, Any]
    driver_options: dict[str, Any]
    trace: list[str]
    # What the membership faults did: disks lost, configuration changes by kind.
    membership: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"seed={self.params.seed} nodes={self.params.nodes} events={self.events} "
            f"virtual_ms={self.end_ms} healed_at={self.healed_at_ms} "
            f"converged_at={self.converged_at_ms} terms={self.terms} commit={self.commit_index} "
            f"proposals accepted={self.proposals_accepted} committed={self.proposals_committed} "
            f"superseded={self.proposals_superseded} acked={self.proposals_acked} "
            f"reads={self.reads_answered}/{self.reads_issued} crashes={self.crashes} "
            f"msgs sent={self.network.sent} dropped={self.network.dropped} "
            f"dup={self.network.duplicated} faults={self.faults} "
            f"membership={self.membership} core={self.core_options} driver={self.driver_options}"
        )


# ------------------------------------------------------------------ fault scheduler


FAULT_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("partition", 3),
    ("one_way", 2),
    ("isolate_leader", 3),
    ("isolate_leader_one_way", 2),
    ("crash", 2),
    ("crash_leader", 3),
    ("crash_mid_ready", 4),
    ("profile", 3),
    ("transfer_leader", 2),
    ("pause", 2),
    ("slow_disk", 2),
    ("disk_stall", 3),
    ("minority_leader", 3),
    ("lonely_append", 3),
    ("campaign_storm", 2),
    ("member_remove", 2),
    ("member_add", 2),
    ("amnesia", 2),
    ("heal", 4),
)


#: A mix that loses disks often, with what makes that dangerous: isolated and lagging
#: nodes, crashes, leader changes, membership churn.
MEMBERSHIP_FAULT_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("amnesia", 6),
    ("member_remove", 2),
    ("member_add", 2),
    ("partition", 3),
    ("isolate_leader", 3),
    ("crash", 2),
    ("crash_leader", 2),
    ("transfer_leader", 1),
    ("pause", 1),
    ("heal", 3),
)
FAULT_MIXES = {"": FAULT_WEIGHTS, "membership": MEMBERSHIP_FAULT_WEIGHTS}


class FaultScheduler:
    """Draws the next fault and when it happens, from the run's single RNG."""

    def __init__(
        self,
        rng: random.Random,
        min_gap_ms: int = 30,
        max_gap_ms: int = 250,
        weights: tuple[tuple[str, int], ...] = FAULT_WEIGHTS,
    ) -> None:
        self._rng = rng
        self._names = [n for n, _ in weights]
        self._weights = [w for _, w in weights]
        self.min_gap_ms = min_gap_ms
        self.max_gap_ms = max_gap_ms

    def next_gap_ms(self) -> int:
        return self._rng.randint(self.min_gap_ms, self.max_gap_ms)

    def next_fault(self) -> str:
        return self._rng.choices(self._names, self._weights)[0]


# ------------------------------------------------------------------ the simulation


def _fmt_msg(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.index or m.log_term:
        s += f" i{m.index}/lt{m.log_term}"
    if m.entries:
        s += f" +{len(m.entries)}[{m.entries[0].index}..{m.entries[-1].index}]"
    if m.commit:
        s += f" c{m.commit}"
    if m.reject:
        s += f" REJECT hint={m.reject_hint}/t{m.hint_term}"
    if m.context:
        s += f" ctx={m.context!r}"
    return s


class Simulation:
    """One seeded run: fault phase, heal, liveness phase, final checks.

    `core_factory`/`storage_factory` default to the real RaftCore and MemoryStorage;
    tests may pass fakes.
    """

    def __init__(
        self,
        params: SimParams,
        core_factory: CoreFactory | None = None,
        storage_factory: StorageFactory | None = None,
        core_options: dict[str, Any] | None = None,
        driver_options: dict[str, Any] | None = None,
    ) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.clock = VirtualClock()
        self.queue = EventQueue()
        self.net = Network(self.rng, self.queue, self.clock)
        self.faults = FaultScheduler(self.rng, weights=FAULT_MIXES[params.fault_mix])
        self.ids: tuple[int, ...] = tuple(range(1, params.nodes + 1))
        self.checker = SafetyChecker(self.ids)
        self._core_factory = core_factory or default_core_factory
        # A disk can be lost (the amnesia fault) where storage is the simulation's own.
        self._can_wipe = storage_factory is None
        storage_factory = storage_factory or default_storage_factory
        self._storage_factory = storage_factory
        self.core_options = core_options if core_options is not None else self._draw_options()
        self.driver_options = (
            driver_options if driver_options is not None else self._draw_driver_options()
        )
        self.nodes: dict[int, SimNode] = {
            n: SimNode(n, storage_factory(n), identity=f"{n}.0") for n in self.ids
        }
        # Wiped nodes not yet voters again under their new incarnation: while one is, no
        # other disk is lost (a majority of every configuration keeps its disk).
        self.recovering: set[int] = set()
        self.events = 0
        self.trace: deque[tuple[int, str, Any]] = deque(
            maxlen=None if params.verbose else params.trace_len
        )
        self.fault_counts: dict[str, int] = {}
        self.membership_counts: dict[str, int] = {}
        self.crash_kinds: dict[str, int] = {}
        self.accepted: dict[bytes, tuple[int, int, int]] = {}  # data -> (node, index, term)
        self.acked: set[bytes] = set()
        self.reads_issued = 0
        self.answered_reads: set[bytes] = set()
        self._next_payload = 0
        self._next_read = 0
        self.phase = "faults"
        self.healed_at_ms = -1

    # -- setup
    def _draw_options(self) -> dict[str, Any]:
        """Core configuration varies by seed so runs cover pre-vote/check-quorum combos."""
        r = self.rng
        return {
            "election_ticks": 10,
            "heartbeat_ticks": r.choice((1, 1, 2, 3)),
            "pre_vote": r.random() < 0.75,
            "check_quorum": r.random() < 0.75,
            "max_inflight_msgs": r.choice((1, 4, 256)),
            "max_msg_bytes": r.choice((64, 1 << 20)),  # 64: about two entries per APP
        }

    def _draw_driver_options(self) -> dict[str, Any]:
        """How the node's driver runs its storage step, as raft.driver does: inline, each
        write blocking the node's loop for `disk_ms` (much longer in a slow_disk fault, until
        the disk is back in a disk_stall), its completions taken right after it.
        `shared_txn` applies in the log's own write.
        """
        r = self.rng
        return {
            "disk_ms": r.choice(((0, 2), (1, 5), (2, 20))),
            "shared_txn": r.random() < 0.5,
            # Compaction: keep the log at most this many applied entries long (0: never),
            # keeping `trailing` of them; followers behind it get snapshots in chunks.
            "compact_every": r.choice((0, 8, 20, 60)),
            "trailing": r.choice((0, 2, 10)),
            "chunk_bytes": r.choice((32, 200, 4096)),
            "window_chunks": r.choice((1, 2, 4)),
            # A learner is promoted within this many entries of the leader's log.
            "promote_lag": r.choice((0, 5, 100)),
        }

    def _start_core(self, node: SimNode) -> None:
        core_rng = random.Random(self.rng.getrandbits(64))
        options = dict(self.core_options)
        # Usually the state machine's durable applied index; sometimes 0, so the core
        # hands every committed entry out again (the driver must skip the replays).
        applied = node.sm.applied
        options["applied"] = applied if self.rng.random() < 0.7 else 0
        node.core = self._core_factory(node.id, self.ids, node.storage, core_rng, options)
        hs, _conf = node.storage.initial_state()
        node.hard_state = hs
        node.soft_state = SoftState(0, Role.FOLLOWER)
        node.crash_point = None
        node.crash_job = None
        node.incarnation += 1
        node.job = None
        node.notices.clear()
        # The state machine's durable applied index, whatever the core was told: the
        # handler skips what is applied already, as the driver does.
        node.handler = ReadyHandler(node.core, applied)
        node.step = self._storage_step(node)
        node.receiver = self._snapshot_receiver(node)
        node.incoming = bytearray()
        node.received = {}
        node.senders = {}
        node.seen = {}  # a new process: no connections yet
        self.checker.on_restart(node.id, hs)

    # -- tracing
    def _log(self, kind: str, detail: Any) -> None:
        self.trace.append((self.clock.now_ms, kind, detail))

    def format_trace(self) -> list[str]:
        out = []
        for at, kind, detail in self.trace:
            text = _fmt_msg(detail) if isinstance(detail, Message) else str(detail)
            out.append(f"{at:>7}ms {kind:<10} {text}")
        return out

    def _fail(self, exc: BaseException) -> SimulationFailure:
        p = self.params
        roles = ", ".join(
            f"n{n.id}:{'down' if not n.up else n.soft_state.role.label}"
            f"/t{n.hard_state.term}/c{self.checker.node_commit[n.id]}"
            f"/a{self.checker.applied[n.id]}/last{len(self.checker.logs[n.id])}"
            for n in self.nodes.values()
        )
        trace = "\n  ".join(self.format_trace()[-p.trace_len :])
        msg = (
            f"simulation failed: {type(exc).__name__}: {exc}\n"
            f"seed={p.seed} nodes={p.nodes} virtual_time={self.clock.now_ms}ms "
            f"phase={self.phase} events={self.events} core={self.core_options} "
            f"driver={self.driver_options}\n"
            f"nodes: {roles}\n"
            f"recent events (oldest first):\n  {trace}\n"
            f"replay: {p.replay_command()}"
        )
        return SimulationFailure(msg, p, self.clock.now_ms, exc)

    # -- driving one node: raft.ready_handler, as raft.driver runs it
    def _drive(self, node: SimNode) -> None:
        """One node's driver loop: take completions, then issue Readies while allowed."""
        while node.core is not None:
            if node.notices:
                self._take_notices(node)
                continue
            handler = node.handler
            assert handler is not None
            if not handler.wants_ready():
                return
            job, send_now = handler.issue()
            self._issued(node, job, send_now)

    def _issued(self, node: SimNode, job: StorageJob, send_now: list[Message]) -> None:
        rd = job.rd
        if rd.soft_state is not None:
            if rd.soft_state != node.soft_state:
                self._log(
                    f"n{node.id}",
                    f"role {rd.soft_state.role.label} leader={rd.soft_state.leader_id}",
                )
            node.soft_state = rd.soft_state
            if rd.soft_state.role == Role.LEADER:
                term = rd.hard_state.term if rd.hard_state is not None else node.hard_state.term
                self.checker.on_leader(node.id, term)
        # 1. leader messages go out at once, in parallel with the local fsync
        for m in send_now:
            if m.type is MessageType.SNAP and m.chunk is None:
                self._start_snapshot(node, m)
            else:
                self._send(m)
        for rs in rd.read_states:
            self.checker.on_read_state(node.id, rs)
            self.answered_reads.add(rs.context)
            self._log(f"n{node.id}", f"read-state index={rs.index} ctx={rs.context!r}")
        must_persist = rd.hard_state is not None or bool(rd.entries)
        if node.crash_point is not None and must_persist and self._triggered(node, rd):
            node.crash_job = job
        # 2. the write, inline: the loop is blocked until it ends (a STORAGE event)
        assert node.job is None, "one Ready at a time"
        node.job = job
        done_ms = self.clock.now_ms + self._disk_ms(node)
        node.paused_until_ms = max(node.paused_until_ms, done_ms)
        self.queue.schedule(done_ms, EventKind.STORAGE, (node.id, node.incarnation))

    def _disk_ms(self, node: SimNode) -> int:
        lo, hi = self.driver_options.get("disk_ms", (0, 0))
        if node.slow_disk_until_ms > self.clock.now_ms:
            lo, hi = lo + 40, hi + 300
        return self.rng.randint(lo, hi)

    def _storage_step(self, node: SimNode) -> StorageStep:
        """The driver's storage step over this node's MemoryStorage and the checker."""
        d = self.driver_options

        def save(hard_state: HardState | None, entries: list[Entry]) -> None:
            node.storage.save(hard_state, entries)
            self.checker.on_persist(node.id, entries)
            if hard_state is not None:
                node.hard_state = hard_state
                self.checker.on_hard_state(node.id, hard_state)
            self._check_storage(node)

        def apply(entries: list[Entry]) -> list[Any]:
            term = node.core.term if node.core is not None else 0
            for e in entries:
                if node.sm.apply(e):
                    self.checker.on_apply(node.id, e, term)
            self._maybe_compact(node)
            return [None] * len(entries)

        def install(snap: SnapshotMeta) -> None:
            data, source = node.received.pop((snap.index, snap.term))
            index, term, sm = SimStateMachine.from_snapshot(data)
            if (index, term) != (snap.index, snap.term):
                raise InvariantViolation(
                    "snapshot-content", f"node {node.id}: snapshot bytes say ({index}, {term})"
                )
            node.storage.apply_snapshot(snap)  # one atomic write: log and state replaced
            node.sm = sm
            node.hard_state = node.storage.initial_state()[0]
            self.checker.on_snapshot(node.id, snap, sm.fp, source)
            self._log(f"n{node.id}", f"snapshot installed at ({index}, t{term}) from n{source}")

        def save_with_apply(
            hard_state: HardState | None, entries: list[Entry], applying: list[Entry]
        ) -> list[Any]:
            results = apply(applying)  # one write transaction: both or neither
            if hard_state is not None or entries:
                save(hard_state, entries)
            return results

        def post(item: tuple[Any, ...]) -> None:
            crash = node.crash_job
            if (
                crash is not None
                and item[0] == "persisted"
                and crash in item[1]
                and node.crash_point is CrashPoint.AFTER_PERSIST
            ):
                raise _CrashNow
            node.notices.append(item)

        return StorageStep(
            save=save,
            apply=apply,
            save_with_apply=save_with_apply if d.get("shared_txn") else None,
            on_persisted=lambda segment: post(("persisted", segment)),
            on_applied=lambda jobs, entries, results: post(("applied", jobs, entries)),
            install=install,
        )

    def _maybe_compact(self, node: SimNode) -> None:
        """The driver's compaction policy, in the storage step: once the log holds more
        than `compact_every` applied entries, drop all but the last `trailing` of them."""
        every = self.driver_options.get("compact_every", 0)
        if not every:
            return
        storage = node.storage
        durable = min(node.sm.applied, storage.initial_state()[0].commit)
        if durable - storage.first_index() + 1 <= every:
            return
        new_first = durable - self.driver_options.get("trailing", 0) + 1
        if new_first > storage.first_index():
            storage.compact(new_first)

    # -- snapshots in chunks: raft.snapshot_transfer, as raft.driver runs it
    def _snapshot_receiver(self, node: SimNode) -> SnapshotReceiver:
        def begin(chunk: Any) -> None:
            node.incoming = bytearray()

        def write(offset: int, data: bytes) -> None:
            node.incoming[offset:] = data

        def finish(chunk: Any) -> bytes:
            return hashlib.sha256(bytes(node.incoming)).digest()

        return SnapshotReceiver(node.id, begin=begin, write=write, finish=finish)

    def _start_snapshot(self, node: SimNode, m: Message) -> None:
        """The core asks for a snapshot to be sent to `m.to`: one of our state right now."""
        assert m.snapshot is not None and node.core is not None
        current = node.senders.get(m.to)
        if (
            current is not None
            and not current.ended
            and current.source.meta.index >= m.snapshot.index
        ):
            return  # the one on its way is recent enough
        d = self.driver_options
        index = node.sm.applied
        term = node.storage.term(index)
        meta = SnapshotMeta(index, term, m.snapshot.conf)
        data = node.sm.snapshot_bytes(term)
        self._next_snap_id = getattr(self, "_next_snap_id", 0) + 1
        source = SnapshotSource(
            meta,
            b"s%d" % self._next_snap_id,
            len(data),
            hashlib.sha256(data).digest(),
            lambda offset, length: data[offset : offset + length],
        )
        sender = SnapshotSender(
            node_id=node.id,
            to=m.to,
            term=node.core.term,
            commit=m.commit,
            source=source,
            now_s=self.clock.now_ms / 1000,
            chunk_bytes=d.get("chunk_bytes", 4096),
            window_chunks=d.get("window_chunks", 4),
            retry_s=0.05,
            give_up_s=0.5,
        )
        node.senders[m.to] = sender
        self._log(f"n{node.id}", f"snapshot to n{m.to} at ({index}, t{term}), {len(data)} bytes")
        for chunk in sender.start(self.clock.now_ms / 1000):
            self._send(chunk)

    def _snapshot_sender_event(self, node: SimNode, peer: int, msgs: list[Message]) -> None:
        for chunk in msgs:
            self._send(chunk)
        sender = node.senders.get(peer)
        if sender is not None and sender.ended and node.core is not None:
            del node.senders[peer]
            self._log(f"n{node.id}", f"snapshot to n{peer} {'failed' if sender.failed else 'sent'}")
            node.core.report_snapshot(peer, failed=sender.failed)
            self._drive(node)

    def _tick_senders(self, node: SimNode) -> None:
        if not node.is_leader:
            node.senders.clear()  # a transfer belongs to a leadership
            return
        now_s = self.clock.now_ms / 1000
        for peer, sender in list(node.senders.items()):
            self._snapshot_sender_event(node, peer, sender.tick(now_s))

    def _write(self, node: SimNode) -> None:
        """The node's pending write ends: the storage step on its job (persist and apply,
        completions posted), unless an armed crash fires before or after the persist."""
        job, node.job = node.job, None
        assert node.step is not None and job is not None
        if node.crash_job is job and node.crash_point is CrashPoint.BEFORE_PERSIST:
            self._crash(node, "crash before persist", CrashPoint.BEFORE_PERSIST.value, True)
            return
        try:
            node.step.run(job)
        except _CrashNow:
            self._crash(
                node, "crash after persist, before sending", CrashPoint.AFTER_PERSIST.value, True
            )

    def _take_notices(self, node: SimNode) -> None:
        """The driver task handles the storage step's completions, in order."""
        handler = node.handler
        assert handler is not None
        while node.notices and node.core is not None:
            item = node.notices.popleft()
            if item[0] == "persisted":
                for m in handler.persisted(item[1]):
                    self._send(m)
            else:
                _, jobs, entries = item
                for e in entries:
                    want = node.pending.pop(e.index, None)
                    if want is not None and want == (e.term, e.data):
                        self.acked.add(e.data)
                        self.checker.on_ack(e.index)
                handler.applied(jobs)

    def _check_storage(self, node: SimNode) -> None:
        """The storage must hold exactly what the checker's mirror says was persisted."""
        mirror = self.checker.logs[node.id]
        last = node.storage.last_index()
        if last != len(mirror):
            raise InvariantViolation(
                "storage", f"node {node.id} storage last_index {last} != persisted {len(mirror)}"
            )
        if last and node.storage.term(last) != mirror[-1].term:
            raise InvariantViolation(
                "storage", f"node {node.id} storage term({last}) != persisted {mirror[-1].term}"
            )

    def _send(self, m: Message) -> None:
        if m.to == m.frm:
            self.queue.schedule(self.clock.now_ms, EventKind.DELIVER, (m, ""))
            return
        sender = self.nodes.get(m.frm)
        self.net.send(m, sender.identity if sender is not None else "")

    @staticmethod
    def _triggered(node: SimNode, rd: Ready) -> bool:
        """Does this Ready match what the armed crash waits for?"""
        trigger = node.crash_trigger
        if trigger == "vote":  # the Ready that records a vote just cast
            hs = rd.hard_state
            old = node.hard_state
            return hs is not None and hs.vote != 0 and (hs.term, hs.vote) != (old.term, old.vote)
        if trigger == "append":
            return bool(rd.entries)
        return True

    def _crash(
        self, node: SimNode, why: str, kind: str = "between-readies", quick: bool = False
    ) -> None:
        """Lose everything volatile: the core object, pending client calls and reads.

        A `quick` restart (a crash inside a Ready) often comes back within the same
        election, which is when forgotten votes or acks would do harm."""
        self._log(f"n{node.id}", why)
        self.crash_kinds[kind] = self.crash_kinds.get(kind, 0) + 1
        node.core = None
        node.handler = None
        node.step = None
        node.crash_point = None
        node.crash_job = None
        node.job = None  # a write in progress never reached the disk
        node.notices.clear()
        node.pending.clear()
        node.senders = {}
        node.received = {}
        node.incoming = bytearray()  # a partly received snapshot is lost with the process
        crash_copy = getattr(node.storage, "crash_copy", None)
        if crash_copy is not None:  # the restarted core shares no object with the old one
            node.storage = crash_copy()
        node.paused_until_ms = 0
        node.soft_state = SoftState(0, Role.FOLLOWER)
        if quick:  # often an immediate restart: supervisor respawn, same election
            downtime = 0 if self.rng.random() < 0.5 else self.rng.randint(1, 30)
        else:
            downtime = self.rng.randint(20, 600)
        self.queue.schedule(self.clock.now_ms + downtime, EventKind.RESTART, node.id)

    # -- membership: raft.membership_policy, as raft.driver runs it
    def _housekeeping(self, node: SimNode) -> None:
        """The leader's per-tick membership step (the driver's _membership_housekeeping)."""
        seen = dict(node.seen)
        seen[node.id] = node.identity
        planned = next_change(node.core, seen, self.driver_options.get("promote_lag", 100))
        if planned is not None:
            why, peer, conf = planned
            self._change_conf(node, conf, f"{why} n{peer}")

    def _change_conf(self, node: SimNode, conf: ConfState, why: str) -> bool:
        try:
            index, term = node.core.propose_conf_change(conf)
        except (RaftError, ValueError) as exc:
            self._log(f"n{node.id}", f"conf change ({why}) refused: {exc}")
            return False
        self._log(
            f"n{node.id}",
            f"conf change ({why}) -> ({index}, t{term}) voters={list(conf.voters)} "
            f"learners={list(conf.learners)}",
        )
        kind = "conf_" + why.split()[0]
        self.membership_counts[kind] = self.membership_counts.get(kind, 0) + 1
        return True

    def _add_member(self, leader: SimNode, pid: int) -> bool:
        """Add `pid` back as a learner, to be promoted once caught up (an API add)."""
        conf = leader.core.conf_state
        if pid in conf.ids():
            return False
        others = tuple(m for m in conf.members if m.id != pid)
        new = ConfState(
            conf.voters,
            tuple(sorted({*conf.learners, pid})),
            (*others, Member(pid, promote=True)),
        )
        return self._change_conf(leader, new, f"add n{pid}")

    def _wipe(self, node: SimNode) -> None:
        """The disk is lost: crash, come back with nothing under a new incarnation."""
        if node.up:
            self._crash(node, "crash (amnesia)")
        else:
            self._log(f"n{node.id}", "amnesia (while down)")
        node.wipes += 1
        self.membership_counts["disks_lost"] = self.membership_counts.get("disks_lost", 0) + 1
        node.identity = f"{node.id}.{node.wipes}"
        node.storage = self._storage_factory(node.id)
        node.sm = SimStateMachine()
        node.hard_state = HardState()
        node.pending.clear()
        self.checker.on_wipe(node.id)
        self.recovering.add(node.id)

    def _recovered(self, leader: SimNode | None) -> None:
        """Wiped nodes that are voters again under their new incarnation, in a committed
        configuration, have all a voter needs."""
        if leader is None or not self.recovering:
            return
        core = leader.core
        if core.log.last_conf_index() > core.log.committed:
            return
        conf = core.conf_state
        for pid in list(self.recovering):
            member = conf.member(pid)
            if pid in conf.voters and member and member.incarnation == self.nodes[pid].identity:
                self.recovering.discard(pid)

    # -- events
    def _dispatch(self, kind: EventKind, payload: Any) -> None:
        if kind is EventKind.DELIVER:
            m, sent_as = payload
            node = self.nodes.get(m.to)
            if node is None or not node.up:
                return
            if node.paused_until_ms > self.clock.now_ms:  # queued in its socket buffer
                self.queue.schedule(node.paused_until_ms, EventKind.DELIVER, payload)
                return
            if not self.net.arrives(m):
                return
            if sent_as:
                sender = self.nodes.get(m.frm)
                if sender is not None and sender.identity == sent_as:
                    # the live process's connection: its handshake named it (a message
                    # from a process that is gone does not undo what a newer one said)
                    node.seen[m.frm] = sent_as
                why = drop_message(node.core.conf_state, node.id, node.identity, m, sent_as)
                if why is not None:
                    self._log(f"n{node.id}", f"drop {m.type.name} from n{m.frm}: {why}")
                    return
            self.trace.append((self.clock.now_ms, "deliver", m))
            if m.type is MessageType.SNAP and m.chunk is not None:
                assert node.receiver is not None
                resp, whole = node.receiver.on_chunk(m, node.core.term)
                if resp is not None:
                    self._send(resp)
                if whole is None:
                    return
                assert whole.snapshot is not None
                key = (whole.snapshot.index, whole.snapshot.term)
                node.received[key] = (bytes(node.incoming), m.frm)
                m = whole
            elif m.type is MessageType.SNAP_RESP:
                sender = node.senders.get(m.frm)
                if sender is not None:
                    self._snapshot_sender_event(
                        node, m.frm, sender.on_resp(m, self.clock.now_ms / 1000)
                    )
                return
            node.core.step(m)
            self._drive(node)
        elif kind is EventKind.TICK:
            node = self.nodes[payload]
            p = self.params
            jitter = self.rng.randint(-p.tick_jitter_ms, p.tick_jitter_ms)
            self.queue.schedule(self.clock.now_ms + p.tick_ms + jitter, EventKind.TICK, node.id)
            if node.up and node.paused_until_ms <= self.clock.now_ms:
                node.core.tick()
                if node.core.role is Role.LEADER:
                    self._housekeeping(node)
                self._drive(node)
                if node.up and node.senders:
                    self._tick_senders(node)
        elif kind is EventKind.PROPOSE:
            self._client_propose(payload)
        elif kind is EventKind.READ:
            self._client_read()
        elif kind is EventKind.FAULT:
            self._fault()
        elif kind is EventKind.CRASH:
            node_id, incarnation = payload
            node = self.nodes[node_id]
            if node.up and node.incarnation == incarnation and self.phase == "faults":
                self._crash(node, "crash (scheduled)", quick=True)
        elif kind is EventKind.HEAL:
            if self.phase == "faults":
                self.net.heal()
                self._log("fault", "heal (scheduled)")
        elif kind is EventKind.STORAGE:
            node_id, incarnation = payload
            node = self.nodes[node_id]
            if not node.up or node.incarnation != incarnation:
                return  # the process that queued these writes is gone
            # A hung disk holds the write, and with it the loop; so does a stopped process.
            resume_ms = max(node.paused_until_ms, node.disk_stalled_until_ms)
            if resume_ms > self.clock.now_ms:
                node.paused_until_ms = resume_ms
                self.queue.schedule(resume_ms, EventKind.STORAGE, payload)
                return
            self._write(node)
            if node.up and node.incarnation == incarnation:
                self._drive(node)  # the completions, then the next Ready
        elif kind is EventKind.RESTART:
            node = self.nodes[payload]
            if not node.up:
                self._start_core(node)
                self._log(
                    f"n{node.id}",
                    f"restart (t{node.hard_state.term} "
                    f"c{node.hard_state.commit} last{node.storage.last_index()})",
                )
                self._drive(node)

    def _leaders(self) -> list[SimNode]:
        """Nodes that believe they lead and can answer a client right now."""
        now = self.clock.now_ms
        return [n for n in self.nodes.values() if n.is_leader and n.paused_until_ms <= now]

    def _client_propose(self, payload: Any) -> None:
        if self.phase == "faults":
            self.queue.schedule(
                self.clock.now_ms + self.rng.randint(3, 40), EventKind.PROPOSE, None
            )
        leaders = self._leaders()
        if leaders and self.rng.random() < 0.9:
            node = self.rng.choice(leaders)
        else:  # a client with a stale leader guess: must be refused or forwarded
            now = self.clock.now_ms
            up = [n for n in self.nodes.values() if n.up and n.paused_until_ms <= now]
            if not up:
                return
            node = self.rng.choice(up)
        self._propose(node, payload or b"p%d" % self._new_payload())

    def _new_payload(self) -> int:
        self._next_payload += 1
        return self._next_payload

    def _propose(self, node: SimNode, data: bytes) -> bool:
        try:
            index, term = node.core.propose(data)
        except (NotLeader, ProposalDropped) as exc:
            self._log(f"n{node.id}", f"propose {data!r} refused: {type(exc).__name__}")
            return False
        self._log(f"n{node.id}", f"propose {data!r} -> ({index}, t{term})")
        self.accepted[data] = (node.id, index, term)
        node.pending[index] = (term, data)
        self._drive(node)
        return True

    def _client_read(self) -> None:
        if self.phase == "faults":
            self.queue.schedule(self.clock.now_ms + self.rng.randint(10, 80), EventKind.READ)
        leaders = self._leaders()
        if not leaders:
            return
        self._read(self.rng.choice(leaders))

    def _read(self, node: SimNode) -> bytes | None:
        """Ask `node` for a ReadIndex; returns the request context unless refused."""
        self._next_read += 1
        ctx = b"r%d" % self._next_read
        try:
            node.core.read_index(ctx)
        except (NotLeader, ProposalDropped) as exc:
            self._log(f"n{node.id}", f"read {ctx!r} refused: {type(exc).__name__}")
            return None
        self.reads_issued += 1
        self.checker.on_read_issued(node.id, ctx)
        self._log(f"n{node.id}", f"read {ctx!r} issued (commit {self.checker.commit_index})")
        self._drive(node)
        return ctx

    def _fault(self) -> None:
        if self.phase != "faults":
            return
        self.queue.schedule(self.clock.now_ms + self.faults.next_gap_ms(), EventKind.FAULT)
        name = self.faults.next_fault()
        self.fault_counts[name] = self.fault_counts.get(name, 0) + 1
        rng = self.rng
        ids = list(self.ids)
        leaders = self._leaders()
        leader = max(leaders, key=lambda n: n.hard_state.term) if leaders else None
        up = [n for n in self.nodes.values() if n.up]
        detail = ""
        if name == "partition":
            rng.shuffle(ids)
            k = rng.randint(1, len(ids) - 1)
            self.net.partition([ids[:k], ids[k:]])
            detail = f"{sorted(ids[:k])} | {sorted(ids[k:])}"
        elif name == "one_way":
            for _ in range(rng.randint(1, 3)):
                a, b = rng.sample(ids, 2)
                self.net.cut(a, b)
                detail += f" {a}-/->{b}"
        elif name in ("isolate_leader", "isolate_leader_one_way"):
            target = leader.id if leader else rng.choice(ids)
            if name == "isolate_leader":
                inbound = outbound = True
            else:
                inbound = rng.random() < 0.5
                outbound = not inbound
            self.net.isolate(target, ids, inbound=inbound, outbound=outbound)
            detail = f"n{target} in={inbound} out={outbound}"
        elif name in ("crash", "crash_leader"):
            target = (
                leader if (name == "crash_leader" and leader) else (rng.choice(up) if up else None)
            )
            if target is not None:
                self._crash(target, f"crash ({name})")
                detail = f"n{target.id}"
        elif name == "crash_mid_ready":
            if up and rng.random() < 0.3:
                targets = up  # a burst: every node may crash at its next matching Ready
            elif leader and rng.random() < 0.4:
                targets = [leader]
            else:
                targets = [rng.choice(up)] if up else []
            point = rng.choice((CrashPoint.BEFORE_PERSIST, CrashPoint.AFTER_PERSIST))
            trigger = rng.choice(("any", "vote", "append"))
            for target in targets:
                target.crash_point = point
                target.crash_trigger = trigger
            detail = f"{[t.id for t in targets]} armed {point.value} on {trigger}"
        elif name == "profile":
            pname = rng.choice(sorted(PROFILES))
            self.net.profile = PROFILES[pname]
            detail = pname
        elif name == "transfer_leader":
            others = [n for n in leader.core.voters if n != leader.id] if leader else []
            if leader is not None and others:
                to = rng.choice(others)
                try:  # its soft state may lag the core, as the driver's role does
                    leader.core.transfer_leader(to)
                    detail = f"n{leader.id} -> n{to}"
                except (NotLeader, ValueError) as exc:
                    detail = f"n{leader.id} -> n{to} refused: {type(exc).__name__}"
                self._drive(leader)
        elif name == "pause":
            target = leader if (leader and rng.random() < 0.5) else (rng.choice(up) if up else None)
            if target is not None:
                target.paused_until_ms = max(
                    target.paused_until_ms, self.clock.now_ms + rng.randint(50, 1_500)
                )
                detail = f"n{target.id} until {target.paused_until_ms}ms"
        elif name == "slow_disk":  # fsyncs take hundreds of ms, and the loop waits on each
            target = rng.choice(up) if up else None
            if target is not None:
                target.slow_disk_until_ms = self.clock.now_ms + rng.randint(100, 1_000)
                detail = f"n{target.id} until {target.slow_disk_until_ms}ms"
        elif name == "minority_leader":  # the leader and one follower cut off together:
            # the leader appends what only that follower gets, the majority elects another
            # leader, and the follower's uncommitted suffix is overwritten on the heal
            if leader is not None and len(ids) >= 3:
                others = [n for n in ids if n != leader.id]
                buddy = rng.choice(others)
                rest = [n for n in others if n != buddy]
                self.net.partition([[leader.id, buddy], rest])
                slow = self.nodes[buddy]  # its writes (and its loop) drag across the heal
                slow.slow_disk_until_ms = self.clock.now_ms + rng.randint(300, 1_500)
                # healed soon after the majority elects: the new leader's first APP then
                # overwrites the follower's suffix, arriving while it is still writing it
                heal_ms = self.clock.now_ms + rng.randint(150, 600)
                self.queue.schedule(heal_ms, EventKind.HEAL)
                detail = f"[{leader.id}, {buddy}] | {rest} until {heal_ms}ms"
        elif name == "lonely_append":  # the leader's newest entries reach one follower,
            # whose disk hangs; then the leader crashes: the next leader's first APP,
            # waiting in that follower's socket buffer, overwrites a suffix it is still writing
            if leader is not None and len(ids) >= 3:
                others = [n for n in ids if n != leader.id]
                buddy = rng.choice(others)
                for n in others:
                    if n != buddy:
                        self.net.cut(leader.id, n)
                self.nodes[buddy].disk_stalled_until_ms = self.clock.now_ms + rng.randint(
                    150, 1_000
                )
                self.queue.schedule(
                    self.clock.now_ms + rng.randint(20, 80),
                    EventKind.CRASH,
                    (leader.id, leader.incarnation),
                )
                detail = f"n{leader.id} -> only n{buddy}, then crash"
        elif name == "disk_stall":  # the disk hangs, and the node's loop with it: messages
            # from several leaders pile up in its socket buffer and land in a burst once
            # the write ends, stepped between Readies
            followers = [n for n in up if not n.is_leader]
            target = rng.choice(followers or up) if up else None
            if target is not None:
                target.disk_stalled_until_ms = self.clock.now_ms + rng.randint(200, 1_500)
                detail = f"n{target.id} until {target.disk_stalled_until_ms}ms"
        elif name == "campaign_storm":  # election timeouts firing together: split votes
            now = self.clock.now_ms
            candidates = [n for n in up if not n.is_leader and n.paused_until_ms <= now]
            if len(candidates) >= 2 and len(up) >= 3:  # at least one node left to vote
                chosen = rng.sample(candidates, rng.randint(2, min(len(candidates), len(up) - 1)))
                if rng.random() < 0.5:  # and the voters crash while recording their vote
                    for n in up:
                        if n not in chosen:
                            n.crash_point = rng.choice(tuple(CrashPoint))
                            n.crash_trigger = "vote"
                for n in chosen:
                    n.core.campaign()
                for n in chosen:
                    self._drive(n)
                detail = f"{[n.id for n in chosen]}"
        elif name == "member_remove":  # any voter, the leader too, keeping two
            self._recovered(leader)
            if leader is not None:
                conf = leader.core.conf_state
                if len(conf.voters) > 2:
                    pid = leader.id if rng.random() < 0.3 else rng.choice(conf.voters)
                    new = ConfState(
                        tuple(v for v in conf.voters if v != pid),
                        conf.learners,
                        tuple(m for m in conf.members if m.id != pid),
                    )
                    seen = {**leader.seen, leader.id: leader.identity}
                    unsafe = unsafe_change(new, seen)  # what the driver refuses
                    lost = [v for v in new.voters if v in self.recovering]
                    if lost and len(new.voters) - len(lost) <= len(new.voters) // 2:
                        # the run's precondition: a majority of every configuration
                        # keeps its disks (the driver may not know of the loss yet)
                        unsafe = f"would leave {lost} (wiped) without an intact majority"
                    if unsafe is None:
                        self._change_conf(leader, new, f"remove n{pid}")
                    else:
                        self._log(f"n{leader.id}", f"remove n{pid} refused: {unsafe}")
                    self._drive(leader)
                    detail = f"n{pid} by n{leader.id}"
        elif name == "member_add":
            if leader is not None:
                absent = [i for i in ids if i not in leader.core.conf_state.ids()]
                if absent:
                    pid = rng.choice(absent)
                    self._add_member(leader, pid)
                    self._drive(leader)
                    detail = f"n{pid} by n{leader.id}"
        elif name == "amnesia":  # a disk lost (a crash that loses durable state), while
            # a majority of the configuration keeps its disks: one node at a time, every
            # voter recorded under the incarnation it runs, at least three of them
            self._recovered(leader)
            if leader is not None and not self.recovering and self._can_wipe:
                core = leader.core
                conf = core.conf_state
                intact = all(
                    (m := conf.member(v)) is not None and m.incarnation == self.nodes[v].identity
                    for v in conf.voters
                )
                # ...and every node's durable log holds that record (a node whose log
                # does not could count the wiped node's vote: see membership_policy)
                recorded_at = core.log.last_conf_index()
                everywhere = all(len(self.checker.logs[i]) >= recorded_at for i in ids)
                if (
                    intact
                    and everywhere
                    and len(conf.voters) >= 3
                    and not conf.learners
                    and recorded_at <= core.log.committed
                ):
                    target = self.nodes[rng.choice(ids)]
                    self._wipe(target)
                    detail = f"n{target.id} now {target.identity}"
        elif name == "heal":
            self.net.heal()
        self._log("fault", f"{name} {detail}".strip())

    # -- phases
    def _run_until(self, done: Callable[[], bool], deadline_ms: int) -> bool:
        dispatch = self._dispatch
        queue = self.queue
        clock = self.clock
        while True:
            if done():
                return True
            at_ms, kind, payload = queue.pop()
            if at_ms > deadline_ms:
                queue.schedule(at_ms, kind, payload)
                clock.advance_to(deadline_ms)
                return done()
            clock.advance_to(at_ms)
            self.events += 1
            dispatch(kind, payload)

    def _heal(self) -> None:
        self.phase = "liveness"
        self.healed_at_ms = self.clock.now_ms
        self.net.heal()
        self.net.profile = CALM
        for node in self.nodes.values():
            node.crash_point = None
            node.crash_job = None
            node.paused_until_ms = 0
            node.slow_disk_until_ms = 0
            node.disk_stalled_until_ms = 0
            if not node.up:
                self.queue.schedule(self.clock.now_ms, EventKind.RESTART, node.id)
        self._log("heal", "all links healed, crashed nodes restart, calm network")

    def _stable_leader(self, members_only: bool = False) -> SimNode | None:
        """The leader every up node follows (with `members_only`: every member of its
        configuration), in the highest term, once all nodes are up."""
        if not all(n.up for n in self.nodes.values()):
            return None
        leaders = self._leaders()
        if members_only and leaders:  # a removed node may still believe it leads (in an
            # older term, nobody telling it otherwise): only members of the newest count
            top = max(leaders, key=lambda n: n.hard_state.term)
            leaders = [n for n in leaders if n is top or n.id in top.core.conf_state.ids()]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        term = leader.hard_state.term
        ids = leader.core.conf_state.ids() if members_only else self.ids
        for i in ids:
            n = self.nodes[i]
            if n.hard_state.term != term or n.soft_state.leader_id != leader.id:
                return None
        return leader

    def _restore_membership(self) -> bool:
        """After healing: add back every node the faults removed, one change at a time
        (the leader's housekeeping promotes them once caught up). True once all are
        voters again."""
        leader = self._stable_leader(members_only=True)
        if leader is None:
            return False
        conf = leader.core.conf_state
        if set(conf.voters) == set(self.ids) and not conf.learners:
            # ...and every node is the member under the data dir it runs now (a node that
            # lost its disk was swapped in again, not left a voter that never counts)
            return all(
                (m := conf.member(i)) is not None and m.incarnation == self.nodes[i].identity
                for i in self.ids
            )
        absent = [i for i in self.ids if i not in conf.ids()]
        if absent and leader.core.log.last_conf_index() <= leader.core.log.committed:
            self._add_member(leader, absent[0])
            self._drive(leader)
        return False

    def _liveness(self) -> int:
        """After healing: a stable leader appears and the final proposals commit and are
        applied everywhere. A final proposal that gets superseded (its slot went to another
        entry) is retried with a new payload, like a client would."""
        p = self.params
        deadline = self.healed_at_ms + p.liveness_budget_ms
        finals: list[list[bytes]] = [[] for _ in range(p.final_proposals)]
        last_try_ms = [-(10**9)] * p.final_proposals
        final_reads: list[bytes] = []
        read_asked_ms = [0]
        checker = self.checker

        def outcome(data: bytes, leader: SimNode) -> str:
            """'committed', 'lost' (will never commit) or 'pending'."""
            got = self.accepted.get(data)
            if got is None:
                return "lost"  # refused
            _, index, term = got
            c = checker.committed
            if index <= len(c):
                return "committed" if c[index - 1].data == data else "lost"
            # Uncommitted: lost once a leader of a newer term committed in its own term
            # (its no-op sits above every entry it inherited).
            if term != leader.hard_state.term and c and c[-1].term == leader.hard_state.term:
                return "lost"
            return "pending"

        def converged() -> bool:
            if not self._restore_membership():
                return False
            leader = self._stable_leader()
            if leader is None:
                return False
            done = True
            now = self.clock.now_ms
            for k, attempts in enumerate(finals):
                state = outcome(attempts[-1], leader) if attempts else "lost"
                if state == "committed":
                    continue
                done = False
                if state == "lost" and now - last_try_ms[k] >= p.tick_ms:
                    last_try_ms[k] = now
                    data = b"final-%d-%d" % (k, len(attempts))
                    attempts.append(data)
                    self._propose(leader, data)
            if not done:
                return False
            want = checker.commit_index
            if len(checker.logs[leader.id]) != want:
                return False
            if not all(
                checker.applied[n] == want and checker.node_commit[n] == want for n in self.ids
            ):
                return False
            # Finally one linearizable read must be answered (re-asked if it got lost).
            if final_reads and final_reads[-1] in self.answered_reads:
                return True
            if not final_reads or now - read_asked_ms[0] >= 20 * p.tick_ms:
                read_asked_ms[0] = now
                ctx = self._read(leader)
                if ctx is not None:
                    final_reads.append(ctx)
            return False

        if not self._run_until(converged, deadline):
            leader = self._stable_leader()
            raise LivenessFailure(
                f"no convergence within {p.liveness_budget_ms}ms of healing (healed at "
                f"{self.healed_at_ms}ms): stable leader={leader.id if leader else None}, "
                f"final attempts={finals}, final reads={final_reads} (answered: "
                f"{[r for r in final_reads if r in self.answered_reads]}), "
                f"commit={checker.commit_index}"
            )
        return self.clock.now_ms

    def _final_checks(self) -> tuple[int, int]:
        """Logs identical and fully committed; every accepted proposal resolved."""
        checker = self.checker
        checker.check_reads_committed()
        checker.check_snapshots_committed()
        ref = checker.logs[self.ids[0]]
        for n in self.ids:
            log = checker.logs[n]
            if len(log) != len(ref) or any(not _same(a, b) for a, b in zip(log, ref, strict=True)):
                raise InvariantViolation(
                    "converged-logs", f"node {n} log differs from node {self.ids[0]} at the end"
                )
            status = self.nodes[n].core.status()
            if status.commit != checker.commit_index:
                raise InvariantViolation(
                    "converged-logs",
                    f"node {n} status commit {status.commit} != {checker.commit_index}",
                )
        committed_n = superseded = 0
        for data, (node, index, term) in self.accepted.items():
            entry = checker.committed[index - 1] if index <= checker.commit_index else None
            if entry is not None and entry.data == data:
                if entry.term != term:
                    raise InvariantViolation(
                        "proposal-index",
                        f"proposal {data!r} returned ({index}, t{term}) from node {node} but "
                        f"committed as {_show(entry)}",
                    )
                committed_n += 1
            else:
                if checker._committed_payload.get(data) is not None:
                    raise InvariantViolation(
                        "proposal-index",
                        f"proposal {data!r} returned index {index} but committed at "
                        f"{checker._committed_payload[data]}",
                    )
                if data in self.acked:
                    raise InvariantViolation(
                        "acked-lost", f"acknowledged proposal {data!r} is not committed"
                    )
                superseded += 1
        return committed_n, superseded

    def run(self) -> SimResult:
        """Run the whole scenario; raises SimulationFailure with a replayable report."""
        p = self.params
        try:
            for node in self.nodes.values():
                self._start_core(node)
                self.queue.schedule(self.rng.randint(0, p.tick_ms), EventKind.TICK, node.id)
            self.queue.schedule(self.rng.randint(50, 200), EventKind.FAULT)
            self.queue.schedule(self.rng.randint(0, 50), EventKind.PROPOSE)
            self.queue.schedule(self.rng.randint(0, 80), EventKind.READ)
            self._run_until(lambda: False, p.fault_ms)
            self._heal()
            converged_at = self._liveness()
            committed_n, superseded = self._final_checks()
        except Exception as exc:  # core exceptions are failures too, with the same report
            if isinstance(exc, SimulationFailure):
                raise
            raise self._fail(exc) from exc
        return SimResult(
            params=p,
            end_ms=self.clock.now_ms,
            healed_at_ms=self.healed_at_ms,
            converged_at_ms=converged_at,
            events=self.events,
            commit_index=self.checker.commit_index,
            terms=len(self.checker.leaders),
            proposals_accepted=len(self.accepted),
            proposals_committed=committed_n,
            proposals_superseded=superseded,
            proposals_acked=len(self.acked),
            reads_issued=self.reads_issued,
            reads_answered=self.checker.reads_answered,
            crashes=dict(sorted(self.crash_kinds.items())),
            faults=dict(sorted(self.fault_counts.items())),
            network=self.net.stats,
            core_options=self.core_options,
            driver_options=self.driver_options,
            trace=self.format_trace() if p.verbose else [],
            membership=dict(sorted(self.membership_counts.items())),
        )


# ------------------------------------------------------------------ replay CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raft.simulation", description="Replay one seeded Raft simulation."
    )
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--fault-ms", type=int, default=SimParams(seed=0).fault_ms)
    parser.add_argument(
        "--fault-mix", choices=sorted(FAULT_MIXES), default="", help="which faults to draw"
    )
    parser.add_argument("--verbose", action="store_true", help="print the full event trace")
    parser.add_argument(
        "--core-logs", action="store_true", help="also show the core's structlog events"
    )
    args = parser.parse_args(argv)
    if not args.core_logs:
        from common.logging_setup import configure_logging

        configure_logging("console", "warning", cache_logger_on_first_use=False)
    params = SimParams(
        seed=args.seed,
        nodes=args.nodes,
        fault_ms=args.fault_ms,
        verbose=args.verbose,
        fault_mix=args.fault_mix,
    )
    sim = Simulation(params)
    out = sys.stdout
    try:
        result = sim.run()
    except SimulationFailure as exc:
        if args.verbose:
            out.write("\n".join(sim.format_trace()) + "\n")
        out.write(f"FAILED\n{exc}\n")
        return 1
    if args.verbose:
        out.write("\n".join(result.trace) + "\n")
    out.write(f"OK {result.summary()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
