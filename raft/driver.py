"""The asyncio Raft driver: one task owns the pure core and does its I/O.

Why one task: the core is a plain object with no locks; serialising every call through a
single task (STYLE.md point 2) makes its state transitions race-free and gives natural
batching: while an fsync runs, proposals and peer messages pile up in the inbox, and the
next turn feeds them all to the core, so they share one append and one fsync.

One turn of the driver task:
  1. drain the inbox (peer messages, proposals, reads, ticks, transfers, and the storage
     step's completions) into the core;
  2. take one Ready; send `messages` and flush them to the sockets at once (the leader
     replicates while it fsyncs);
  3. hand the Ready to the storage step.
The storage step (one writer per node; no transaction ever spans an `await`) runs inline,
in the driver task, on that Ready:
  4. persists its hard state + entries in ONE transaction, then posts "persisted": the
     task sends `messages_after_persist` (votes and append replies assert durable state)
     and advances the core's stable index;
  5. applies its committed entries in ONE state machine transaction and posts "applied":
     the task resolves proposal futures and reads, calls `on_applied`, and advances the
     core's applied index.
With `shared_txn` (raftq's nodes and the demo node: the log and the state live in one LMDB
env) 4 and 5 are ONE write transaction. Otherwise every node persists, then applies. A
leader that applied first (committed entries are handed out only once durable, so either
order is safe) answered one fsync sooner but delayed its own append, which the commit of
the next entries waits for; measured with raftq's nodes run without `shared_txn`
(2026-12-05, `benchmarks.ab`, three runs of 6 rounds), persist-first/apply-first came out
at send1 medians 1.03, 0.80, 1.13 and send100 1.27, 1.03, 0.97 (0.97 and 1.04 over all 18
rounds, rounds on both sides of 1): noise, so the simpler path stayed, one order for all.
The completions reach the task through its inbox, first thing in the next turn, so only
one Ready is ever on its way to the disk and every reply leaves after its own write.

Why inline: it blocks the event loop for one LMDB commit, and while it does, peer messages
and requests pile up and the next turn batches them into one Ready. A storage thread
(removed) was measured against it twice: `python -m benchmarks.raft_bench` (two alternating
pairs of runs: inline 24.1k/25.0k proposals/s against 21.1k/22.4k, single proposer p50
2.17/2.37 ms against 2.61/2.74), and on 2026-12-05 with `python -m benchmarks.ab` (two
3-node raftq clusters on 2 shared cores, `--storage-thread` as B, 5 s per workload, 11
rounds in two runs): send1 (64 in flight) thread/inline 0.58, 0.79, 1.06, 0.88, 1.20 and
0.68, 1.04, 0.81, 0.69, 1.09, 0.97, median 0.88, the leader's CPU per request higher with
the thread in 10 of 11 rounds; send100 1.32, 1.08, 1.13, 1.00, 1.04 and 1.05, 0.69, 1.10,
1.15, 0.80, 1.09, median 1.08, rounds on both sides of 1. The apply is Python and holds
the GIL, so a thread overlaps little and costs GIL hand-offs and loop wake-ups per Ready:
one path, inline.

Safety: a proposal future resolves only after its entry was applied here, which the core
allows only once a majority has it durably and it is durable here too. Futures are keyed by
(index, term): the entry applied at that index decides the outcome, same term -> the state
machine's result, different term -> ProposalDropped. As log terms never decrease along the
log, applying an entry of term T also proves every pending proposal of a term below T can
never commit; those fail at once with ProposalDropped. A leader that steps down for lack
of a quorum cannot learn its entries' fate until the partition heals: its proposals fail at
once with LeadershipLost (outcome unknown). A failed persist stops the driver
(NodeStopped for every waiter): the process must exit and restart from its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any, cast

import structlog

from raft.core import Config, RaftCore, SizeLimits, Status
from raft.errors import (
    ConfChangeRefused,
    EntryTooLarge,
    LeadershipLost,
    NotLeader,
    ProposalDropped,
    RaftError,
    SafetyViolation,
    StorageError,
)
from raft.failpoints import failpoint
from raft.framing import config_digest
from raft.membership_policy import VOTE_TYPES, drop_message, next_change, unsafe_change
from raft.messages import (
    ConfState,
    Entry,
    HardState,
    Member,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
    max_append_frame_bytes,
)
from raft.peer_tls import PeerTls
from raft.ready_handler import ReadyHandler, StorageJob, StorageStep
from raft.snapshot_service import SnapshotService, message_is_chunk
from raft.state_machine import SharedTxnStateMachine, SnapshotStateMachine, StateMachine
from raft.storage import DurableStorage, TransactionalStorage
from raft.transport import DEFAULT_MAX_FRAME_BYTES, PeerTransport, Transport

log = structlog.get_logger("raft.driver")

Address = tuple[str, int]

# Inbox item kinds (first element of each tuple).
_MSG = 0
_PROPOSE = 1
_READ = 2
_TICK = 3
_TRANSFER = 4
_PERSISTED = 5
_APPLIED = 6
_STORAGE_FAILED = 7
_SNAP_REPORT = 8
_CONF = 9


class NodeStopped(RaftError):
    """The node stopped (or failed) before this request's outcome was known."""


class Overloaded(RaftError):
    """Too many proposals are waiting for commit; retry later (nothing was proposed)."""

    def __init__(self, waiting: int, limit: int) -> None:
        self.waiting = waiting
        self.limit = limit
        super().__init__(f"{waiting} proposals already waiting (limit {limit}); retry later")


class RaftNode:
    """A Raft member: the core, its LMDB log, its TCP transport and a state machine."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, Address],
        storage: DurableStorage,
        state_machine: StateMachine,
        *,
        cluster_id: str,
        shared_txn: bool = False,
        tick_ms: int = 50,
        election_ticks: int = 10,
        heartbeat_ticks: int = 1,
        rng_seed: int | None = None,
        listen: Address | None = None,
        on_applied: Callable[[Sequence[Entry], list[Any]], None] | None = None,
        on_role_change: Callable[[Role, int, int], None] | None = None,
        advertise: dict[int, str] | None = None,
        slow_fsync_ms: float = 100.0,
        max_pending_proposals: int = 100_000,
        snapshot_dir: str | None = None,
        snapshot_entries: int = 0,
        snapshot_trailing: int = 0,
        compact_chunk_entries: int = 2_000,
        snapshot_options: dict[str, Any] | None = None,
        members: Sequence[Member] = (),
        bootstrap: bool = True,
        incarnation: str = "",
        promote_lag: int = 100,
        on_conf_change: Callable[[ConfState], None] | None = None,
        pre_vote: bool = True,
        check_quorum: bool = True,
        size_limits: SizeLimits | None = None,
        secret: bytes | None = None,
        previous_secret: bytes | None = None,
        peer_tls: PeerTls | None = None,
        transport_factory: Callable[..., PeerTransport] = Transport,
    ) -> None:
        if node_id not in peers:
            raise ValueError(f"peers must include this node ({node_id}): got {sorted(peers)}")
        self.node_id = node_id
        self.peers = dict(peers)
        # How this node was told to reach its peers (--peers): it wins over the address a
        # configuration records (a proxy, a NAT, another network path may sit between
        # these two nodes only); the configuration's address serves nodes not listed.
        self._configured_peers = dict(peers)
        self.cluster_id = cluster_id
        self._storage = storage
        self._sm = state_machine
        # One write transaction for the log's append and the state machine's apply: only
        # for a log and a state machine that say they can (both in one LMDB env).
        if shared_txn and not (
            isinstance(storage, TransactionalStorage)
            and isinstance(state_machine, SharedTxnStateMachine)
        ):
            raise TypeError("shared_txn needs a TransactionalStorage and a SharedTxnStateMachine")
        self.shared_txn = shared_txn
        self._transport_factory = transport_factory
        self.tick_s = tick_ms / 1000.0
        self.election_ticks = election_ticks
        self._on_applied = on_applied
        self._on_role_change = on_role_change
        self._advertise = advertise or {
            pid: f"{host}:{port}" for pid, (host, port) in self.peers.items()
        }
        self.slow_fsync_ms = slow_fsync_ms
        self._log = log.bind(node_id=node_id)
        self._listen = listen if listen is not None else self.peers[node_id]
        self._rng = random.Random(rng_seed)
        # Membership: `peers` bootstraps a new cluster (with `members` saying how to reach
        # them); a node that joins (`bootstrap=False`) knows no configuration until the
        # cluster sends it one, and only talks to `peers` until then.
        self.incarnation = incarnation
        self.promote_lag = promote_lag
        self._on_conf_change = on_conf_change
        self._conf_version = -1
        self._departed: set[int] = set()
        self._recorded: frozenset[int] = frozenset()
        self._last_deferred: tuple[str, int, str] | None = None
        self.conf = ConfState(())
        self._cfg_options = dict(
            id=node_id,
            peers=tuple(sorted(self.peers)) if bootstrap else (),
            members=tuple(members),
            election_ticks=election_ticks,
            heartbeat_ticks=heartbeat_ticks,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            **asdict(size_limits or SizeLimits()),
        )
        core_cfg = Config(**self._cfg_options)
        core_cfg.validate()  # fail at construction, not at start()
        self.max_entry_bytes = core_cfg.max_entry_bytes
        # What the transport starts with. Every APP the core can build must fit one frame,
        # on this node and its peers. Peers that disagree on the members or the entry limit
        # refuse each other: start() adds that digest (only a node without a configuration
        # in its log bootstraps from `peers`). `secret` authenticates the handshake.
        frame_bound = max_append_frame_bytes(core_cfg.max_entry_bytes, core_cfg.max_msg_bytes)
        self._transport_options: dict[str, Any] = {
            "max_frame_bytes": max(DEFAULT_MAX_FRAME_BYTES, frame_bound),
            "incarnation": incarnation,
        }
        if secret is not None:
            self._transport_options["secret"] = secret
            if previous_secret is not None:  # a rotation under way (raft/framing.py)
                self._transport_options["previous_secret"] = previous_secret
        if peer_tls is not None:  # mutual TLS, the node id from the certificate (peer_tls.py)
            self._transport_options["tls"] = peer_tls
        self._core: RaftCore | None = None
        self._transport: PeerTransport | None = None
        self._worker: _StorageWorker | None = None
        self.max_pending_proposals = max_pending_proposals
        # Snapshots and compaction (off unless the state machine can snapshot and a
        # directory is given): compact once `snapshot_entries` applied entries sit in the
        # log, keeping the last `snapshot_trailing` for followers a little behind.
        self.snapshot_dir = snapshot_dir
        self.snapshot_entries = snapshot_entries
        self.snapshot_trailing = snapshot_trailing
        self.compact_chunk_entries = compact_chunk_entries
        self._snapshot_options = snapshot_options or {}
        self._snapshots: SnapshotService | None = None
        self._queued_proposals = 0  # in the inbox, not yet handed to the core
        self._handler: ReadyHandler | None = None

        self._inbox: deque[tuple[Any, ...]] = deque()
        self._wake: asyncio.Event | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._started = False
        self._failure: BaseException | None = None

        self._applied = 0
        self._applied_term = 0
        self._role = Role.FOLLOWER
        self._leader_id = 0
        self._term = 0
        # index -> (term, future); resolved when that index is applied.
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._read_ctx = itertools.count(1)
        self._reads_by_ctx: dict[bytes, list[asyncio.Future[int]]] = {}
        self._reads_waiting_apply: list[tuple[int, asyncio.Future[int]]] = []
        self._leader_waiters: list[asyncio.Future[None]] = []
        self._transfer_target = 0
        self._votes_granted: dict[int, set[int]] = {}
        self.stats: dict[str, int] = {
            "readies": 0,
            "persists": 0,
            "applied_batches": 0,
            "proposals": 0,
            "slow_fsyncs": 0,
        }
        self._last_persist_ms = 0.0
        self._max_persist_ms = 0.0

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restore the core from storage, bind the transport and start ticking."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._applied = self._sm.applied_index()
        cfg = Config(applied=self._applied, **self._cfg_options)
        self._core = RaftCore(cfg, self._storage, self._rng)
        self._handler = ReadyHandler(self._core, self._applied)
        st = self._core.status()
        self._term = st.term
        if self._applied:
            with contextlib.suppress(RaftError):
                self._applied_term = self._storage.term(self._applied)
        from_log = bool(self._core.log.conf_entries or self._storage.initial_state()[1].ids())
        bootstrap = () if from_log else tuple(self._cfg_options["peers"])
        self._transport_options["config_digest"] = config_digest(bootstrap, self.max_entry_bytes)
        self._transport = self._transport_factory(
            self.node_id,
            self.cluster_id,
            self._listen,
            {pid: addr for pid, addr in self.peers.items() if pid != self.node_id},
            self._on_transport_message,
            with_incarnation=True,
            **self._transport_options,
        )
        await self._transport.start()
        self._sync_conf(self._core)
        self._log.info(
            "raft.node_started",
            term=st.term,
            commit=st.commit,
            applied=self._applied,
            last_index=self._storage.last_index(),
            listen=f"{self._transport.listen_addr[0]}:{self._transport.listen_addr[1]}",
        )
        if self.snapshot_dir is not None and isinstance(self._sm, SnapshotStateMachine):
            self._snapshots = SnapshotService(
                self.node_id,
                self.snapshot_dir,
                self._sm,
                self._storage.term,
                self._send_snapshot_message,
                lambda peer, failed: self._push((_SNAP_REPORT, peer, failed)),
                **self._snapshot_options,
            )
        self._worker = _StorageWorker(self)
        self._run_task = loop.create_task(self._run(), name=f"raft-driver-{self.node_id}")
        self._tick_task = loop.create_task(self._ticker(), name=f"raft-ticker-{self.node_id}")

    async def stop(
        self, *, transfer: bool = False, transfer_timeout_s: float | None = None
    ) -> None:
        """Stop the node; with transfer=True a leader first hands leadership to a peer."""
        if not self._started or self._stopping:
            return
        if transfer and self.is_leader and self._failure is None:
            target = self._best_transfer_target()
            if target:
                timeout_s = transfer_timeout_s or self.tick_s * self.election_ticks * 2
                try:
                    await self.transfer_leader(target, timeout_s=timeout_s)
                except RaftError as exc:
                    self._log.warning("raft.transfer_on_stop_failed", to=target, error=str(exc))
        self._stopping = True
        for task in (self._tick_task, self._run_task):
            if task is not None:
                task.cancel()
        for task in (self._tick_task, self._run_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._transport is not None:
            await self._transport.stop()
        self._fail_all(NodeStopped("node stopped before the outcome was known"))
        if self._snapshots is not None:
            self._snapshots.close()
        self._log.info("raft.node_stopped", term=self._term, applied=self._applied)

    async def wait_closed(self) -> BaseException | None:
        """Wait until the driver task ends (stop() or a fatal storage error); the failure."""
        if self._run_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(self._run_task)
        return self._failure

    @property
    def failure(self) -> BaseException | None:
        """The fatal error that stopped the driver, if any (the node must then exit)."""
        return self._failure

    @property
    def listen_addr(self) -> Address:
        assert self._transport is not None
        return self._transport.listen_addr

    # ------------------------------------------------------------ public requests

    @property
    def leader_id(self) -> int:
        return self._leader_id

    @property
    def is_leader(self) -> bool:
        return self._role == Role.LEADER

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def applied_index(self) -> int:
        return self._applied

    def not_leader(self) -> NotLeader:
        lid = self._leader_id or None
        return NotLeader(lid, self._advertise.get(lid) if lid else None)

    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]:
        """Queue a proposal; the future gets the state machine's result once applied here.

        The lean entry point for servers that answer from a done-callback (no task per
        request). Raises NotLeader at once on a node that is not the leader.
        """
        if type(data) is not bytes:
            raise TypeError(f"proposal data must be bytes, got {type(data).__name__}")
        self._check_running()
        if len(data) > self.max_entry_bytes:
            raise EntryTooLarge(len(data), self.max_entry_bytes)
        if self._role != Role.LEADER:
            raise self.not_leader()
        waiting = len(self._pending) + self._queued_proposals
        if waiting >= self.max_pending_proposals:
            raise Overloaded(waiting, self.max_pending_proposals)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued_proposals += 1
        self._push((_PROPOSE, data, fut))
        return fut

    async def propose(self, data: bytes, timeout_s: float | None = None) -> Any:
        """Replicate `data`; return the state machine's result once committed and applied.

        Raises NotLeader (with the leader hint) on a follower, ProposalDropped if the entry
        can no longer commit, LeadershipLost if this leader lost its quorum first and
        TimeoutError after `timeout_s` (outcome unknown for both).
        """
        fut = self.propose_nowait(data)
        if timeout_s is None:
            return await fut
        async with asyncio.timeout(timeout_s):
            return await fut

    async def read_index(self, timeout_s: float | None = None) -> int:
        """Linearizable read barrier: returns a read index once applied_index reaches it."""
        self._check_running()
        if self._role != Role.LEADER:
            raise self.not_leader()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._push((_READ, fut))
        if timeout_s is None:
            return await fut
        async with asyncio.timeout(timeout_s):
            return await fut

    async def transfer_leader(self, to: int, timeout_s: float | None = None) -> None:
        """Ask the leader to hand leadership to `to`; returns once `to` leads."""
        self._check_running()
        if to not in (self.conf.voters or self.peers):
            raise ValueError(f"transfer target {to} is not a voter")
        if self._leader_id == to:
            return
        if self._role != Role.LEADER:
            raise self.not_leader()
        timeout_s = timeout_s or self.tick_s * self.election_ticks * 2
        self._push((_TRANSFER, to))
        try:
            async with asyncio.timeout(timeout_s):
                while self._leader_id != to:
                    await self._wait_leader_change()
        except TimeoutError as exc:
            self._transfer_target = 0  # the core aborts it after an election timeout too
            raise RaftError(
                f"leadership transfer to {to} did not complete within {timeout_s:.2f} s "
                f"(leader_id={self._leader_id})"
            ) from exc

    async def wait_for_leader(self, timeout_s: float = 10.0) -> int:
        """Wait until some leader is known; return its id."""
        async with asyncio.timeout(timeout_s):
            while not self._leader_id:
                await self._wait_leader_change()
        return self._leader_id

    def status(self) -> Status:
        """The core's Status, with `applied` the state machine's (what reads see); before
        start() (or after a failure stopped the core) what the driver last knew."""
        core = self._core
        if core is None:
            return Status(
                id=self.node_id,
                term=self._term,
                role=self._role,
                leader_id=self._leader_id,
                commit=0,
                applied=self._applied,
                voters=tuple(self.conf.voters),
                learners=tuple(self.conf.learners),
            )
        return replace(core.status(), applied=self._applied)

    def diagnostics(self) -> dict[str, Any]:
        """What the driver itself knows, JSON-friendly: persistence timings, queues,
        transport and snapshot counters (for operators and the demo's status command)."""
        out: dict[str, Any] = {
            "id": self.node_id,
            "incarnation": self.incarnation,
            "persisted_index": self._storage.last_index() if self._started else 0,
            "pending_proposals": len(self._pending),
            "last_persist_ms": round(self._last_persist_ms, 3),
            "max_persist_ms": round(self._max_persist_ms, 3),
            "driver": dict(self.stats),
            "failed": repr(self._failure) if self._failure else None,
        }
        if self._transport is not None:
            out["transport"] = {
                str(pid): {
                    "connected": s.connected,
                    "queued": s.queued,
                    "sent": s.sent,
                    "dropped": s.dropped,
                    "reconnects": s.reconnects,
                }
                for pid, s in self._transport.stats().items()
            }
            out["transport_received"] = self._transport.received
        if self._snapshots is not None:
            out["snapshots"] = self._snapshots.status()
        return out

    # ------------------------------------------------------------ internals: inbox

    def _check_running(self) -> None:
        if self._failure is not None:
            raise NodeStopped(f"node failed: {self._failure!r}")
        if not self._started or self._stopping:
            raise NodeStopped("node is not running")

    def _push(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _on_transport_message(self, msg: Message, incarnation: str = "") -> None:
        self._push((_MSG, msg, incarnation))

    async def _ticker(self) -> None:
        tick = (_TICK,)
        while True:
            await asyncio.sleep(self.tick_s)
            self._push(tick)

    async def _wait_leader_change(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leader_waiters.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._leader_waiters.remove(fut)

    # ------------------------------------------------------------ internals: the loop

    async def _run(self) -> None:
        core = self._core
        handler = self._handler
        assert core is not None and handler is not None and self._wake is not None
        wake = self._wake
        transport = self._transport
        assert transport is not None
        try:
            while True:
                if not self._inbox and not handler.wants_ready():
                    wake.clear()
                    await wake.wait()
                self._drain_inbox(core)
                if handler.wants_ready():
                    self._issue_ready(handler)
                transport.flush()  # what this turn sent leaves now, not a loop turn later
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            if isinstance(exc, SafetyViolation):
                self._log.critical("raft.safety_violation", error=str(exc))
            self._log.critical("raft.driver_failed", error=repr(exc), exc_info=True)
            self._fail_all(NodeStopped(f"raft driver failed: {exc!r}"))
            raise

    def _drain_inbox(self, core: RaftCore) -> None:
        inbox = self._inbox
        reads: list[asyncio.Future[int]] = []
        pending = self._pending
        n_props = 0
        while inbox:
            item = inbox.popleft()
            kind = item[0]
            if kind == _MSG:
                msg = item[1]
                if (msg.type in VOTE_TYPES or msg.frm in self._recorded) and self._drop(
                    core, msg, item[2]
                ):
                    continue
                if msg.type is MessageType.VOTE_RESP and not msg.reject:
                    seen = self._votes_granted.get(msg.term, set())
                    self._votes_granted = {msg.term: seen | {msg.frm}}  # this term only
                if msg.type is MessageType.SNAP_RESP or message_is_chunk(msg):
                    msg = self._snapshot_traffic(core, msg)
                    if msg is None:
                        continue
                # Nothing out of step() is handled here: the core drops malformed input
                # itself, so an exception is a failed safety check (SafetyViolation) or a
                # bug, and either stops the node (see _run).
                core.step(msg)
            elif kind == _PROPOSE:
                self._queued_proposals -= 1
                fut = item[2]
                if fut.done():
                    continue
                try:
                    index, term = core.propose(item[1])
                except (RaftError, ValueError, TypeError) as exc:
                    fut.set_exception(exc if not isinstance(exc, NotLeader) else self.not_leader())
                    continue
                stale = pending.get(index)
                if stale is not None and not stale[1].done():  # our log slot was overwritten
                    stale[1].set_exception(
                        ProposalDropped(f"entry {index} of term {stale[0]} was overwritten")
                    )
                pending[index] = (term, fut)
                n_props += 1
            elif kind == _PERSISTED:
                self._on_persisted(item[1])
            elif kind == _APPLIED:
                self._on_applied_batch(item[1], item[2], item[3])
            elif kind == _TICK:
                core.tick()
                if self._snapshots is not None:
                    self._snapshots.tick()
                if core.role is Role.LEADER:
                    self._membership_housekeeping(core)
            elif kind == _SNAP_REPORT:
                core.report_snapshot(item[1], item[2])
            elif kind == _CONF:
                self._propose_conf(core, item[1], item[2])
            elif kind == _READ:
                if not item[1].done():
                    reads.append(item[1])
            elif kind == _TRANSFER:
                self._transfer_target = item[1]
                try:
                    core.transfer_leader(item[1])
                except (RaftError, ValueError) as exc:
                    self._log.warning("raft.transfer_refused", to=item[1], error=str(exc))
            elif kind == _STORAGE_FAILED:
                raise StorageError(f"storage step failed: {item[1]!r}") from item[1]
        if n_props:
            self.stats["proposals"] += n_props
        self._sync_conf(core)
        if reads:
            # All reads that arrived together share one ReadIndex round.
            ctx = next(self._read_ctx).to_bytes(8, "big")
            try:
                core.read_index(ctx)
            except RaftError as exc:
                err = self.not_leader() if isinstance(exc, NotLeader) else exc
                for fut in reads:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                self._reads_by_ctx[ctx] = reads

    # ------------------------------------------------------------ membership

    @property
    def members(self) -> dict[int, Member]:
        """Every member of the configuration in force, voters and learners, by id."""
        conf = self.conf
        known = {m.id: m for m in conf.members}
        return {i: known.get(i, Member(i)) for i in conf.ids()}

    def best_successor(self) -> int | None:
        """Leader only: the voter (not us) with the most of our log, to hand over to."""
        core = self._core
        if core is None or core.role is not Role.LEADER:
            return None
        others = [p for p in core.voters if p != self.node_id and p in core.progress]
        if not others:
            return None
        return max(others, key=lambda p: (core.progress[p].match_index, -p))

    def caught_up_learners(self) -> list[int]:
        """Leader only: learners close enough to the log to become voters safely (a voter
        that is far behind cannot help commit, so promoting it can cost the quorum)."""
        core = self._core
        if core is None or core.role is not Role.LEADER:
            return []
        return core.learners_caught_up(self.promote_lag)

    async def change_membership(
        self, change: Callable[[ConfState], ConfState], timeout_s: float = 10.0
    ) -> ConfState:
        """Propose the configuration `change(current)` and wait until it is applied here.

        `change` runs in the driver task on the configuration in force, so two callers
        cannot both build on the same one; it raises ValueError for a request that makes
        no sense (an unknown member...). ConfChangeRefused when a change is in progress.
        """
        self._check_running()
        if self._role != Role.LEADER:
            raise self.not_leader()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._push((_CONF, change, fut))
        async with asyncio.timeout(timeout_s):
            return await fut

    def _propose_conf(
        self, core: RaftCore, change: Callable[[ConfState], ConfState], fut: asyncio.Future[Any]
    ) -> None:
        if fut.done():
            return
        try:
            conf = change(core.conf_state)
        except Exception as exc:  # the caller's refusal (ValueError, LookupError...)
            fut.set_exception(exc)
            return
        seen = dict(self._transport.peer_incarnations) if self._transport is not None else {}
        seen[self.node_id] = self.incarnation
        unsafe = unsafe_change(conf, seen)
        if unsafe is not None:
            fut.set_exception(ConfChangeRefused(unsafe))
            return
        try:
            index, term = core.propose_conf_change(conf)
        except NotLeader:
            fut.set_exception(self.not_leader())
            return
        except (RaftError, ValueError) as exc:
            fut.set_exception(exc)
            return
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[index] = (term, result)
        result.add_done_callback(lambda r: _chain(r, fut, conf))

    def _sync_conf(self, core: RaftCore | None) -> None:
        """The configuration in force changed: reach its members, tell the node."""
        if core is None:
            return
        if core.log.conf_version == self._conf_version:
            if self._departed and core.lead not in self._departed:
                self._prune_peers(core)
            return
        self._conf_version = core.log.conf_version
        self.conf = core.conf_state
        # Members whose data dir the configuration records: their messages are checked
        # against the incarnation they announced (the hot path skips everyone else).
        self._recorded = frozenset(m.id for m in self.conf.members if m.incarnation)
        transport = self._transport
        members = self.members
        if transport is not None:
            for pid, member in members.items():
                if pid == self.node_id:
                    continue
                addr = self._configured_peers.get(pid) or _parse_addr(member.raft_addr)
                if addr is not None and self.peers.get(pid) != addr:
                    self.peers[pid] = addr
                    transport.update_peer(pid, addr)
            # A node that has not joined yet knows no configuration: it keeps its peers.
            self._departed = {p for p in self.peers if p != self.node_id and p not in members}
            if not members:
                self._departed = set()
            self._prune_peers(core)
        self._log.info(
            "raft.configuration",
            voters=list(self.conf.voters),
            learners=list(self.conf.learners),
        )
        if self._on_conf_change is not None:
            try:
                self._on_conf_change(self.conf)
            except Exception as exc:
                self._log.error("raft.on_conf_change_failed", error=repr(exc))

    def _prune_peers(self, core: RaftCore) -> None:
        """Stop talking to nodes the configuration no longer names, except the leader we
        follow: a leader that removed itself still needs our acknowledgements to commit
        its removal (thesis §4.2.2); we let go of it once someone else leads."""
        transport = self._transport
        if transport is None:
            return
        for pid in sorted(self._departed):
            if pid == core.lead:
                continue
            self._departed.discard(pid)
            if self.peers.pop(pid, None) is not None:
                transport.remove_peer(pid)

    def _drop(self, core: RaftCore, msg: Message, incarnation: str) -> bool:
        """A message that the configuration's incarnations forbid (see
        raft.membership_policy.drop_message); `incarnation` is the sender's, as the
        handshake of the connection it came on named it."""
        why = drop_message(core.conf_state, self.node_id, self.incarnation, msg, incarnation)
        if why is None:
            return False
        self._log.info("raft.message_dropped", peer=msg.frm, type=msg.type.name, why=why)
        return True

    def _membership_housekeeping(self, core: RaftCore) -> None:
        """Leader, every tick: the change raft.membership_policy asks for, if any."""
        seen = dict(self._transport.peer_incarnations) if self._transport is not None else {}
        seen[self.node_id] = self.incarnation
        planned = next_change(core, seen, self.promote_lag)
        if planned is not None:
            why, peer, conf = planned
            self._auto_change(core, conf, why, peer)

    def _auto_change(self, core: RaftCore, conf: ConfState, why: str, peer: int) -> None:
        try:
            index, _term = core.propose_conf_change(conf)
        except RaftError as exc:
            deferred = (why, peer, str(exc))
            if deferred != self._last_deferred:  # retried every tick: said once
                self._last_deferred = deferred
                self._log.warning(
                    "raft.membership_deferred", change=why, peer=peer, reason=str(exc)
                )
            return
        self._last_deferred = None
        self._log.warning("raft.membership_change", change=why, peer=peer, index=index)

    def _snapshot_traffic(self, core: RaftCore, msg: Message) -> Message | None:
        """Chunks and their responses go to the snapshot service, never into the core;
        a snapshot received whole comes back as one SNAP for the core to install."""
        service = self._snapshots
        if service is None:
            return None
        if msg.type is MessageType.SNAP_RESP:
            service.on_resp(msg)
            return None
        return service.on_chunk(msg, core.term)

    def _send_snapshot_message(self, m: Message) -> None:
        transport = self._transport
        if transport is not None and not self._stopping:
            transport.send(m)

    async def snapshot_now(self) -> dict[str, Any]:
        """Write a snapshot of the state machine now and compact the log up to it (less the
        trailing entries): what `POST /v1/admin/snapshot` does."""
        self._check_running()
        if self._snapshots is None or self._worker is None:
            raise RaftError("snapshots are not enabled on this node")
        started = time.perf_counter()
        file = await self._snapshots.write_now()
        self._worker.compact_to(max(0, file.applied_index - self.snapshot_trailing) + 1)
        return {
            "snapshot_index": file.applied_index,
            "bytes": file.size,
            "seconds": round(time.perf_counter() - started, 3),
            "compact_to": max(0, file.applied_index - self.snapshot_trailing),
        }

    def _issue_ready(self, handler: ReadyHandler) -> None:
        """Send what may leave now and hand the Ready to the storage step."""
        self.stats["readies"] += 1
        transport = self._transport
        worker = self._worker
        assert transport is not None and worker is not None
        job, send_now = handler.issue()
        rd = job.rd
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state, rd)
        elif rd.hard_state is not None and rd.hard_state.term != self._term:
            self._term = rd.hard_state.term
        for m in send_now:
            if m.type is MessageType.SNAP and m.chunk is None:
                self._request_snapshot(m)
            else:
                self._send(transport, m)
        if rd.read_states:
            self._on_read_states(rd.read_states)
        transport.flush()  # replicate while this node persists (the call blocks)
        worker.submit(job)

    def _request_snapshot(self, m: Message) -> None:
        """The core wants a follower to get a snapshot: the service streams one."""
        if self._snapshots is None:
            self._log.error(
                "raft.snapshot_unavailable",
                to=m.to,
                detail="a follower needs compacted entries but snapshots are off here",
            )
            self._push((_SNAP_REPORT, m.to, True))
            return
        self._snapshots.request(m, self._term)

    def _on_persisted(self, jobs: list[StorageJob]) -> None:
        """The jobs' hard state and entries are durable: release replies, advance the log."""
        handler = self._handler
        transport = self._transport
        assert handler is not None and transport is not None
        for job in jobs:
            if job.rd.snapshot is not None:
                self._after_snapshot(job.rd.snapshot)
        for m in handler.persisted(jobs):
            self._send(transport, m)

    def _after_snapshot(self, snap: SnapshotMeta) -> None:
        """An installed snapshot moved the state machine to its index: reads waiting for
        that index may go, and proposals of older terms can no longer commit."""
        if snap.index <= self._applied:
            return
        self._applied = snap.index
        if snap.term > self._applied_term:
            self._applied_term = snap.term
            self._drop_stale_proposals(snap.term)
        for index in [i for i in self._pending if i <= snap.index]:
            term, fut = self._pending.pop(index)
            if not fut.done():  # its outcome is inside the snapshot, not known here
                fut.set_exception(
                    ProposalDropped(f"entry {index} of term {term} was covered by a snapshot")
                )
        self._release_reads()
        if self._on_applied is not None:
            try:
                self._on_applied([], [])
            except Exception as exc:
                self._log.error("raft.on_applied_failed", error=repr(exc), exc_info=True)

    def _on_applied_batch(
        self, jobs: list[StorageJob], applied: list[Entry], results: list[Any]
    ) -> None:
        assert self._handler is not None
        if applied:
            self._after_apply(applied, results)
        self._handler.applied(jobs)

    def _send(self, transport: Transport, m: Message) -> None:
        if m.to == self.node_id:
            self._push((_MSG, m, self.incarnation))
        else:
            transport.send(m)

    # ------------------------------------------------------------ storage step

    def _persist(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        started = time.perf_counter()
        self._storage.save(hard_state, entries)
        self._note_persist((time.perf_counter() - started) * 1000.0, len(entries))

    def _note_persist(self, took_ms: float, n_entries: int) -> None:
        self._last_persist_ms = took_ms
        if took_ms > self._max_persist_ms:
            self._max_persist_ms = took_ms
        self.stats["persists"] += 1
        if took_ms > self.slow_fsync_ms:
            self.stats["slow_fsyncs"] += 1
            self._log.warning("raft.slow_fsync", took_ms=round(took_ms, 1), entries=n_entries)

    # ------------------------------------------------------------ after apply

    def _after_apply(self, entries: list[Entry], results: list[Any]) -> None:
        self.stats["applied_batches"] += 1
        last = entries[-1]
        self._applied = last.index
        pending = self._pending
        if pending:
            for e, result in zip(entries, results, strict=True):
                p = pending.pop(e.index, None)
                if p is None:
                    continue
                term, fut = p
                if fut.done():
                    continue
                if term == e.term:
                    fut.set_result(result)
                else:
                    fut.set_exception(
                        ProposalDropped(
                            f"entry {e.index} proposed in term {term} was replaced by term {e.term}"
                        )
                    )
        if last.term > self._applied_term:
            self._applied_term = last.term
            self._drop_stale_proposals(last.term)
        self._release_reads()
        if self._on_applied is not None:
            try:
                self._on_applied(entries, results)
            except Exception as exc:
                self._log.error("raft.on_applied_failed", error=repr(exc), exc_info=True)

    def _release_reads(self) -> None:
        """Answer the reads whose read index is applied now."""
        if not self._reads_waiting_apply:
            return
        still: list[tuple[int, asyncio.Future[int]]] = []
        for index, fut in self._reads_waiting_apply:
            if index <= self._applied:
                if not fut.done():
                    fut.set_result(index)
            else:
                still.append((index, fut))
        self._reads_waiting_apply = still

    def _drop_stale_proposals(self, applied_term: int) -> None:
        """Fail proposals of older terms: a log's terms never decrease, so they cannot commit."""
        self._fail_pending(
            [i for i, (t, _f) in self._pending.items() if t < applied_term],
            lambda i, term: ProposalDropped(
                f"entry {i} of term {term} cannot commit: term {applied_term} is applied"
            ),
        )

    def _fail_pending(self, indexes: Sequence[int], error: Callable[[int, int], RaftError]) -> None:
        """Fail the waiting proposals at `indexes` with error(index, term); forget them."""
        for i in indexes:
            term, fut = self._pending.pop(i)
            if not fut.done():
                fut.set_exception(error(i, term))

    def _on_read_states(self, read_states: Sequence[Any]) -> None:
        for rs in read_states:
            futs = self._reads_by_ctx.pop(rs.context, None)
            if not futs:
                continue
            for fut in futs:
                if fut.done():
                    continue
                if rs.index <= self._applied:
                    fut.set_result(rs.index)
                else:
                    self._reads_waiting_apply.append((rs.index, fut))

    # ------------------------------------------------------------ role changes

    def _on_soft_state(self, ss: SoftState, rd: Ready) -> None:
        old_role, old_term = self._role, self._term
        new_term = rd.hard_state.term if rd.hard_state is not None else self._core_term()
        self._term = new_term
        leader_changed = ss.leader_id != self._leader_id
        self._leader_id = ss.leader_id
        self._role = ss.role
        if ss.role != old_role:
            self._log.info(
                "raft.role_change",
                old=old_role.label,
                new=ss.role.label,
                term=new_term,
                leader_id=ss.leader_id,
            )
            if ss.role == Role.LEADER:
                self._log.info("raft.elected", term=new_term, votes=self._votes_for_log(new_term))
            elif old_role == Role.LEADER:
                if self._transfer_target:
                    reason = "leadership_transferred"
                elif new_term > old_term:
                    reason = "higher_term"
                elif self._core is not None and self.node_id not in self._core.voters:
                    reason = "removed"  # its removal committed: the log decides the rest
                else:
                    reason = "lost_quorum"
                self._log.warning("raft.stepped_down", term=new_term, reason=reason)
                self._on_lost_leadership(fail_proposals=reason == "lost_quorum")
                if self._snapshots is not None:
                    self._snapshots.abort_all()
            if self._on_role_change is not None:
                try:
                    self._on_role_change(ss.role, new_term, ss.leader_id)
                except Exception as exc:
                    self._log.error("raft.on_role_change_failed", error=repr(exc))
        if ss.role != Role.LEADER:
            self._transfer_target = 0
        if leader_changed or ss.role != old_role:
            waiters, self._leader_waiters = self._leader_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _core_term(self) -> int:
        assert self._core is not None
        return self._core.status().term

    def _votes_for_log(self, term: int) -> int:
        """Granted votes seen for `term`, our own included (the core forgets them on winning)."""
        granted = self._votes_granted.get(term, set()) | {self.node_id}
        self._votes_granted = {}
        return len(granted)

    def _on_lost_leadership(self, *, fail_proposals: bool) -> None:
        """Reads cannot be confirmed by a non-leader; fail them.

        Proposals wait for the log to decide when this node still hears the cluster (a
        higher term, a transfer): the outcome arrives with the next append. A leader that
        stepped down for lack of a quorum is cut off and would learn it only after the
        partition heals, so its proposals fail at once with LeadershipLost (outcome
        unknown; a later apply of such an entry finds no waiter).
        """
        err = self.not_leader()
        for futs in self._reads_by_ctx.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(err)
        self._reads_by_ctx.clear()
        if fail_proposals:
            self._fail_pending(
                list(self._pending),
                lambda i, term: LeadershipLost(
                    f"leadership of term {term} was lost (no quorum) before entry {i} "
                    "committed; its outcome is unknown"
                ),
            )

    def _best_transfer_target(self) -> int:
        assert self._core is not None
        st = self._core.status()
        best, best_match = 0, -1
        for pid, p in (st.progress or {}).items():
            if pid != self.node_id and p[0] > best_match:
                best, best_match = pid, p[0]
        return best

    def _fail_all(self, err: RaftError) -> None:
        for _term, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for futs in self._reads_by_ctx.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(err)
        self._reads_by_ctx.clear()
        for _index, fut in self._reads_waiting_apply:
            if not fut.done():
                fut.set_exception(err)
        self._reads_waiting_apply.clear()
        while self._inbox:
            item = self._inbox.popleft()
            if item[0] == _PROPOSE:
                self._queued_proposals -= 1
                if not item[2].done():
                    item[2].set_exception(err)
            elif item[0] == _READ and not item[1].done():
                item[1].set_exception(err)


def _parse_addr(text: str) -> tuple[str, int] | None:
    """HOST:PORT (HOST may be a bracketed IPv6 address) as a (host, port) pair."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _chain(done: asyncio.Future[Any], fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve `fut` with `value` once `done` (a proposal) succeeded, or with its error."""
    if fut.done():
        return
    if done.cancelled():
        fut.cancel()
    elif done.exception() is not None:
        fut.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        fut.set_result(value)


class _StorageWorker:
    """Runs the storage step inline, in the driver task (the module docstring says why).

    The step itself (persist/apply order, what is reported when) is
    `raft.ready_handler.StorageStep`, which the simulation runs too; this class owns the
    real primitives (LMDB saves, the state machine, failpoints, timing) and posts the
    completions to the driver's inbox, in order, for its next turn.
    """

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._failed = False
        sm = node._sm
        shared_txn = node.shared_txn
        self.shared_txn = shared_txn
        can_install = shared_txn and isinstance(sm, SnapshotStateMachine)
        self._applied_through = node._applied  # the state machine's applied index, here
        self._compact_request = 0  # a first index asked for by snapshot_now()
        self.step = StorageStep(
            save=self._save,
            apply=self._apply,
            save_with_apply=self._save_with_apply if shared_txn else None,
            install=self._install if can_install else None,
            on_persisted=lambda segment: self._post((_PERSISTED, segment)),
            on_applied=lambda jobs, applied, results: self._post(
                (_APPLIED, jobs, applied, results)
            ),
        )

    def submit(self, job: StorageJob) -> None:
        if not self._failed:
            self._process(job)

    def _post(self, item: tuple[Any, ...]) -> None:
        self._node._push(item)  # we are the driver task: its next turn picks this up

    def compact_to(self, first_index: int) -> None:
        """Ask for the log to be compacted so that it starts at `first_index` (or later)."""
        self._compact_request = max(self._compact_request, first_index)

    def _process(self, job: StorageJob) -> None:
        """Persist and apply `job`; on failure set `_failed` and tell the driver."""
        try:
            self.step.run(job)
            if job.applying:
                self._applied_through = max(self._applied_through, job.applying[-1].index)
            if job.rd.snapshot is not None:
                self._applied_through = max(self._applied_through, job.rd.snapshot.index)
            self._compact_some()
        except BaseException as exc:
            self._failed = True
            self._node._log.critical("raft.storage_failed", error=repr(exc), exc_info=True)
            self._post((_STORAGE_FAILED, exc))

    def _compact_some(self) -> None:
        """One bounded step of log compaction, between two storage steps.

        Once `snapshot_entries` applied (and durably committed) entries sit in the log, it
        is cut to keep only the last `snapshot_trailing` of them, at most
        `compact_chunk_entries` per write transaction, so no step stalls the Raft loop
        for long. Only applied entries go: the state machine holds what they did, and a
        follower that needs them gets a snapshot.
        """
        node = self._node
        storage = node._storage
        every = node.snapshot_entries
        if not every and not self._compact_request:
            return
        first = storage.first_index()
        durable = min(self._applied_through, storage.initial_state()[0].commit)
        target = first
        if every and durable - first + 1 >= every + node.snapshot_trailing:
            target = durable - node.snapshot_trailing + 1
        if self._compact_request:
            target = max(target, min(self._compact_request, durable + 1))
            if self._compact_request <= first:
                self._compact_request = 0
        if target <= first:
            return
        target = min(target, first + node.compact_chunk_entries)
        storage.compact(target)

    # ---- the real primitives

    def _install(self, snap: SnapshotMeta) -> None:
        """Install a received snapshot: the state machine's tables and the log replaced in
        ONE write transaction (a crash leaves the old state or the new, never a mix)."""
        node = self._node
        service = node._snapshots
        assert service is not None
        sm = node._sm
        assert isinstance(sm, SnapshotStateMachine)
        path = service.path_for(snap)
        storage = cast(TransactionalStorage, node._storage)
        prepared = storage.prepare_apply_snapshot(snap)
        started = time.perf_counter()

        def write(txn: Any) -> int:
            index = sm.restore_in_txn(txn, path)
            if index != snap.index:
                raise StorageError(f"snapshot file holds index {index}, not {snap.index}")
            prepared.write(txn)
            return index

        failpoint("raft.before_install")
        storage.run_write(write)
        prepared.publish()
        sm.restored()
        took = time.perf_counter() - started
        service.installed(snap, took)
        node._log.info("raft.snapshot_installed", index=snap.index, seconds=round(took, 3))
        failpoint("raft.after_install")

    def _save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        failpoint("raft.before_persist")
        self._node._persist(hard_state, entries)
        failpoint("raft.after_persist_before_ack")

    def _apply(self, entries: list[Entry]) -> list[Any]:
        results = self._node._sm.apply(entries)
        failpoint("raft.after_apply_before_answer")
        return results

    def _save_with_apply(
        self, hard_state: HardState | None, entries: list[Entry], applying: list[Entry]
    ) -> list[Any]:
        """ONE write transaction: the log append, plus the apply of `applying`.

        Committed entries handed out by the core are durable from earlier saves, so
        applying them in the same transaction as the next append is safe, and LMDB's
        commit (its fsyncs) is paid once per batch instead of twice.
        """
        node = self._node
        sm = node._sm
        # checked once, in RaftNode.__init__ (shared_txn): no per-batch isinstance
        storage = cast(TransactionalStorage, node._storage)
        sm = cast(SharedTxnStateMachine, sm)
        prepared = storage.prepare_save(hard_state, entries)
        if prepared is None and not applying:
            return []
        started = time.perf_counter()

        def write(txn: Any) -> Any:
            out = sm.apply_in_txn(txn, applying) if applying else []
            if prepared is not None:
                prepared.write(txn)
            return out

        failpoint("raft.before_persist")
        results = storage.run_write(write)
        if prepared is not None:
            prepared.publish()
        if applying:
            sm.committed(applying)
        node._note_persist((time.perf_counter() - started) * 1000.0, len(entries))
        failpoint("raft.after_persist_before_ack")
        if applying:
            failpoint("raft.after_apply_before_answer")
        return results
