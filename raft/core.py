"""The pure, sans-I/O Raft core (the etcd-io/raft RawNode shape).

`RaftCore` holds term, vote, role, the log view, per-peer progress and the commit and
applied pointers. Its methods are synchronous and only fill an outbox: `tick()` and
`step(message)` are the inputs, `propose()` / `read_index()` / `transfer_leader()` the
requests, and `ready()` drains everything the driver must persist, send and apply into
one immutable `Ready`; `advance(ready)` tells the core it was done. No sockets, clocks,
threads, disk or global randomness: the RNG is injected, so a seeded simulation can
replay any run exactly.

Safety-relevant choices (the reasons are the Raft paper's section numbers):
- a node's own vote/term is persisted before any vote request or response leaves it
  (those go in `Ready.messages_after_persist`);
- the leader counts itself toward a commit quorum only after its own entries were
  persisted (its match index moves in `advance()`);
- only entries of the current term are committed by counting replicas (§5.4.2), which
  is why a new leader appends a NOOP;
- entries are handed out for applying only once durable on this node.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import structlog

from raft.errors import (
    Compacted,
    ConfChangeRefused,
    EntryTooLarge,
    NotLeader,
    ProposalDropped,
    SafetyViolation,
)
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
    encode_conf,
)
from raft.progress import Progress, ProgressState
from raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from raft.raft_log import LogConflict, RaftLog
from raft.read_only import ReadOnly
from raft.storage import LogStorage

log = structlog.get_logger("raft.core")

CAMPAIGN_TRANSFER = b"transfer"
NONE = 0
MiB = 1 << 20

# Messages a leader originates that assert nothing about this node's durable state.
_SEND_AT_ONCE = frozenset(
    {MessageType.APP, MessageType.HEARTBEAT, MessageType.TIMEOUT_NOW, MessageType.SNAP}
)
_REQUESTS = frozenset(
    {
        MessageType.VOTE,
        MessageType.PRE_VOTE,
        MessageType.APP,
        MessageType.HEARTBEAT,
        MessageType.TIMEOUT_NOW,
        MessageType.SNAP,
    }
)
_FROM_LEADER = frozenset({MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP})
_FROM_OUR_LEADER = _FROM_LEADER | {MessageType.TIMEOUT_NOW}
_SUPPORTED = _REQUESTS | {
    MessageType.VOTE_RESP,
    MessageType.PRE_VOTE_RESP,
    MessageType.APP_RESP,
    MessageType.HEARTBEAT_RESP,
}


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """How much a leader sends: messages and bytes in flight to one follower, the size of one
    append message and of one entry. The part of Config a node sets (RaftNode(size_limits=))."""

    max_inflight_msgs: int = 256
    max_inflight_bytes: int = 64 * MiB
    max_msg_bytes: int = 1 * MiB
    # The largest entry a proposal may carry. Every APP must fit the transport's frame
    # limit (`max_append_frame_bytes`), so an accepted entry can always be replicated.
    max_entry_bytes: int = 8 * MiB


_DEFAULT_LIMITS = SizeLimits()


@dataclass(frozen=True, slots=True)
class Config:
    """Static configuration of one core. Ticks are abstract: the driver decides their length.

    `applied` is the state machine's applied index at start (entries after it are handed
    out again for applying after a restart).
    """

    id: int
    peers: tuple[int, ...]
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = _DEFAULT_LIMITS.max_inflight_msgs  # SizeLimits says what they are
    max_inflight_bytes: int = _DEFAULT_LIMITS.max_inflight_bytes
    max_msg_bytes: int = _DEFAULT_LIMITS.max_msg_bytes
    max_entry_bytes: int = _DEFAULT_LIMITS.max_entry_bytes
    applied: int = 0
    # How to reach the bootstrap `peers` (only used when the log holds no configuration).
    members: tuple[Member, ...] = ()

    def validate(self) -> None:
        if type(self.id) is not int or self.id <= 0:
            raise ValueError(f"node id must be a positive int: {self.id!r}")
        if any(type(p) is not int or p <= 0 for p in self.peers):  # () for a node that joins
            raise ValueError(f"peer ids must be positive ints: {self.peers!r}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"peer ids must be unique: {self.peers!r}")
        if self.heartbeat_ticks < 1:
            raise ValueError(f"heartbeat_ticks must be >= 1: {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError(
                f"election_ticks ({self.election_ticks}) must exceed "
                f"heartbeat_ticks ({self.heartbeat_ticks})"
            )
        for name in ("max_inflight_msgs", "max_inflight_bytes", "max_msg_bytes", "max_entry_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1: {getattr(self, name)}")
        if self.applied < 0:
            raise ValueError(f"applied must be >= 0: {self.applied}")


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the core for operators and tests; progress only on the leader."""

    id: int
    term: int
    role: Role
    leader_id: int
    commit: int
    applied: int
    progress: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    vote: int = 0
    last_index: int = 0
    lead_transferee: int = 0
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    first_index: int = 1  # the oldest entry still in the log (compaction moves it)


class RaftCore:
    def __init__(self, cfg: Config, storage: LogStorage, rng: random.Random) -> None:
        cfg.validate()
        self.cfg = cfg
        self.id = cfg.id
        self.rng = rng
        hard_state, _conf = storage.initial_state()
        self.log = RaftLog(storage, committed=hard_state.commit, applied=cfg.applied)
        # A log that was empty when this process started cannot have lost anything (see
        # _handle_heartbeat): the out-of-range check is for logs that shrank.
        self._started_empty = self.log.last_index() == 0
        if not self.log.base_conf.ids() and cfg.peers:
            # A new cluster: its first configuration is the bootstrap member list (the
            # one in force before any configuration entry, including after one of those
            # is overwritten).
            self.log.base_conf = ConfState(tuple(sorted(cfg.peers)), (), cfg.members)
        self.voters: tuple[int, ...] = ()
        self.learners: tuple[int, ...] = ()
        self.conf_state = ConfState(())
        self._member_ids: frozenset[int] = frozenset()
        self._incarnations: dict[int, str] = {}
        self._conf_version = -1
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.lead_transferee = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = cfg.election_ticks
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.read_only = ReadOnly()
        self.pending_reads: list[bytes] = []  # waiting for a current-term commit
        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._bcast_pending = False  # proposals appended since the last flush
        self._bcast_commit = False  # commit advanced: tell followers even with no entries
        self._prev_hard_state = hard_state
        self._prev_soft_state = SoftState(NONE, Role.FOLLOWER)
        self._become_follower(self.term, NONE)
        self._sync_conf()
        if hard_state.term or self.log.last_index():
            log.info(
                "raft.restarted",
                node_id=self.id,
                term=self.term,
                commit=self.log.committed,
                last_index=self.log.last_index(),
            )

    # ================================================================ public API

    def tick(self) -> None:
        """Advance logical time by one tick (elections, heartbeats, check-quorum)."""
        if self.role is Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout fired)."""
        self._hup(transfer=False)

    def step(self, m: Message) -> None:
        """Feed one message from a peer. Messages not for us or from strangers are dropped."""
        if (
            m.to != self.id
            or m.frm == self.id
            or (
                m.frm not in self._member_ids
                # A leader's messages count whoever sends them: one leader per term, and
                # the log checks do the rest. Our configuration may be an uncommitted one
                # that a leader outside it will overwrite, we may be joining (no members
                # yet), or the leader removed itself and finishes its term. Vote requests
                # too: the candidate counts votes by its configuration, which may be newer
                # than ours (a removed node is kept out by pre-vote and the leader lease).
                and m.type not in _FROM_LEADER
                and m.type not in (MessageType.VOTE, MessageType.PRE_VOTE)
                and not (m.frm == self.lead and m.term == self.term and m.type in _FROM_OUR_LEADER)
            )
        ):
            log.debug("raft.drop_foreign", node_id=self.id, to=m.to, frm=m.frm)
            return
        if m.type not in _SUPPORTED or not self._well_formed(m):
            log.warning("raft.drop_malformed", node_id=self.id, frm=m.frm, type=m.type)
            return
        if m.term > self.term:
            if (
                m.type in (MessageType.VOTE, MessageType.PRE_VOTE)
                and m.context != CAMPAIGN_TRANSFER
                and self._in_lease(m.type)
            ):
                # We heard from a live leader recently: ignore the disruption (§9.6).
                return
            if m.type is MessageType.PRE_VOTE:
                pass  # never change term for a pre-vote
            elif m.type is MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # term is bumped when the pre-vote is won
            elif m.type in _FROM_LEADER:
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in _FROM_LEADER:
                # A stale leader: tell it our term so it steps down (it may be cut off
                # from everyone else and never see a higher-term vote request).
                self._send(Message(MessageType.APP_RESP, to=m.frm, frm=self.id))
            elif m.type is MessageType.PRE_VOTE:
                self._send(Message(MessageType.PRE_VOTE_RESP, to=m.frm, frm=self.id, reject=True))
            return

        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)
        self._sync_conf()

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append `data` as a new entry; returns its (index, term). Leader only."""
        if not isinstance(data, bytes):
            raise TypeError(f"proposal data must be bytes, got {type(data).__name__}")
        if len(data) > self.cfg.max_entry_bytes:
            raise EntryTooLarge(len(data), self.cfg.max_entry_bytes)
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead or None)
        if self.lead_transferee != NONE:
            raise ProposalDropped(
                f"leadership transfer to {self.lead_transferee} in progress (term {self.term})"
            )
        index = self.log.last_index() + 1
        self._append_entries([Entry(index, self.term, EntryKind.NORMAL, data)])
        self._bcast_pending = True
        return index, self.term

    def propose_conf_change(self, conf: ConfState) -> tuple[int, int]:
        """Append a new configuration (single-server change, Raft thesis §4); its (index,
        term). It is in force from the moment it is in the log, here and on every follower.

        Refused (ConfChangeRefused) while an earlier change is uncommitted, before this
        leader has committed an entry of its own term (the thesis's fix for single-server
        changes across leader changes), and when the voters change by more than one.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead or None)
        if self.lead_transferee != NONE:
            raise ProposalDropped(f"leadership transfer to {self.lead_transferee} in progress")
        if not self._committed_entry_in_current_term():
            raise ConfChangeRefused(
                "this leader has not committed an entry of its term yet; retry shortly"
            )
        pending = self.log.last_conf_index()
        if pending > self.log.committed:
            raise ConfChangeRefused(
                f"the membership change at index {pending} is not committed yet; one at a time"
            )
        old = self.log.conf()
        if not conf.voters:
            raise ConfChangeRefused("a configuration needs at least one voter")
        if set(conf.voters) & set(conf.learners):
            raise ConfChangeRefused("a node cannot be both voter and learner")
        if len(set(old.voters) ^ set(conf.voters)) > 1:
            raise ConfChangeRefused(
                f"voters {sorted(old.voters)} -> {sorted(conf.voters)} changes more than one: "
                "change one voter at a time"
            )
        recorded_new = _recorded_voters(conf)
        if (
            len(_recorded_voters(old)) > len(old.voters) // 2
            and len(recorded_new) <= len(conf.voters) // 2
        ):
            # Once a majority of voters have a recorded data dir, only their votes elect
            # (raft.membership_policy): a change that drops below it could leave a voter
            # that no leader ever heard from deciding elections, or nobody able to win.
            unknown = sorted(set(conf.voters) - recorded_new)
            raise ConfChangeRefused(
                f"voters {sorted(conf.voters)} would leave too few whose data dir is "
                f"recorded (never heard from: {unknown}); retry once they have been"
            )
        index = self.log.last_index() + 1
        self._append_entries([Entry(index, self.term, EntryKind.CONF_CHANGE, encode_conf(conf))])
        self._bcast_pending = True
        self._sync_conf()
        log.info(
            "raft.conf_change_proposed",
            node_id=self.id,
            index=index,
            voters=conf.voters,
            learners=conf.learners,
        )
        return index, self.term

    def learners_caught_up(self, max_lag: int) -> list[int]:
        """Leader only: learners within `max_lag` entries of our log, heard from lately,
        being replicated to steadily, and holding the configuration in force (so a
        learner that has acknowledged nothing yet is never caught up, however short the
        log)."""
        if self.role is not Role.LEADER:
            return []
        last = self.log.last_index()
        floor = max(last - max_lag, self.log.last_conf_index(), 1)
        return [
            p
            for p in self.learners
            if (pr := self.progress.get(p)) is not None
            and pr.recent_active
            and pr.state is ProgressState.REPLICATE
            and pr.match_index >= floor
        ]

    def read_index(self, ctx: bytes) -> None:
        """Request a linearizable read point; answered by a ReadState(index, ctx) in a Ready."""
        if not isinstance(ctx, bytes) or not ctx:
            raise ValueError("read_index context must be non-empty bytes")
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead or None)
        if len(self.voters) == 1:
            # Nobody else can have committed anything: our commit index covers every
            # acknowledged write (it was persisted before any of them was applied).
            self._read_states.append(ReadState(self.log.committed, ctx))
            return
        if not self._committed_entry_in_current_term():
            if ctx not in self.pending_reads:
                self.pending_reads.append(ctx)
            return
        self._serve_read_index(ctx)

    def transfer_leader(self, to: int) -> None:
        """Hand leadership to voter `to`: catch it up, then send TIMEOUT_NOW."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.lead or None)
        if to not in self.voters:
            raise ValueError(f"transfer target {to} is not a voter of {self.voters}")
        if to == self.id:
            return
        if self.lead_transferee == to:
            return
        if self.lead_transferee != NONE:
            log.info("raft.transfer_aborted", node_id=self.id, to=self.lead_transferee)
        self.election_elapsed = 0  # the transfer must finish within one election timeout
        self.lead_transferee = to
        log.info("raft.transfer_started", node_id=self.id, to=to, term=self.term)
        pr = self.progress[to]
        if pr.match_index == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to, send_if_empty=True)

    def report_snapshot(self, to: int, failed: bool) -> None:
        """The driver's transfer of a snapshot to `to` ended (etcd's ReportSnapshot).

        Success needs no report: the peer's append response moves its progress on. A
        failed transfer must be reported, or the peer would wait in SNAPSHOT state
        forever: it goes back to probing, after one heartbeat, and gets a new snapshot.
        """
        pr = self.progress.get(to) if self.role is Role.LEADER else None
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if failed:
            pr.pending_snapshot = 0
        pr.become_probe()
        pr.probe_sent = failed  # after a failure, wait for a heartbeat response

    def has_ready(self) -> bool:
        self._flush_appends()  # turns pending proposals/commit news into messages
        if self._soft_state() != self._prev_soft_state:
            return True
        if self._hard_state() != self._prev_hard_state:
            return True
        return bool(
            self._msgs
            or self._msgs_after_persist
            or self._read_states
            or self.log.has_snapshot_to_persist()
            or self.log.has_entries_to_persist()
            or self.log.has_committed_to_apply()
        )

    def ready(self) -> Ready:
        """Drain the outbox. Follow the order documented on `Ready`, then call advance()."""
        self._flush_appends()
        soft = self._soft_state()
        hard = self._hard_state()
        rd = Ready(
            soft_state=soft if soft != self._prev_soft_state else None,
            hard_state=hard if hard != self._prev_hard_state else None,
            snapshot=self.log.take_snapshot_to_persist(),
            entries=self.log.take_entries_to_persist(),
            overwrites=self.log.overwrites,
            messages=tuple(self._msgs),
            messages_after_persist=tuple(self._msgs_after_persist),
            committed_entries=self.log.take_committed_to_apply(),
            read_states=tuple(self._read_states),
        )
        self._prev_soft_state = soft
        self._prev_hard_state = hard
        self._msgs = []
        self._msgs_after_persist = []
        self._read_states = []
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied `rd`."""
        if rd.snapshot is not None:
            self.log.snapshot_stable(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term, rd.overwrites)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        if self.role is Role.LEADER:
            # Our own vote in the commit count comes only after our own fsync.
            own = self.progress[self.id]
            if own.maybe_update(self.log.persisted_last_index()) and self._maybe_commit():
                self._on_commit_advanced()

    def status(self) -> Status:
        progress: dict[int, tuple[int, int, str]] = {}
        if self.role is Role.LEADER:
            progress = {
                p: (pr.match_index, pr.next_index, pr.state.value)
                for p, pr in sorted(self.progress.items())
            }
        return Status(
            id=self.id,
            term=self.term,
            role=self.role,
            leader_id=self.lead,
            commit=self.log.committed,
            applied=self.log.applied,
            progress=progress,
            vote=self.vote,
            last_index=self.log.last_index(),
            lead_transferee=self.lead_transferee,
            voters=self.voters,
            learners=self.learners,
            first_index=self.log.first_index(),
        )

    # ================================================================ role changes

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomize_election_timeout()
        self.lead_transferee = NONE
        self.votes = {}
        self.progress = {}
        self.read_only.reset()
        self.pending_reads = []
        self._bcast_pending = False
        self._bcast_commit = False

    def _randomize_election_timeout(self) -> None:
        # In [election_ticks, 2 * election_ticks): spreads candidates apart (§5.2).
        self.randomized_election_timeout = self.cfg.election_ticks + self.rng.randrange(
            self.cfg.election_ticks
        )

    def _become_follower(self, term: int, lead: int) -> None:
        was_leader = self.role is Role.LEADER
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        if was_leader:
            log.debug("raft.core.became_follower", node_id=self.id, term=term, leader_id=lead)

    def _become_pre_candidate(self) -> None:
        # Pre-vote does not touch term or vote: a partitioned node cannot inflate terms.
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self.election_elapsed = 0
        self._randomize_election_timeout()

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        next_index = self.log.last_index() + 1
        for peer in {*self._member_ids, self.id}:
            self.progress[peer] = Progress(
                next_index, self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes
            )
        own = self.progress[self.id]
        own.match_index = self.log.persisted_last_index()
        own.become_replicate()
        own.recent_active = True
        log.debug("raft.core.became_leader", node_id=self.id, term=self.term)
        # A NOOP of our own term lets us commit (and so serve reads) promptly (§5.4.2, §8).
        self._append_entries([Entry(next_index, self.term, EntryKind.NOOP)])

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre_vote=True, transfer=False)
        else:
            self._campaign(pre_vote=False, transfer=transfer)

    def _campaign(self, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_type, term = MessageType.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            vote_type, term = MessageType.VOTE, self.term
        if self._poll(self.id, True) is VoteResult.WON:  # single-voter cluster
            if pre_vote:
                self._campaign(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        for peer in self.voters:
            if peer == self.id:
                continue
            self._send(
                Message(
                    vote_type,
                    to=peer,
                    frm=self.id,
                    term=term,
                    log_term=self.log.last_term(),
                    index=self.log.last_index(),
                    context=context,
                )
            )

    def _poll(self, peer: int, granted: bool) -> VoteResult:
        self.votes.setdefault(peer, granted)
        return vote_result(self.voters, self.votes)

    # ================================================================ ticks

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                log.info("raft.check_quorum_failed", node_id=self.id, term=self.term)
                self._become_follower(self.term, NONE)
                return
            if self.lead_transferee != NONE:
                log.info("raft.transfer_aborted", node_id=self.id, to=self.lead_transferee)
                self.lead_transferee = NONE
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self.read_only.last_pending_context())

    def _quorum_active(self) -> bool:
        active = [p for p, pr in self.progress.items() if p == self.id or pr.recent_active]
        for p, pr in self.progress.items():
            if p != self.id:
                pr.recent_active = False
        return has_quorum(self.voters, active)

    # ================================================================ message handling

    def _well_formed(self, m: Message) -> bool:
        if m.type in _REQUESTS and m.term == 0:
            return False
        if m.type in (
            MessageType.APP,
            MessageType.VOTE,
            MessageType.PRE_VOTE,
            MessageType.HEARTBEAT,
        ) and (m.log_term > m.term):
            return False  # no log can hold an entry from a term its owner has not reached
        if m.type is MessageType.SNAP:
            snap = m.snapshot
            if snap is None or m.chunk is not None or snap.term > m.term or not snap.index:
                return False  # the core takes whole snapshots only; chunks are the driver's
        if m.entries:
            if m.type is not MessageType.APP or m.entries[0].index != m.index + 1:
                return False
            prev_term = m.log_term
            for i, e in enumerate(m.entries):
                if e.index != m.index + 1 + i or e.term < prev_term or e.term > m.term:
                    return False
                prev_term = e.term
        return True

    def _in_lease(self, vote_type: MessageType) -> bool:
        """True if we heard from a leader within the (minimum) election timeout."""
        guarded = self.cfg.check_quorum or (self.cfg.pre_vote and vote_type is MessageType.PRE_VOTE)
        return guarded and self.lead != NONE and self.election_elapsed < self.cfg.election_ticks

    def _handle_vote_request(self, m: Message) -> None:
        resp_type = (
            MessageType.VOTE_RESP if m.type is MessageType.VOTE else MessageType.PRE_VOTE_RESP
        )
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type is MessageType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the future term the candidate would use.
            self._send(Message(resp_type, to=m.frm, frm=self.id, term=m.term))
            if m.type is MessageType.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(resp_type, to=m.frm, frm=self.id, term=self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        if m.type is MessageType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif m.type is MessageType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif m.type is MessageType.TIMEOUT_NOW:
            log.info("raft.timeout_now", node_id=self.id, frm=m.frm, term=self.term)
            self._hup(transfer=True)

    def _step_candidate(self, m: Message) -> None:
        own_resp = (
            MessageType.PRE_VOTE_RESP if self.role is Role.PRE_CANDIDATE else MessageType.VOTE_RESP
        )
        if m.type is MessageType.APP:
            self._become_follower(m.term, m.frm)
            self._handle_append(m)
        elif m.type is MessageType.HEARTBEAT:
            self._become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif m.type is MessageType.SNAP:
            self._become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif m.type is own_resp:
            result = self._poll(m.frm, not m.reject)
            if result is VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._campaign(pre_vote=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append(send_if_empty=True)
            elif result is VoteResult.LOST:
                self._become_follower(self.term, NONE)

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type is MessageType.APP_RESP:
            pr.recent_active = True
            if m.index > self.log.last_index():
                # No peer of ours can have matched beyond our log in our own term.
                log.warning("raft.drop_bad_app_resp", node_id=self.id, frm=m.frm, index=m.index)
                return
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_accept(m, pr)
        elif m.type is MessageType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state is ProgressState.REPLICATE and pr.inflights.full():
                # Recover if the messages filling the window were all lost.
                pr.inflights.free_first_one()
            if pr.match_index < self.log.last_index():
                self._send_append(m.frm, send_if_empty=True)
            if m.context:
                self._handle_read_ack(m)

    def _handle_append_reject(self, m: Message, pr: Progress) -> None:
        next_probe = m.reject_hint
        if m.hint_term > 0:
            # Skip every entry of ours whose term is above the follower's conflict term.
            next_probe, _ = self.log.find_conflict_by_term(m.reject_hint, m.hint_term)
        if pr.maybe_decrease_to(m.index, next_probe):
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.frm, send_if_empty=True)

    def _handle_append_accept(self, m: Message, pr: Progress) -> None:
        # An accept at exactly our match, while probing, still proves where the logs match
        # (e.g. a probe answered after a heartbeat response reset it): replicate again now
        # instead of a heartbeat later.
        resumed = pr.state is ProgressState.PROBE and m.index == pr.match_index
        if not pr.maybe_update(m.index) and not resumed:
            return
        if pr.state is ProgressState.SNAPSHOT:
            landed = pr.match_index >= pr.pending_snapshot
            if pr.match_index + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()  # our log continues where the peer is now
            elif landed:
                pr.become_probe()  # we compacted past it meanwhile: the next one goes out
                self._send_append(m.frm, send_if_empty=True)
                return
            else:
                return  # still behind our log: the snapshot in flight has to land first
        elif pr.state is ProgressState.PROBE:
            pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()  # followers learn it in the next flush
            if self.role is not Role.LEADER:
                return  # the commit removed us from the voters: we stepped down
        # The window may have opened: pipeline as much as flow control allows.
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if pr.sent_commit < self.log.committed:
            # Nothing new to send but the peer lags our commit index: tell it now.
            self._send_append(m.frm, send_if_empty=True)
        if m.frm == self.lead_transferee and pr.match_index == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            # A late or duplicate APP: what it carries up to our commit index must be what
            # we committed (log matching); anything else means a log is broken.
            self._check_committed_match(m)
            self._send(
                Message(
                    MessageType.APP_RESP,
                    to=m.frm,
                    frm=self.id,
                    term=self.term,
                    index=self.log.committed,
                )
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(
                Message(MessageType.APP_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new)
            )
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                MessageType.APP_RESP,
                to=m.frm,
                frm=self.id,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        assert snap is not None  # _well_formed
        if self._restore(snap):
            log.info(
                "raft.snapshot_restored",
                node_id=self.id,
                index=snap.index,
                term=snap.term,
                frm=m.frm,
            )
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(MessageType.APP_RESP, to=m.frm, frm=self.id, index=index))

    def _restore(self, snap: SnapshotMeta) -> bool:
        """Take `snap` as this log's new start; False when it brings nothing new."""
        if snap.index <= self.log.committed:
            return False
        if self.log.match_term(snap.index, snap.term):
            # We hold that entry already: only the commit index moves (etcd does the same).
            self.log.commit_to(snap.index)
            return False
        self.log.restore(snap)
        return True

    def _check_committed_match(self, m: Message) -> None:
        committed = self.log.committed
        for e in m.entries:
            if e.index > committed:
                break
            ours = self.log.term_or_zero(e.index)
            if ours and ours != e.term:
                raise LogConflict(
                    f"node {self.id}: leader {m.frm} (term {m.term}) sent entry {e.index} of "
                    f"term {e.term}, but this node committed term {ours} there"
                )

    def _handle_heartbeat(self, m: Message) -> None:
        """Commit what the leader says is committed, after checking we hold that entry.

        The leader heartbeats min(match, commit) for us, so an honest follower, however far
        behind, always holds the entry; one that does not (or holds another term there)
        lost or rolled back its log: etcd stops the node, and so do we.
        """
        last = self.log.last_index()
        if m.commit > self.log.committed and m.commit > last and self._started_empty:
            # This process started on an empty log (a fresh data dir, maybe under the id
            # of a node that lost its disk): a leader that has not yet learned of the new
            # incarnation, or a heartbeat it sent before it did, still counts on the old
            # log. Nothing here contradicts it; the entries will come.
            pass
        elif m.commit > self.log.committed:
            if m.commit > last:
                raise SafetyViolation(
                    f"node {self.id}: tocommit({m.commit}) is out of range "
                    f"[last_index({last})] (heartbeat from {m.frm}, term {m.term}): was the "
                    "raft log corrupted, truncated, or lost?"
                )
            ours = self.log.term_or_zero(m.commit)
            if m.log_term and ours != m.log_term:
                raise SafetyViolation(
                    f"node {self.id}: committed entry {m.commit} differs: leader {m.frm} has "
                    f"term {m.log_term} there, this log term {ours}: was the data dir "
                    "rolled back to an old copy?"
                )
            self.log.commit_to(m.commit)
        self._send(Message(MessageType.HEARTBEAT_RESP, to=m.frm, frm=self.id, context=m.context))

    # ================================================================ leader sending

    def _append_entries(self, entries: list[Entry]) -> None:
        self.log.append(entries)

    def _flush_appends(self) -> None:
        if self.role is Role.LEADER and (self._bcast_pending or self._bcast_commit):
            self._bcast_append(send_if_empty=self._bcast_commit)
        self._bcast_pending = False
        self._bcast_commit = False

    def _bcast_append(self, send_if_empty: bool) -> None:
        committed = self.log.committed
        for peer in self._member_ids:
            if peer != self.id:
                lagging = self.progress[peer].sent_commit < committed
                self._send_append(peer, send_if_empty and lagging)

    def _send_append(self, to: int, send_if_empty: bool) -> bool:
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next_index - 1
        try:
            prev_term = self.log.term(prev_index)
            entries = self.log.entries(pr.next_index, self.cfg.max_msg_bytes)
        except Compacted:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MessageType.APP,
                to=to,
                frm=self.id,
                term=self.term,
                log_term=prev_term,
                index=prev_index,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        pr.sent_commit = max(pr.sent_commit, self.log.committed)
        last = entries[-1].index if entries else prev_index
        pr.sent_entries(len(entries), sum(e.size() for e in entries), last)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        """The peer needs entries we compacted: ask the driver to stream it a snapshot of
        our state machine, at least at the index applied here now (which is committed and
        at or above our compaction point, so our log continues from it)."""
        if not pr.recent_active:
            return False  # a peer we have not heard from lately would not take it
        # Our applied index as the core knows it may lag the state machine's, which the
        # storage step may have compacted past already: the compaction point will do.
        index = max(self.log.applied, self.log.first_index() - 1)
        snap = SnapshotMeta(index, self.log.term(index), self.log.conf_at(index))
        pr.become_snapshot(index)
        log.info("raft.snapshot_needed", node_id=self.id, to=to, index=index)
        self._send(
            Message(MessageType.SNAP, to=to, frm=self.id, snapshot=snap, commit=self.log.committed)
        )
        return True

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for peer in self._member_ids:
            if peer == self.id:
                continue
            # Never a commit beyond what the peer is known to hold (etcd's rule): a commit
            # it cannot find then proves a lost log. The term lets it check the entry.
            commit = min(self.progress[peer].match_index, self.log.committed)
            self._send(
                Message(
                    MessageType.HEARTBEAT,
                    to=peer,
                    frm=self.id,
                    term=self.term,
                    commit=commit,
                    log_term=self.log.term_or_zero(commit),
                    context=ctx,
                )
            )

    def _send_timeout_now(self, to: int) -> None:
        self._send(Message(MessageType.TIMEOUT_NOW, to=to, frm=self.id, term=self.term))

    def _send(self, m: Message) -> None:
        if m.to == self.id:
            raise AssertionError(f"node {self.id} tried to message itself: {m}")
        if m.term == 0:
            # Messages built without a term carry ours (pre-vote ones set theirs explicitly).
            m = replace(m, term=self.term)
        if m.type in _SEND_AT_ONCE:
            self._msgs.append(m)
        else:
            self._msgs_after_persist.append(m)

    # ================================================================ commit and reads

    def _maybe_commit(self) -> bool:
        match = {p: pr.match_index for p, pr in self.progress.items()}
        return self.log.maybe_commit(committed_index(self.voters, match), self.term)

    def _on_commit_advanced(self) -> None:
        self._bcast_commit = True
        if (
            self.role is Role.LEADER
            and self.id not in self.voters
            and self.log.committed >= self.log.last_conf_index()
        ):
            self._step_down_removed()
            return
        if self.pending_reads and self._committed_entry_in_current_term():
            pending, self.pending_reads = self.pending_reads, []
            for ctx in pending:
                self._serve_read_index(ctx)

    def _step_down_removed(self) -> None:
        """The configuration that removed this leader is committed: hand over and step down
        (thesis §4.2.2). The most caught-up voter is told to campaign at once."""
        best, best_match = NONE, -1
        for p in self.voters:
            pr = self.progress.get(p)
            if pr is not None and pr.match_index > best_match:
                best, best_match = p, pr.match_index
        log.info("raft.removed_leader_steps_down", node_id=self.id, term=self.term, to=best)
        # Our commit index first, so the successor knows the configuration is committed.
        self._bcast_append(send_if_empty=True)
        if best != NONE and best_match >= self.log.last_conf_index():
            self._send_timeout_now(best)
        self._become_follower(self.term, NONE)

    def _sync_conf(self) -> None:
        """Take the configuration now in the log into force (append time, thesis §4.1)."""
        if self.log.conf_version == self._conf_version:
            return
        self._conf_version = self.log.conf_version
        conf = self.log.conf()
        self.conf_state = conf
        self.voters = tuple(sorted(conf.voters))
        self.learners = tuple(sorted(conf.learners))
        self._member_ids = frozenset(conf.ids())
        incarnations = {m.id: m.incarnation for m in conf.members}
        previous, self._incarnations = self._incarnations, incarnations
        if self.role is Role.LEADER:
            last = self.log.last_index()
            for peer, incarnation in incarnations.items():
                if previous.get(peer) and previous[peer] != incarnation and peer != self.id:
                    # Another data dir under that id: what we knew of its log is void.
                    self.progress.pop(peer, None)
            for peer in self._member_ids:
                if peer not in self.progress:
                    pr = Progress(last + 1, self.cfg.max_inflight_msgs, self.cfg.max_inflight_bytes)
                    pr.recent_active = True  # give a new member one election timeout
                    self.progress[peer] = pr
            for peer in list(self.progress):
                if peer not in self._member_ids and peer != self.id:
                    del self.progress[peer]
            if self.lead_transferee not in (NONE, *self.voters):
                self.lead_transferee = NONE
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE) and self.id not in self.voters:
            self._become_follower(self.term, NONE)

    def committed_in_current_term(self) -> bool:
        """Whether this node's log has committed an entry of the current term (a new
        leader may change membership or serve ReadIndex only then)."""
        return self._committed_entry_in_current_term()

    def _committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _serve_read_index(self, ctx: bytes) -> None:
        if not self.read_only.add_request(self.log.committed, ctx):
            return  # the same context is already being confirmed
        self.read_only.recv_ack(self.id, ctx)
        self._bcast_heartbeat(ctx)

    def _handle_read_ack(self, m: Message) -> None:
        acks = self.read_only.recv_ack(m.frm, m.context)
        if acks is None or not has_quorum(self.voters, acks):
            return
        for status in self.read_only.advance(m.context):
            self._read_states.append(ReadState(status.index, status.context))

    # ================================================================ Ready helpers

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)


def _recorded_voters(conf: ConfState) -> set[int]:
    """Voters whose data dir (incarnation) the configuration records."""
    return {v for v in conf.voters if (m := conf.member(v)) is not None and m.incarnation}
