"""Seeded simulation of the Raft core (testing layer 2 of DESIGN.md).

Three groups:
- the harness pieces (clock, event queue, network, fault scheduler, safety checker, the
  driver's Ready handling) against tiny fakes, including proofs that every invariant
  check can fail;
- mutated cores (a known Raft bug injected) that the simulation must catch;
- the CI seed set: 1,000 runs of the real core (500 seeds x 3 and 5 nodes), plus a deep
  set (`RAFTQ_SIM_SEEDS=N`, marked slow) and the single-seed `replay` entry point.

Replay one run with its full trace:
    RAFTQ_SIM_SEED=1234 RAFTQ_SIM_NODES=5 .venv/bin/python -m pytest \
        tests/raft/test_simulation.py -k replay -s
"""

from __future__ import annotations

import copy
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog

from raft.errors import RaftError
from raft.memory_storage import MemoryStorage
from raft.messages import (
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from raft.simulation import (
    CALM,
    FAULT_WEIGHTS,
    CrashPoint,
    EventKind,
    EventQueue,
    FaultScheduler,
    InvariantViolation,
    LivenessFailure,
    Network,
    NetworkProfile,
    SafetyChecker,
    SimParams,
    Simulation,
    SimulationFailure,
    VirtualClock,
    default_core_factory,
    main,
)

REPO = Path(__file__).resolve().parents[2]
CI_SEEDS_PER_SIZE = 500


@pytest.fixture(autouse=True, scope="module")
def _quiet_core_logs() -> Iterator[None]:
    """Thousands of elections would log thousands of lines: keep only warnings here."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    yield
    structlog.configure(**saved)


def E(index: int, term: int, data: bytes = b"", kind: EntryKind = EntryKind.NORMAL) -> Entry:
    return Entry(index, term, kind, data)


def msg(frm: int, to: int, index: int = 0) -> Message:
    return Message(MessageType.HEARTBEAT, to=to, frm=frm, term=1, index=index)


# ====================================================================== clock and events


def test_event_queue_orders_by_time_then_by_scheduling_order() -> None:
    q = EventQueue()
    q.schedule(5, EventKind.TICK, "b")
    q.schedule(1, EventKind.TICK, "a")
    q.schedule(5, EventKind.DELIVER, "c")
    q.schedule(3, EventKind.FAULT, None)
    assert [q.pop() for _ in range(4)] == [
        (1, EventKind.TICK, "a"),
        (3, EventKind.FAULT, None),
        (5, EventKind.TICK, "b"),
        (5, EventKind.DELIVER, "c"),
    ]
    assert len(q) == 0


def test_virtual_clock_only_moves_forward() -> None:
    clock = VirtualClock()
    clock.advance_to(10)
    clock.advance_to(10)
    assert clock.now_ms == 10
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance_to(9)


# ====================================================================== network


def make_net(seed: int = 1, profile: NetworkProfile = CALM) -> tuple[Network, EventQueue]:
    q = EventQueue()
    net = Network(random.Random(seed), q, VirtualClock())
    net.profile = profile
    return net, q


def drain(q: EventQueue) -> list[tuple[int, Message]]:
    out = []
    while len(q):
        at, kind, payload = q.pop()
        assert kind is EventKind.DELIVER
        m, _incarnation = payload  # what the sender's handshake would have said
        out.append((at, m))
    return out


def test_network_latency_stays_within_the_profile_and_reorders() -> None:
    net, q = make_net(profile=NetworkProfile(min_latency_ms=2, max_latency_ms=30))
    for i in range(200):
        assert net.send(msg(1, 2, index=i)) == 1
    delivered = drain(q)
    assert all(2 <= at <= 30 for at, _ in delivered)
    order = [m.index for _, m in delivered]
    assert sorted(order) == list(range(200))
    assert order != list(range(200)), "random latency must reorder messages"


def test_network_latency_spikes_delay_some_messages() -> None:
    net, q = make_net(profile=NetworkProfile(max_latency_ms=5, spike_rate=0.5, spike_max_ms=500))
    for i in range(200):
        net.send(msg(1, 2, index=i))
    delays = [at for at, _ in drain(q)]
    assert max(delays) > 100
    assert min(delays) <= 5


def test_network_drops_and_duplicates_at_the_configured_rates() -> None:
    net, q = make_net(profile=NetworkProfile(drop_rate=1.0))
    assert net.send(msg(1, 2)) == 0
    assert drain(q) == []
    net, q = make_net(profile=NetworkProfile(dup_rate=1.0))
    assert net.send(msg(1, 2)) == 2
    assert len(drain(q)) == 2
    net, q = make_net(profile=NetworkProfile(drop_rate=0.3))
    sent = sum(net.send(msg(1, 2)) for _ in range(1000))
    assert 600 < sent < 800
    assert net.stats.dropped == 1000 - sent


def test_symmetric_partition_cuts_only_links_between_groups() -> None:
    net, _ = make_net()
    net.partition([[1, 2], [3, 4, 5]])
    assert net.link_up(1, 2) and net.link_up(2, 1) and net.link_up(3, 5)
    for a in (1, 2):
        for b in (3, 4, 5):
            assert not net.link_up(a, b) and not net.link_up(b, a)
    net.heal()
    assert not net.cut_links


def test_one_way_cuts_and_leader_isolation() -> None:
    net, q = make_net()
    net.cut(1, 2)
    assert not net.link_up(1, 2) and net.link_up(2, 1)
    assert net.send(msg(1, 2)) == 0 and net.send(msg(2, 1)) == 1
    net.heal()
    net.isolate(3, [1, 2, 3], inbound=True, outbound=False)
    assert net.link_up(3, 1) and not net.link_up(1, 3) and not net.link_up(2, 3)
    net.isolate(3, [1, 2, 3], inbound=True, outbound=True)
    assert not net.link_up(3, 1) and not net.link_up(3, 2)
    drain(q)


def test_message_in_flight_is_lost_when_its_link_is_cut() -> None:
    net, q = make_net()
    net.send(msg(1, 2))
    net.cut(1, 2)
    [(_, m)] = drain(q)
    assert not net.arrives(m)
    net.heal()
    assert net.arrives(m)


def test_network_is_deterministic_per_seed() -> None:
    profile = NetworkProfile(drop_rate=0.2, dup_rate=0.2, max_latency_ms=50)
    runs = []
    for _ in range(2):
        net, q = make_net(seed=42, profile=profile)
        for i in range(100):
            net.send(msg(1, 2, index=i))
        runs.append([(at, m.index) for at, m in drain(q)])
    assert runs[0] == runs[1]
    net, q = make_net(seed=43, profile=profile)
    for i in range(100):
        net.send(msg(1, 2, index=i))
    assert [(at, m.index) for at, m in drain(q)] != runs[0]


def test_fault_scheduler_is_deterministic_and_draws_every_fault() -> None:
    a = FaultScheduler(random.Random(7))
    b = FaultScheduler(random.Random(7))
    draws_a = [(a.next_fault(), a.next_gap_ms()) for _ in range(500)]
    draws_b = [(b.next_fault(), b.next_gap_ms()) for _ in range(500)]
    assert draws_a == draws_b
    assert {name for name, _ in draws_a} == {name for name, _ in FAULT_WEIGHTS}
    assert all(a.min_gap_ms <= gap <= a.max_gap_ms for _, gap in draws_a)


# ====================================================================== safety checker


def healthy_checker() -> SafetyChecker:
    """Nodes 1-3; node 1 led term 1 and committed entries 1..3 on nodes 1 and 2."""
    c = SafetyChecker((1, 2, 3))
    log = [E(1, 1, kind=EntryKind.NOOP), E(2, 1, b"a"), E(3, 1, b"b")]
    c.on_leader(1, 1)
    for n in (1, 2):
        c.on_persist(n, log)
    c.on_hard_state(1, HardState(1, 1, 3))
    c.on_hard_state(2, HardState(1, 1, 3))
    for e in log:
        assert c.on_apply(1, e)
    c.on_ack(3)
    return c


def test_checker_accepts_a_correct_history() -> None:
    c = healthy_checker()
    assert c.commit_index == 3
    # node 3 catches up late, then node 2 wins term 2 with every committed entry
    c.on_persist(3, [E(1, 1, kind=EntryKind.NOOP), E(2, 1, b"a")])
    c.on_persist(3, [E(2, 1, b"a"), E(3, 1, b"b"), E(4, 1, b"x")])
    c.on_persist(3, [E(4, 2, b"y")])  # an uncommitted suffix may be replaced
    c.on_leader(2, 2)
    c.on_leader(2, 2)
    c.on_read_issued(2, b"r1")
    c.on_read_state(2, ReadState(3, b"r1"))
    for e in c.committed:
        assert c.on_apply(3, e)
    assert not c.on_apply(3, c.committed[0]), "a replay after restart is recognised"
    assert c.reads_answered == 1


def test_checker_rejects_two_leaders_in_one_term() -> None:
    c = healthy_checker()
    with pytest.raises(InvariantViolation, match=r"election-safety.*two leaders in term 1"):
        c.on_leader(2, 1)


def test_checker_rejects_diverging_prefixes_with_the_same_index_and_term() -> None:
    c = SafetyChecker((1, 2))
    c.on_persist(1, [E(1, 1, b"a"), E(2, 2, b"b")])
    with pytest.raises(InvariantViolation, match="log-matching"):
        c.on_persist(2, [E(1, 1, b"OTHER"), E(2, 2, b"b")])


def test_checker_rejects_a_leader_missing_a_committed_entry() -> None:
    c = healthy_checker()
    c.on_persist(3, [E(1, 1, kind=EntryKind.NOOP), E(2, 1, b"a")])
    with pytest.raises(InvariantViolation, match=r"leader-completeness.*entry 3"):
        c.on_leader(3, 2)


def test_checker_allows_a_stale_leader_of_an_older_term_to_lack_later_commits() -> None:
    c = SafetyChecker((1, 2, 3))
    c.on_persist(3, [E(1, 1, kind=EntryKind.NOOP)])
    c.on_persist(1, [E(1, 1, kind=EntryKind.NOOP), E(2, 5, b"new")])
    c.on_persist(2, [E(1, 1, kind=EntryKind.NOOP), E(2, 5, b"new")])
    c.on_leader(1, 5)
    c.on_hard_state(1, HardState(5, 1, 2))
    c.on_leader(3, 4)  # a late vote count elects node 3 in an older term: legal


def test_checker_rejects_overwriting_a_committed_entry() -> None:
    c = healthy_checker()
    with pytest.raises(InvariantViolation, match=r"committed-unchanged.*overwrote"):
        c.on_persist(2, [E(3, 2, b"evil")])
    with pytest.raises(InvariantViolation, match=r"committed-unchanged.*truncated"):
        c.on_persist(2, [E(2, 1, b"a")])


def test_checker_rejects_two_nodes_committing_different_entries() -> None:
    c = healthy_checker()
    c.on_persist(3, [E(1, 1, kind=EntryKind.NOOP), E(2, 1, b"a"), E(3, 2, b"other")])
    with pytest.raises(InvariantViolation, match=r"committed-unchanged.*commits"):
        c.on_hard_state(3, HardState(2, 0, 3))


def test_checker_rejects_commit_beyond_the_log_and_wrong_applies() -> None:
    c = healthy_checker()
    with pytest.raises(InvariantViolation, match="commit-bound"):
        c.on_hard_state(2, HardState(1, 1, 9))
    with pytest.raises(InvariantViolation, match=r"apply-sequence.*gap"):
        c.on_apply(2, c.committed[1])
    with pytest.raises(InvariantViolation, match=r"apply-durable.*holds \(1,t1,NOOP"):
        c.on_apply(2, E(1, 1, b"not the noop"))  # not what its disk holds
    c.on_persist(3, [E(1, 1, kind=EntryKind.NOOP), E(2, 2, b"other")])
    assert c.on_apply(3, E(1, 1, kind=EntryKind.NOOP))
    with pytest.raises(InvariantViolation, match=r"apply-sequence.*was committed"):
        c.on_apply(3, E(2, 2, b"other"))  # held, but not the committed entry
    c.on_persist(2, [E(4, 1, b"z")])
    with pytest.raises(InvariantViolation, match="apply-committed"):
        c.on_apply(2, E(4, 1, b"z"))  # nobody said it is committed
    assert c.commit_index == 3
    for e in c.committed:
        c.on_apply(2, e)
    assert c.on_apply(2, E(4, 1, b"z"), term=1)  # its leader applies on a majority ack
    assert c.commit_index == 4
    with pytest.raises(InvariantViolation, match="committed-unchanged"):
        c.on_persist(1, [E(4, 2, b"zz")])
        c.on_hard_state(1, HardState(2, 1, 4))


def test_checker_rejects_a_payload_committed_twice() -> None:
    c = healthy_checker()
    c.on_persist(1, [E(4, 1, b"a")])
    with pytest.raises(InvariantViolation, match="no-duplicates"):
        c.on_hard_state(1, HardState(1, 1, 4))


def test_checker_rejects_stale_uncommitted_and_misrouted_reads() -> None:
    c = healthy_checker()
    c.on_read_issued(1, b"r1")
    with pytest.raises(InvariantViolation, match=r"read-index.*index 2 but 3 was committed"):
        c.on_read_state(1, ReadState(2, b"r1"))
    c.on_read_state(1, ReadState(4, b"r1"))  # above what the checker knows: checked at the end
    with pytest.raises(InvariantViolation, match=r"read-index.*index 4, never committed"):
        c.check_reads_committed()
    with pytest.raises(InvariantViolation, match=r"read-index.*answered by 2"):
        c.on_read_state(2, ReadState(3, b"r1"))
    with pytest.raises(InvariantViolation, match=r"read-index.*unknown"):
        c.on_read_state(1, ReadState(3, b"never issued"))


def test_checker_catches_a_violation_injected_into_a_copy_of_a_real_run() -> None:
    """The checker state after a real run, copied; a fake node then breaks each rule."""
    for seed in range(11, 40):  # a run that committed enough to break rules in
        sim = Simulation(SimParams(seed=seed, nodes=3))
        sim.run()
        if sim.checker.commit_index > 5:
            break
    real = sim.checker
    assert real.commit_index > 5
    last = real.committed[-1]
    forged = replace(last, data=b"forged", kind=EntryKind.NORMAL)

    overwrite = copy.deepcopy(real)
    with pytest.raises(InvariantViolation, match="committed-unchanged"):
        overwrite.on_persist(2, [forged])

    bad_apply = copy.deepcopy(real)
    bad_apply.applied[3] = last.index - 1
    with pytest.raises(InvariantViolation, match="apply-durable"):
        bad_apply.on_apply(3, forged)  # an entry its disk does not hold

    skipping = copy.deepcopy(real)
    skipping.applied[3] = last.index - 2
    with pytest.raises(InvariantViolation, match=r"apply-sequence.*gap"):
        skipping.on_apply(3, last)

    forgetful = copy.deepcopy(real)
    forgetful.node_commit[1] = 0
    forgetful.on_persist(1, [E(1, 1, kind=EntryKind.NOOP)])  # node 1 lost its log...
    next_term = max(forgetful.leaders) + 1
    with pytest.raises(InvariantViolation, match="leader-completeness"):
        forgetful.on_leader(1, next_term)  # ...then won an election

    two_leaders = copy.deepcopy(real)
    term, leader = next(iter(two_leaders.leaders.items()))
    with pytest.raises(InvariantViolation, match="election-safety"):
        two_leaders.on_leader(leader % 3 + 1, term)

    real.on_leader(real.leaders[max(real.leaders)], max(real.leaders))  # original untouched


# ====================================================================== driver contract


class ScriptedCore:
    """A fake core that hands out pre-written Readies (to test the driver, not Raft)."""

    def __init__(self, readies: list[Ready]) -> None:
        self.readies = list(readies)
        self.advanced: list[Ready] = []

    def has_ready(self) -> bool:
        return bool(self.readies)

    def ready(self) -> Ready:
        return self.readies.pop(0)

    def advance(self, rd: Ready) -> None:
        self.advanced.append(rd)


def scripted_sim(readies: list[Ready]) -> tuple[Simulation, ScriptedCore, list[Any]]:
    core = ScriptedCore(readies)
    sim = Simulation(
        SimParams(seed=1, nodes=3),
        core_factory=lambda *args: core,
        core_options={},
        driver_options={},
    )
    node = sim.nodes[1]
    sim._start_core(node)
    calls: list[Any] = []
    storage = node.storage
    real_save = storage.save

    def save(hs: HardState | None, entries: Any) -> None:
        calls.append(("save", hs, tuple(entries)))
        real_save(hs, entries)

    storage.save = save
    real_send = sim._send
    sim._send = lambda m: (calls.append(("send", m.type)), real_send(m))
    return sim, core, calls


LEADER_READY = Ready(
    soft_state=SoftState(1, Role.LEADER),
    hard_state=HardState(term=1, vote=1, commit=0),
    entries=(E(1, 1, kind=EntryKind.NOOP),),
    messages=(Message(MessageType.APP, to=2, frm=1, term=1),),
    messages_after_persist=(Message(MessageType.VOTE_RESP, to=3, frm=1, term=1),),
)


def drive(sim: Simulation, node: Any) -> None:
    """A driver turn, then the end of the inline write it blocked on (its STORAGE event)."""
    sim._drive(node)
    if node.job is not None:
        sim._write(node)
        if node.up:
            sim._drive(node)


def test_driver_follows_the_ready_order() -> None:
    sim, core, calls = scripted_sim([LEADER_READY])
    node = sim.nodes[1]
    sim._drive(node)
    assert calls == [("send", MessageType.APP)] and node.job is not None  # blocked, writing
    sim._write(node)
    sim._drive(node)
    assert [c[0] if c[0] == "save" else c[1] for c in calls] == [
        MessageType.APP,
        "save",
        MessageType.VOTE_RESP,
    ]
    assert core.advanced == [LEADER_READY]
    assert sim.checker.leaders == {1: 1}
    assert sim.checker.logs[1] == [E(1, 1, kind=EntryKind.NOOP)]


def test_crash_before_persist_loses_the_ready_but_not_what_was_sent() -> None:
    sim, core, calls = scripted_sim([LEADER_READY])
    node = sim.nodes[1]
    node.crash_point = CrashPoint.BEFORE_PERSIST
    drive(sim, node)
    assert calls == [("send", MessageType.APP)]
    assert not node.up and core.advanced == []
    assert node.storage.last_index() == 0 and node.storage.initial_state()[0] == HardState()
    assert sim.crash_kinds == {"before-persist": 1}


def test_crash_after_persist_keeps_the_write_but_never_sends_responses() -> None:
    sim, core, calls = scripted_sim([LEADER_READY])
    node = sim.nodes[1]
    node.crash_point = CrashPoint.AFTER_PERSIST
    drive(sim, node)
    assert [c[0] for c in calls] == ["send", "save"]
    assert not node.up and core.advanced == []
    assert node.storage.last_index() == 1
    assert node.storage.initial_state()[0] == HardState(term=1, vote=1, commit=0)


def test_crashed_node_restarts_from_durable_storage_only() -> None:
    sim, _, _ = scripted_sim([LEADER_READY])
    node = sim.nodes[1]
    drive(sim, node)
    sim._crash(node, "test crash")
    assert not node.up
    built: list[tuple[Any, dict[str, Any]]] = []

    def factory(node_id: int, peers: Any, storage: Any, rng: Any, options: Any) -> Any:
        built.append((storage, options))
        return ScriptedCore([])

    sim._core_factory = factory
    sim._start_core(node)
    storage, options = built[0]
    assert isinstance(storage, MemoryStorage)
    assert storage.all_entries() == [E(1, 1, kind=EntryKind.NOOP)]
    assert options["applied"] == 0
    assert node.hard_state == HardState(term=1, vote=1, commit=0)


# ====================================================================== whole runs


def test_same_seed_same_run_event_for_event() -> None:
    params = SimParams(seed=21, nodes=3, fault_ms=800, verbose=True)
    first = Simulation(params).run()
    second = Simulation(params).run()
    assert first.trace == second.trace and len(first.trace) > 150
    assert first.summary() == second.summary()
    other = Simulation(replace(params, seed=22)).run()
    assert other.trace != first.trace


def test_the_fault_mix_really_happens() -> None:
    """Across a few seeds, every fault and crash point fires and work still gets done."""
    faults: dict[str, int] = {}
    crashes: dict[str, int] = {}
    superseded = dropped = duplicated = reads = multi_term_runs = 0
    for seed in range(16):
        r = Simulation(SimParams(seed=seed, nodes=3 + 2 * (seed % 2))).run()
        for k, v in r.faults.items():
            faults[k] = faults.get(k, 0) + v
        for k, v in r.crashes.items():
            crashes[k] = crashes.get(k, 0) + v
        superseded += r.proposals_superseded
        dropped += r.network.dropped
        duplicated += r.network.duplicated
        reads += r.reads_answered
        multi_term_runs += r.terms > 1
        assert r.proposals_committed >= r.params.final_proposals
    assert set(faults) == {name for name, _ in FAULT_WEIGHTS}
    assert set(crashes) == {"before-persist", "after-persist", "between-readies"}
    assert superseded and dropped and duplicated and reads
    assert multi_term_runs >= 8


def _votes_ignore_logs(*args: Any) -> Any:
    """Mutant: grants votes without the §5.4.1 up-to-date check."""
    core = default_core_factory(*args)
    core.log.is_up_to_date = lambda index, term: True
    return core


def _reads_without_quorum(*args: Any) -> Any:
    """Mutant: answers ReadIndex at once, without confirming leadership."""
    core = default_core_factory(*args)
    core._serve_read_index = lambda ctx: core._read_states.append(
        ReadState(core.log.committed, ctx)
    )
    return core


@pytest.mark.parametrize(
    ("mutant", "invariant"),
    [(_votes_ignore_logs, "leader-completeness"), (_reads_without_quorum, "read-index")],
)
def test_simulation_catches_a_broken_core(mutant: Any, invariant: str) -> None:
    caught: SimulationFailure | None = None
    for seed in range(60):
        try:
            Simulation(SimParams(seed=seed, nodes=3), core_factory=mutant).run()
        except SimulationFailure as exc:
            caught = exc
            break
    if caught is None:
        pytest.fail(f"no seed in 0..59 caught the {invariant} mutant")
    exc = caught
    assert isinstance(exc.cause, InvariantViolation)
    assert exc.cause.invariant == invariant
    text = str(exc)
    assert f"seed={seed} nodes=3 virtual_time=" in text
    trace = text.split("recent events (oldest first):")[1].split("replay:")[0]
    assert len([line for line in trace.splitlines() if "ms " in line]) >= 10
    assert f"--seed {seed} --nodes 3" in text
    assert f"RAFTQ_SIM_SEED={seed} RAFTQ_SIM_NODES=3" in text


def test_simulation_runs_the_drivers_ready_policy_and_catches_it_broken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulation drives nodes through raft.ready_handler, the driver's own code: a
    handler that lets votes and append replies leave before their Ready is durable (they
    leave while the write is still under way, and a crash can lose it) must be caught."""
    from raft import ready_handler

    real_issue = ready_handler.ReadyHandler.issue

    def early_replies(self: Any) -> Any:
        job, send_now = real_issue(self)
        early = list(job.rd.messages_after_persist)
        job.rd = replace(job.rd, messages_after_persist=())
        return job, send_now + early

    monkeypatch.setattr(ready_handler.ReadyHandler, "issue", early_replies)
    for seed in range(100):
        try:
            Simulation(SimParams(seed=seed, nodes=3)).run()
        except SimulationFailure as exc:
            assert isinstance(exc.cause, (InvariantViolation, RaftError)), exc.cause
            return
    pytest.fail("no seed in 0..99 caught replies sent before their persist")


def _restore_forgets_what_it_covers(*args: Any) -> Any:
    """Mutant: a restored snapshot does not stop its entries being handed out to apply."""
    core = default_core_factory(*args)
    real = core.log.restore

    def restore(snap: Any) -> None:
        applying = core.log.applying
        real(snap)
        core.log.applying = applying

    core.log.restore = restore
    return core


def _restore_stale_snapshots(*args: Any) -> Any:
    """Mutant: takes a snapshot even when it is not ahead of its commit index."""
    core = default_core_factory(*args)

    def restore(snap: Any) -> bool:
        core.log.restore(snap)
        return True

    core._restore = restore
    return core


@pytest.mark.parametrize("mutant", [_restore_forgets_what_it_covers, _restore_stale_snapshots])
def test_simulation_catches_broken_snapshot_handling(mutant: Any) -> None:
    """Compaction and chunked InstallSnapshot run in the seeded runs: a core that gets
    snapshot restores wrong must fail one of the first seeds."""
    for seed in range(40):
        for nodes in (3, 5):
            try:
                Simulation(SimParams(seed=seed, nodes=nodes), core_factory=mutant).run()
            except SimulationFailure:
                return
    pytest.fail("no seed in 0..39 caught the snapshot mutant")


def test_liveness_failure_is_reported_with_its_seed() -> None:
    """A core that never elects anyone must fail the liveness phase, not hang."""

    def mute(*args: Any) -> Any:
        core = default_core_factory(*args)
        core.tick = lambda: None
        core.campaign = lambda: None  # nor does a campaign_storm fault elect anyone
        return core

    params = SimParams(seed=3, nodes=3, fault_ms=200, liveness_budget_ms=500)
    with pytest.raises(SimulationFailure, match="no convergence within 500ms") as info:
        Simulation(params, core_factory=mute).run()
    assert isinstance(info.value.cause, LivenessFailure)
    assert "seed=3 nodes=3" in str(info.value)


def test_cli_prints_the_full_trace_of_a_seed_identically_in_every_process() -> None:
    outputs = []
    for hash_seed in ("1", "2"):  # bytes hashing differs per process: must not matter
        proc = subprocess.run(
            [sys.executable, "-m", "raft.simulation", "--seed", "5", "--nodes", "3", "--verbose"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert lines[-1].startswith("OK seed=5 nodes=3 ")
    assert sum(" deliver " in line for line in lines) > 100
    assert any(" fault " in line for line in lines)


def test_cli_exit_code_is_one_on_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import raft.simulation as simulation

    monkeypatch.setattr(simulation, "default_core_factory", _votes_ignore_logs)
    codes = []
    for seed in range(60):
        codes.append(main(["--seed", str(seed), "--nodes", "3"]))
        if codes[-1]:
            break
    assert codes[-1] == 1 and set(codes[:-1]) <= {0}
    out = capsys.readouterr().out
    assert "FAILED" in out and f"replay: .venv/bin/python -m raft.simulation --seed {seed}" in out


# ====================================================================== the seed sets


@pytest.mark.parametrize("seed", range(2 * CI_SEEDS_PER_SIZE))
@pytest.mark.parametrize("nodes", [3, 5])
def test_seed(nodes: int, seed: int) -> None:
    result = Simulation(SimParams(seed=seed, nodes=nodes)).run()
    assert result.proposals_committed >= result.params.final_proposals


MEMBERSHIP_SEEDS_PER_SIZE = 250


@pytest.mark.parametrize("seed", range(MEMBERSHIP_SEEDS_PER_SIZE))
@pytest.mark.parametrize("nodes", [3, 5])
def test_seed_losing_disks_and_changing_members(nodes: int, seed: int) -> None:
    """500 runs of the membership mix: disks lost (a crash that loses the durable state,
    back under a new incarnation), voters removed (the leader too) and added back, with
    partitions, crashes and leader changes; the cluster ends with every node a voter
    again under the data dir it runs, and every invariant held throughout."""
    result = Simulation(SimParams(seed=seed, nodes=nodes, fault_mix="membership")).run()
    assert result.proposals_committed >= result.params.final_proposals


def test_the_membership_mix_loses_disks_and_churns_members() -> None:
    """Not a mix that never fires: over 40 runs, disks are lost and swapped back in,
    voters leave and come back."""
    totals: dict[str, int] = {}
    for seed in range(40):
        counts = Simulation(SimParams(seed=seed, nodes=3, fault_mix="membership")).run().membership
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    assert totals.get("disks_lost", 0) >= 10
    assert totals.get("conf_replace_incarnation", 0) >= 10
    assert totals.get("conf_promote", 0) >= 10
    assert totals.get("conf_remove", 0) >= 5 and totals.get("conf_add", 0) >= 5


def _first_failure(
    monkeypatch: pytest.MonkeyPatch, seeds: int, cause: type[BaseException] = BaseException
) -> SimulationFailure | None:
    """The first run of the membership mix that fails with `cause` (any failure by default)."""
    for seed in range(seeds):
        try:
            Simulation(SimParams(seed=seed, nodes=3, fault_mix="membership")).run()
        except SimulationFailure as exc:
            if isinstance(exc.cause, cause):
                return exc
    return None


def test_a_node_that_lost_its_disk_counted_as_the_old_member_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: no incarnation checks (the wiped node's votes and acks count as the old
    member's). It elects leaders without committed entries: the checker must say so (some
    runs of it fail the liveness phase instead: seed 12 does, since the RNG draws moved)."""
    import raft.simulation as simulation

    monkeypatch.setattr(simulation, "drop_message", lambda *args: None)
    exc = _first_failure(monkeypatch, 200, InvariantViolation)
    assert exc is not None, "no seed in 0..199 caught a cluster that trusts wiped nodes"
    assert isinstance(exc.cause, InvariantViolation)
    assert exc.cause.invariant in ("leader-completeness", "election-safety", "read-index")


def test_a_leader_that_never_swaps_in_a_new_incarnation_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: the housekeeping never replaces a member whose disk was lost. Safe, but the
    node never counts again (one failure from unavailable): the liveness phase, which
    wants every node a voter under the data dir it runs, must fail."""
    import raft.simulation as simulation
    from raft.membership_policy import next_change

    def never_replace(core: Any, seen: Any, lag: int) -> Any:
        planned = next_change(core, seen, lag)
        return None if planned and planned[0] == "replace_incarnation" else planned

    monkeypatch.setattr(simulation, "next_change", never_replace)
    exc = _first_failure(monkeypatch, 50)
    assert exc is not None and isinstance(exc.cause, LivenessFailure)


@pytest.mark.slow
@pytest.mark.timeout(0)
@pytest.mark.skipif(not os.environ.get("RAFTQ_SIM_SEEDS"), reason="set RAFTQ_SIM_SEEDS=N")
def test_deep_seed_set() -> None:
    """RAFTQ_SIM_SEEDS=N runs N seeds on 3 and on 5 nodes, each with every fault and with
    the membership mix, with a long fault phase
    (RAFTQ_SIM_FAULT_MS, default 10000) from RAFTQ_SIM_SEED_BASE (default 1000000)."""
    count = int(os.environ["RAFTQ_SIM_SEEDS"])
    base = int(os.environ.get("RAFTQ_SIM_SEED_BASE", "1000000"))
    fault_ms = int(os.environ.get("RAFTQ_SIM_FAULT_MS", "10000"))
    failures: list[str] = []
    for seed in range(base, base + count):
        for nodes in (3, 5):
            for mix in ("", "membership"):
                params = SimParams(seed=seed, nodes=nodes, fault_ms=fault_ms, fault_mix=mix)
                try:
                    Simulation(params).run()
                except SimulationFailure as exc:
                    failures.append(str(exc))
    assert not failures, f"{len(failures)} failing runs; first ones:\n\n" + "\n\n".join(
        failures[:5]
    )


@pytest.mark.skipif(not os.environ.get("RAFTQ_SIM_SEED"), reason="set RAFTQ_SIM_SEED to replay")
def test_replay() -> None:
    """One run with its full event trace printed (run with -s)."""
    params = SimParams(
        seed=int(os.environ["RAFTQ_SIM_SEED"]),
        nodes=int(os.environ.get("RAFTQ_SIM_NODES", "3")),
        fault_ms=int(os.environ.get("RAFTQ_SIM_FAULT_MS", str(SimParams(seed=0).fault_ms))),
        verbose=True,
        fault_mix=os.environ.get("RAFTQ_SIM_FAULT_MIX", ""),
    )
    sim = Simulation(params)
    try:
        result = sim.run()
    except SimulationFailure:
        sys.stdout.write("\n".join(sim.format_trace()) + "\n")
        raise
    sys.stdout.write("\n".join(result.trace) + "\n" + result.summary() + "\n")
