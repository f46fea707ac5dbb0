"""A small seeded fuzz of the core: drops, reorders, duplicates, partitions, crashes.

The seeded simulation (raft/simulation.py) is the thorough version; this one keeps the
core's own test suite honest on its own. Any failing seed is in the test id.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque

import pytest

from raft.errors import ProposalDropped
from raft.messages import Entry, Ready, Role
from raft.scenario import Scenario

ROUNDS = 300


class CommittedLog:
    """Every entry any node ever applied, by index: a later one must never differ."""

    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self._checked: dict[int, int] = {}  # node id -> applied entries already checked

    def check(self, s: Scenario, lines: list[str]) -> None:
        for line in lines:
            assert "VIOLATION" not in line, line
        for node in s.nodes.values():
            start = self._checked.get(node.id, 0)
            if start > len(node.applied):  # crashed: applied state starts over
                start = 0
            for e in node.applied[start:]:
                assert self.entries.setdefault(e.index, e) == e, f"node {node.id} applied {e}"
            self._checked[node.id] = len(node.applied)


def _run(seed: int, count: int) -> Scenario:
    rng = random.Random(seed)
    s = Scenario()
    options = rng.choice(
        [
            "",
            "pre_vote=false",
            "check_quorum=false",
            "pre_vote=false check_quorum=false",
            "max_msg_bytes=60 max_inflight_msgs=2",
        ]
    )
    s.run(f"add-nodes {count} seed={seed} {options}")
    committed = CommittedLog()
    ids = list(s.nodes)

    def process_all() -> None:
        for node_id in ids:
            committed.check(s, s.process_ready(node_id))

    for step in range(ROUNDS):
        for node in s.nodes.values():
            if node.core is not None and rng.random() < 0.9:  # a little clock skew
                node.core.tick()
        process_all()
        batch, s.inflight = s.inflight, []
        rng.shuffle(batch)  # reorder
        for m in batch:
            fate = rng.random()
            if fate < 0.05:
                continue  # drop
            if fate < 0.25:
                s.inflight.append(m)  # delay to a later round
                continue
            if fate < 0.28:
                s.inflight.append(m)  # duplicate
            committed.check(s, s.deliver(m))
        process_all()
        for node in s.nodes.values():
            if node.core is not None and node.core.role is Role.LEADER and rng.random() < 0.5:
                try:
                    node.core.propose(f"s{seed}-{step}".encode())
                except ProposalDropped:
                    pass  # leadership transfer in progress
        fault = rng.random()
        victim = rng.choice(ids)
        if fault < 0.02:
            s.run(f"isolate {victim}")
        elif fault < 0.05:
            s.run("heal")
        elif fault < 0.06 and s.nodes[victim].core is not None:
            s.run(f"crash {victim}")
        elif fault < 0.065 and s.nodes[victim].core is not None:
            # Crash mid-Ready: leader messages went out, the local fsync never happened.
            rd = s.nodes[victim].core.ready()
            s.inflight.extend(rd.messages)
            s.run(f"crash {victim}")
        elif fault < 0.07:
            core = s.nodes[victim].core
            if core is not None and core.role is Role.LEADER:
                core.transfer_leader(rng.choice(ids))
        elif fault < 0.15 and s.nodes[victim].core is None:
            s.run(f"restart {victim}")
    # Liveness: heal, restart everyone and let time pass; the cluster converges.
    s.run("heal")
    for node_id in ids:
        if s.nodes[node_id].core is None:
            s.run(f"restart {node_id}")
    for _ in range(200):
        for node_id in ids:
            s.run(f"tick {node_id} 1")
        s.run("stabilize")
        leaders = [n for n in s.nodes.values() if n.core.role is Role.LEADER]
        if len(leaders) == 1:
            lead = leaders[0].core
            if all(n.core.log.committed == lead.log.last_index() for n in s.nodes.values()):
                break
    else:
        raise AssertionError(f"seed {seed}: cluster did not converge")
    committed.check(s, [])
    # Log matching: identical (index, term) means identical entries and prefixes.
    logs = [n.storage.all_entries() for n in s.nodes.values()]
    assert all(log == logs[0] for log in logs)
    return s


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_three_nodes(seed: int) -> None:
    _run(seed, 3)


@pytest.mark.parametrize("seed", range(100, 104))
def test_fuzz_five_nodes(seed: int) -> None:
    _run(seed, 5)


def _run_async_persist(seed: int, count: int) -> None:
    """Like the driver with several Readies in flight: steps happen between ready() and
    advance(), writes complete later (in order), and a crash loses unfinished writes."""
    rng = random.Random(seed)
    s = Scenario()
    s.run(f"add-nodes {count} seed={seed}")
    ids = list(s.nodes)
    pending: dict[int, deque[Ready]] = {i: deque() for i in ids}
    committed: dict[int, Entry] = {}
    leaders: dict[int, int] = {}

    def issue(node_id: int) -> None:
        core = s.nodes[node_id].core
        if core is None or len(pending[node_id]) >= 3 or not core.has_ready():
            return
        rd = core.ready()
        for m in rd.messages + rd.messages_after_persist:
            assert m.to != node_id
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            assert leaders.setdefault(core.term, node_id) == node_id, "two leaders in a term"
        s.inflight.extend(rd.messages)
        pending[node_id].append(rd)

    def complete(node_id: int) -> None:
        node = s.nodes[node_id]
        if node.core is None or not pending[node_id]:
            return
        rd = pending[node_id].popleft()
        node.storage.save(rd.hard_state, rd.entries)
        s.inflight.extend(rd.messages_after_persist)
        for e in rd.committed_entries:
            assert node.storage.term(e.index) == e.term, "applied an entry not durable"
            assert committed.setdefault(e.index, e) == e, f"node {node_id} applied {e}"
        node.core.advance(rd)

    for _ in range(ROUNDS):
        for node_id in ids:
            core = s.nodes[node_id].core
            if core is not None and rng.random() < 0.9:
                core.tick()
            issue(node_id)
        batch, s.inflight = s.inflight, []
        rng.shuffle(batch)
        for m in batch:
            fate = rng.random()
            if fate < 0.05:
                continue
            if fate < 0.25:
                s.inflight.append(m)
                continue
            s.deliver(m)
            if rng.random() < 0.3:
                issue(m.to)
            if rng.random() < 0.3:
                complete(rng.choice(ids))
        for node_id in ids:
            while pending[node_id] and rng.random() < 0.7:
                complete(node_id)
            issue(node_id)
            core = s.nodes[node_id].core
            if core is not None and core.role is Role.LEADER and rng.random() < 0.6:
                with contextlib.suppress(ProposalDropped):
                    core.propose(b"a%d" % rng.randrange(1 << 30))
        fault = rng.random()
        victim = rng.choice(ids)
        if fault < 0.02:
            s.run(f"isolate {victim}")
        elif fault < 0.05:
            s.run("heal")
        elif fault < 0.065 and s.nodes[victim].core is not None:
            pending[victim].clear()  # unfinished writes are lost
            s.run(f"crash {victim}")
        elif fault < 0.15 and s.nodes[victim].core is None:
            s.run(f"restart {victim}")
            pending[victim].clear()
    # Converge: heal, restart, drain everything.
    s.run("heal")
    for node_id in ids:
        if s.nodes[node_id].core is None:
            s.run(f"restart {node_id}")
            pending[node_id].clear()
    for _ in range(300):
        for node_id in ids:
            s.nodes[node_id].core.tick()
        for _ in range(20):
            for node_id in ids:
                while pending[node_id]:
                    complete(node_id)
                issue(node_id)
                while pending[node_id]:
                    complete(node_id)
            batch, s.inflight = s.inflight, []
            for m in batch:
                s.deliver(m)
            if not s.inflight and not any(n.core.has_ready() for n in s.nodes.values()):
                break
        lead = [n.core for n in s.nodes.values() if n.core.role is Role.LEADER]
        if len(lead) == 1 and all(
            n.core.log.committed == lead[0].log.last_index() for n in s.nodes.values()
        ):
            break
    else:
        raise AssertionError(f"seed {seed}: cluster did not converge")
    logs = [n.storage.all_entries() for n in s.nodes.values()]
    assert all(log == logs[0] for log in logs)
    for e in logs[0]:
        if e.index in committed:
            assert committed[e.index] == e


@pytest.mark.parametrize("seed", range(200, 206))
def test_fuzz_async_persist(seed: int) -> None:
    _run_async_persist(seed, 3 if seed % 2 else 5)
