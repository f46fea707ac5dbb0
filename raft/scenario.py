"""A small datadriven interpreter for scripted Raft scenarios (the etcd testdata style).

A script is a sequence of blocks: a command line, a `----` line, then the expected
output up to a blank line. Lines starting with `#` before a command are comments.
Commands drive RaftCores over MemoryStorage on an in-memory network:

    add-nodes N [join=false pre_vote=true check_quorum=true election=10 heartbeat=1
                 max_inflight_msgs=256 max_inflight_bytes=N max_msg_bytes=N
                 max_entry_bytes=N seed=0]
    campaign ID | tick ID [N] | propose ID DATA | read-index ID CTX | transfer-leader ID TO
    conf-change ID voters=1,2 [learners=3]
    process-ready [ID...] | deliver-msgs [ID...] | drop-msgs [ID...] | stabilize [msgs]
    msg-counts (messages delivered since the last msg-counts, by type)
    partition A B | C D | isolate ID | heal | crash ID | restart ID
    write-log ID TERM... (crashed node: replace its durable log, commit=0) | log ID | status [ID...]

The output is a compact trace: role changes, term/vote changes, applied entries, read
states and (for deliver-msgs or `stabilize msgs`) every message delivered. After every
command the interpreter checks two safety invariants (one leader per term; applied
sequences agree on their common prefix) and prints a VIOLATION line if one breaks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raft.core import Config, RaftCore
from raft.errors import RaftError
from raft.memory_storage import MemoryStorage
from raft.messages import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Ready,
    decode_conf,
)

MAX_STABILIZE_ROUNDS = 10_000


class ScenarioError(Exception):
    """The script itself is wrong (unknown command, bad arguments)."""


@dataclass
class _Node:
    id: int
    cfg: Config
    storage: MemoryStorage
    rng: random.Random
    core: RaftCore | None
    applied: list[Entry] = field(default_factory=list)
    last_hs: HardState = field(default_factory=HardState)


@dataclass
class Block:
    preamble: list[str]
    command: str
    expected: str


def parse_script(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    preamble: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            preamble.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ScenarioError(f"line {i + 1}: command {line!r} must be followed by '----'")
        i += 2
        out: list[str] = []
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        blocks.append(Block(preamble, line, "\n".join(out)))
        preamble = []
    return blocks


def render_script(blocks: list[Block], outputs: list[str]) -> str:
    """The script with `outputs` as expectations; comments kept, one blank line between."""
    parts: list[str] = []
    for block, out in zip(blocks, outputs, strict=True):
        comments = [line for line in block.preamble if line.strip()]
        parts.extend(comments)
        parts.extend([block.command, "----", out, ""])
    return "\n".join(parts).rstrip("\n") + "\n"


def format_message(m: Message) -> str:
    t = m.type
    head = f"{m.frm}->{m.to} {t.name} t{m.term}"
    if t is MessageType.APP:
        ents = ",".join(f"{e.index}/{e.term}" for e in m.entries)
        return f"{head} prev={m.index}/{m.log_term} ents=[{ents}] commit={m.commit}"
    if t is MessageType.APP_RESP:
        if m.reject:
            return f"{head} reject idx={m.index} hint={m.reject_hint}/{m.hint_term}"
        return f"{head} idx={m.index}"
    if t in (MessageType.VOTE, MessageType.PRE_VOTE):
        ctx = f" ctx={m.context.decode()}" if m.context else ""
        return f"{head} last={m.index}/{m.log_term}{ctx}"
    if t in (MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP):
        return head + (" reject" if m.reject else "")
    if t is MessageType.HEARTBEAT:
        ctx = f" ctx={m.context.decode()}" if m.context else ""
        return f"{head} commit={m.commit}{ctx}"
    if t is MessageType.HEARTBEAT_RESP:
        return head + (f" ctx={m.context.decode()}" if m.context else "")
    return head


def _entry_label(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        body = "noop"
    elif e.kind is EntryKind.CONF_CHANGE:
        conf = decode_conf(e.data)
        body = f"conf(v={','.join(map(str, conf.voters))} l={','.join(map(str, conf.learners))})"
    else:
        body = e.data.decode(errors="replace")
    return f"{e.index}/{e.term}:{body}"


def _parse_bool(value: str) -> bool:
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ScenarioError(f"not a boolean: {value!r}")


class Scenario:
    def __init__(self) -> None:
        self.nodes: dict[int, _Node] = {}
        self.inflight: list[Message] = []
        self.group_of: dict[int, int] = {}  # node -> partition group; empty = healed
        self.leaders: dict[int, int] = {}  # term -> leader id (invariant check)
        self.delivered: list[Message] = []  # every message stepped, for tests to inspect
        self._counted = 0  # delivered messages already reported by msg-counts
        self._out: list[str] = []

    # ------------------------------------------------------------ driving

    def run(self, command_line: str) -> str:
        self._out = []
        words = command_line.split()
        name, args = words[0], words[1:]
        handler = getattr(self, "_cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        handler(args)
        self._check_invariants()
        return "\n".join(self._out) if self._out else "ok"

    def run_script(self, text: str) -> tuple[list[Block], list[str]]:
        blocks = parse_script(text)
        return blocks, [self.run(b.command) for b in blocks]

    def _node(self, arg: str) -> _Node:
        try:
            node = self.nodes[int(arg)]
        except (ValueError, KeyError) as exc:
            raise ScenarioError(f"no such node {arg!r}") from exc
        return node

    def _live(self, arg: str) -> tuple[_Node, RaftCore]:
        node = self._node(arg)
        if node.core is None:
            raise ScenarioError(f"node {node.id} is crashed")
        return node, node.core

    def _connected(self, a: int, b: int) -> bool:
        return not self.group_of or self.group_of.get(a) == self.group_of.get(b)

    def _process_ready(self, node: _Node) -> bool:
        core = node.core
        if core is None or not core.has_ready():
            return False
        rd: Ready = core.ready()
        for m in rd.messages + rd.messages_after_persist:
            if m.to == node.id:
                raise AssertionError(f"node {node.id} put a message to itself in a Ready: {m}")
        self._queue(rd.messages)
        node.storage.save(rd.hard_state, rd.entries)
        self._queue(rd.messages_after_persist)
        if rd.soft_state is not None:
            s = rd.soft_state
            self._out.append(f"{node.id}: {s.role.label} term={core.term} leader={s.leader_id}")
            if s.role.label == "leader":
                prior = self.leaders.setdefault(core.term, node.id)
                if prior != node.id:
                    self._out.append(
                        f"VIOLATION two leaders in term {core.term}: {prior}, {node.id}"
                    )
        hs = rd.hard_state
        if hs is not None and (hs.term, hs.vote) != (node.last_hs.term, node.last_hs.vote):
            self._out.append(f"{node.id}: term={hs.term} vote={hs.vote}")
        if hs is not None:
            node.last_hs = hs
        if rd.committed_entries:
            node.applied.extend(rd.committed_entries)
            labels = " ".join(_entry_label(e) for e in rd.committed_entries)
            self._out.append(f"{node.id}: apply {labels}")
        for rs in rd.read_states:
            self._out.append(f"{node.id}: read-state index={rs.index} ctx={rs.context.decode()}")
        core.advance(rd)
        return True

    def _queue(self, msgs: tuple[Message, ...]) -> None:
        for m in msgs:
            if self._connected(m.frm, m.to):
                self.inflight.append(m)

    def _deliver(self, targets: set[int] | None, show: bool) -> bool:
        batch = [m for m in self.inflight if targets is None or m.to in targets]
        if not batch:
            return False
        self.inflight = [m for m in self.inflight if not (targets is None or m.to in targets)]
        for m in batch:
            node = self.nodes.get(m.to)
            if node is None or node.core is None or not self._connected(m.frm, m.to):
                if show:
                    self._out.append(f"  dropped {format_message(m)}")
                continue
            if show:
                self._out.append(f"  {format_message(m)}")
            self.delivered.append(m)
            node.core.step(m)
        return True

    def process_ready(self, node_id: int) -> list[str]:
        """Handle one Ready of `node_id` (persist, queue messages, apply); trace lines."""
        self._out = []
        self._process_ready(self.nodes[node_id])
        return self._out

    def deliver(self, m: Message) -> list[str]:
        """Step one message now (it need not be in `inflight`); trace lines."""
        self._out = []
        node = self.nodes.get(m.to)
        if node is not None and node.core is not None and self._connected(m.frm, m.to):
            self.delivered.append(m)
            node.core.step(m)
        return self._out

    def _check_invariants(self) -> None:
        live = [n for n in self.nodes.values() if n.applied]
        for i, a in enumerate(live):
            for b in live[i + 1 :]:
                for ea, eb in zip(a.applied, b.applied, strict=False):
                    if ea != eb:
                        self._out.append(
                            f"VIOLATION nodes {a.id} and {b.id} applied different entries "
                            f"at {ea.index}"
                        )
                        return

    # ------------------------------------------------------------ commands

    def _cmd_add_nodes(self, args: list[str]) -> None:
        if not args:
            raise ScenarioError("add-nodes N [key=value ...]")
        count = int(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])
        seed = int(opts.pop("seed", "0"))
        joining = _parse_bool(opts.pop("join", "false"))
        kwargs: dict[str, object] = {}
        names = {"election": "election_ticks", "heartbeat": "heartbeat_ticks"}
        for key, value in opts.items():
            field_name = names.get(key, key)
            if field_name in ("pre_vote", "check_quorum"):
                kwargs[field_name] = _parse_bool(value)
            elif field_name in (
                "election_ticks",
                "heartbeat_ticks",
                "max_inflight_msgs",
                "max_inflight_bytes",
                "max_msg_bytes",
                "max_entry_bytes",
            ):
                kwargs[field_name] = int(value)
            else:
                raise ScenarioError(f"unknown add-nodes option {key!r}")
        first = len(self.nodes) + 1
        # Joining nodes know no members: the cluster adds them with a conf-change.
        peers = () if joining else tuple(range(1, first + count))
        for node_id in range(first, first + count):
            cfg = Config(id=node_id, peers=peers, **kwargs)  # type: ignore[arg-type]
            storage = MemoryStorage()
            rng = random.Random(seed * 1000 + node_id)
            self.nodes[node_id] = _Node(node_id, cfg, storage, rng, RaftCore(cfg, storage, rng))

    def _cmd_campaign(self, args: list[str]) -> None:
        node, core = self._live(args[0])
        core.campaign()
        self._process_ready(node)

    def _cmd_tick(self, args: list[str]) -> None:
        node, core = self._live(args[0])
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            core.tick()
            self._process_ready(node)

    def _cmd_propose(self, args: list[str]) -> None:
        node, core = self._live(args[0])
        try:
            index, term = core.propose(" ".join(args[1:]).encode())
        except RaftError as exc:
            self._out.append(f"error: {type(exc).__name__}: {exc}")
            return
        self._out.append(f"proposed index={index} term={term}")
        self._process_ready(node)

    def _cmd_read_index(self, args: list[str]) -> None:
        node, core = self._live(args[0])
        try:
            core.read_index(args[1].encode())
        except RaftError as exc:
            self._out.append(f"error: {type(exc).__name__}: {exc}")
            return
        self._process_ready(node)

    def _cmd_conf_change(self, args: list[str]) -> None:
        """conf-change ID voters=1,2,3 [learners=4]: propose a new configuration at ID."""
        node, core = self._live(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])

        def ids(key: str) -> tuple[int, ...]:
            return tuple(int(x) for x in opts.get(key, "").split(",") if x)

        try:
            index, term = core.propose_conf_change(ConfState(ids("voters"), ids("learners")))
        except RaftError as exc:
            self._out.append(f"error: {type(exc).__name__}: {exc}")
            return
        self._out.append(f"conf-change at ({index}, t{term})")
        self._process_ready(node)

    def _cmd_transfer_leader(self, args: list[str]) -> None:
        node, core = self._live(args[0])
        try:
            core.transfer_leader(int(args[1]))
        except RaftError as exc:
            self._out.append(f"error: {type(exc).__name__}: {exc}")
            return
        self._process_ready(node)

    def _targets(self, args: list[str]) -> list[_Node]:
        return [self._node(a) for a in args] if args else list(self.nodes.values())

    def _cmd_process_ready(self, args: list[str]) -> None:
        for node in self._targets(args):
            self._process_ready(node)

    def _cmd_deliver_msgs(self, args: list[str]) -> None:
        self._deliver({n.id for n in self._targets(args)} if args else None, show=True)

    def _cmd_drop_msgs(self, args: list[str]) -> None:
        targets = {n.id for n in self._targets(args)}
        dropped = [m for m in self.inflight if m.to in targets]
        self.inflight = [m for m in self.inflight if m.to not in targets]
        self._out.append(f"dropped {len(dropped)}")

    def _cmd_stabilize(self, args: list[str]) -> None:
        show = "msgs" in args
        for _ in range(MAX_STABILIZE_ROUNDS):
            progressed = False
            for node_id in sorted(self.nodes):
                progressed |= self._process_ready(self.nodes[node_id])
            progressed |= self._deliver(None, show)
            if not progressed:
                return
        raise AssertionError("stabilize did not converge")

    def _cmd_msg_counts(self, args: list[str]) -> None:
        """Count messages delivered since the last msg-counts, per type (rejections apart)."""
        counts: dict[str, int] = {}
        for m in self.delivered[self._counted :]:
            key = m.type.name + ("(reject)" if m.reject else "")
            counts[key] = counts.get(key, 0) + 1
        self._counted = len(self.delivered)
        self._out.append(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none")

    def _cmd_partition(self, args: list[str]) -> None:
        groups = " ".join(args).split("|")
        self.group_of = {}
        for g, members in enumerate(groups):
            for a in members.split():
                self.group_of[self._node(a).id] = g
        for node_id in self.nodes:
            self.group_of.setdefault(node_id, len(groups))

    def _cmd_isolate(self, args: list[str]) -> None:
        target = self._node(args[0]).id
        self.group_of = {n: (0 if n == target else 1) for n in self.nodes}

    def _cmd_heal(self, args: list[str]) -> None:
        self.group_of = {}

    def _cmd_crash(self, args: list[str]) -> None:
        node = self._node(args[0])
        node.core = None
        node.applied = []
        node.storage = node.storage.crash_copy()

    def _cmd_restart(self, args: list[str]) -> None:
        node = self._node(args[0])
        if node.core is not None:
            raise ScenarioError(f"node {node.id} is running; crash it first")
        node.core = RaftCore(node.cfg, node.storage, node.rng)
        node.last_hs = node.storage.hard_state
        self._process_ready(node)

    def _cmd_write_log(self, args: list[str]) -> None:
        node = self._node(args[0])
        if node.core is not None:
            raise ScenarioError(f"node {node.id} is running; crash it first")
        terms = [int(t) for t in args[1:]]
        entries = [
            Entry(i + 1, t, EntryKind.NORMAL, f"w{i + 1}".encode()) for i, t in enumerate(terms)
        ]
        hs = node.storage.hard_state
        term = max([hs.term, *terms])
        vote = hs.vote if term == hs.term else 0
        # Commit restarts at 0: a forged log must not claim its entries are committed.
        node.storage = MemoryStorage(HardState(term, vote, 0), entries=entries)

    def _cmd_log(self, args: list[str]) -> None:
        node = self._node(args[0])
        entries = node.storage.all_entries()
        text = " ".join(f"{e.index}/{e.term}" for e in entries) or "(empty)"
        self._out.append(f"{node.id}: {text} commit={node.storage.hard_state.commit}")

    def _cmd_status(self, args: list[str]) -> None:
        for node in self._targets(args):
            if node.core is None:
                self._out.append(f"{node.id}: crashed")
                continue
            st = node.core.status()
            line = (
                f"{st.id}: {st.role.label} term={st.term} leader={st.leader_id} "
                f"last={st.last_index} commit={st.commit} applied={st.applied}"
            )
            if st.progress:
                prs = " ".join(f"{p}:{m}/{n}/{s}" for p, (m, n, s) in st.progress.items())
                line += f" progress {prs}"
            self._out.append(line)
