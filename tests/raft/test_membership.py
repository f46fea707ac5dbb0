"""Single-server membership changes in the core (Raft thesis §4), on real cores.

A configuration is in force as soon as it is in a node's log; one change at a time, and
only after the leader committed an entry of its own term; learners replicate but neither
vote nor count; a removed leader commits its removal, hands over and steps down; a
truncated configuration entry takes its configuration with it; restarts and compaction
keep the configuration.
"""

from __future__ import annotations

import random

import pytest

from raft.core import Config, RaftCore
from raft.errors import ConfChangeRefused
from raft.memory_storage import MemoryStorage
from raft.messages import ConfState, EntryKind, Message, MessageType, Role
from raft.scenario import Scenario


def cluster(count: int = 3) -> Scenario:
    s = Scenario()
    s.run(f"add-nodes {count}")
    s.run("campaign 1")
    s.run("stabilize")
    return s


def core(s: Scenario, node_id: int) -> RaftCore:
    c = s.nodes[node_id].core
    assert c is not None
    return c


def settle(s: Scenario, ticks: int = 30, node: int | None = None) -> None:
    for _ in range(ticks):
        for nid in [node] if node else list(s.nodes):
            if s.nodes[nid].core is not None:
                s.run(f"tick {nid}")
        s.run("stabilize")


def leader_of(s: Scenario) -> int:
    leaders = [n for n, x in s.nodes.items() if x.core and x.core.role is Role.LEADER]
    assert len(leaders) == 1, leaders
    return leaders[0]


def test_a_learner_joins_replicates_and_neither_votes_nor_counts() -> None:
    s = cluster()
    s.run("propose 1 a")
    s.run("stabilize")
    s.run("add-nodes 1 join=true")
    assert core(s, 4).voters == () and core(s, 4).learners == ()
    assert "conf-change at" in s.run("conf-change 1 voters=1,2,3 learners=4")
    s.run("stabilize")
    learner = core(s, 4)
    assert learner.learners == (4,) and learner.voters == (1, 2, 3)
    assert [e.data for e in s.nodes[4].applied if e.kind is EntryKind.NORMAL] == [b"a"]
    # It never campaigns, however long it waits.
    s.run("isolate 1")
    for _ in range(60):
        s.run("tick 4")
    assert learner.role is Role.FOLLOWER and learner.term == core(s, 1).term
    s.run("heal")
    # The three voters commit without it: cut it off and write.
    s.run("isolate 4")
    s.run("propose 1 b")
    s.run("stabilize")
    assert core(s, 1).log.committed == core(s, 2).log.committed > learner.log.committed


def test_promoting_a_learner_changes_the_quorum() -> None:
    s = cluster()
    s.run("add-nodes 1 join=true")
    s.run("conf-change 1 voters=1,2,3 learners=4")
    s.run("stabilize")
    assert core(s, 1).learners_caught_up(max_lag=0) == [4]
    s.run("conf-change 1 voters=1,2,3,4")
    s.run("stabilize")
    assert all(core(s, n).voters == (1, 2, 3, 4) for n in range(1, 5))
    # Four voters: two nodes down and nothing commits.
    s.run("partition 1 2 | 3 | 4")
    before = core(s, 1).log.committed
    s.run("propose 1 needs-three")
    s.run("stabilize")
    assert core(s, 1).log.committed == before


def test_one_change_at_a_time_one_voter_at_a_time_and_not_before_our_term_commits() -> None:
    s = cluster()
    leader = core(s, 1)
    with pytest.raises(ConfChangeRefused, match="one voter at a time"):
        leader.propose_conf_change(ConfState((1, 4, 5)))
    with pytest.raises(ConfChangeRefused, match="at least one voter"):
        leader.propose_conf_change(ConfState((), (1, 2, 3)))
    s.run("isolate 2")
    s.run("isolate 3")
    leader.propose_conf_change(ConfState((1, 2)))  # cannot commit while they are cut off
    with pytest.raises(ConfChangeRefused, match="not committed yet"):
        leader.propose_conf_change(ConfState((1, 2, 3)))
    # A new leader must commit an entry of its own term first.
    fresh = cluster()
    fresh.run("campaign 2")
    new_leader = core(fresh, 2)
    fresh.process_ready(2)
    for nid in (1, 3):  # votes in, but its no-op is not committed yet
        fresh.process_ready(nid)
    if new_leader.role is Role.LEADER:
        with pytest.raises(ConfChangeRefused, match="has not committed an entry of its term"):
            new_leader.propose_conf_change(ConfState((1, 2)))


def test_a_removed_follower_cannot_disrupt_the_cluster() -> None:
    s = cluster()
    s.run("conf-change 1 voters=1,2")
    s.run("stabilize")
    assert core(s, 1).voters == core(s, 2).voters == (1, 2)
    term = core(s, 1).term
    # The leader no longer replicates to it, so it never hears it was removed: it times
    # out and campaigns, again and again; the members drop whatever it sends.
    for _ in range(80):
        s.run("tick 3")
        s.run("stabilize")
    assert core(s, 3).role in (Role.PRE_CANDIDATE, Role.CANDIDATE)  # it keeps trying
    assert core(s, 1).role is Role.LEADER and core(s, 1).term == term
    s.run("propose 1 still")
    s.run("stabilize")
    assert core(s, 2).log.committed == core(s, 1).log.committed


def test_removing_the_leader_commits_then_hands_over() -> None:
    s = cluster()
    s.run("conf-change 1 voters=2,3")
    s.run("stabilize")
    old = core(s, 1)
    assert old.role is Role.FOLLOWER and old.voters == (2, 3)
    new = leader_of(s)  # TimeoutNow: no election timeout to wait out
    assert new in (2, 3)
    s.run(f"propose {new} after")
    s.run("stabilize")
    assert core(s, 2).log.committed == core(s, 3).log.committed
    settle(s, 40)
    assert old.role is Role.FOLLOWER  # never campaigns again


def test_a_truncated_configuration_entry_takes_its_configuration_with_it() -> None:
    s = cluster()
    s.run("isolate 1")  # the leader appends a change nobody else gets
    core(s, 1).propose_conf_change(ConfState((1, 2)))
    assert core(s, 1).voters == (1, 2)  # in force on append
    s.run("stabilize")
    settle(s, 60)  # 2 and 3 elect a leader of a new term; 1 steps down (check quorum)
    s.run("heal")
    settle(s, 20)
    assert leader_of(s) in (2, 3)
    assert core(s, 1).voters == (1, 2, 3)  # the entry was overwritten: the old one is back
    assert not any(e.kind is EntryKind.CONF_CHANGE for e in s.nodes[1].storage.all_entries())


def test_restart_and_compaction_keep_the_configuration() -> None:
    s = cluster()
    s.run("add-nodes 1 join=true")
    s.run("conf-change 1 voters=1,2,3 learners=4")
    s.run("stabilize")
    s.run("conf-change 1 voters=1,2,3,4")
    s.run("stabilize")
    storage = s.nodes[2].storage
    restarted = RaftCore(Config(id=2, peers=(1, 2, 3)), storage, random.Random(1))
    assert restarted.voters == (1, 2, 3, 4)  # from the log, not the bootstrap peers
    storage.compact(storage.last_index() + 1)  # the configuration entries are gone
    restarted = RaftCore(Config(id=2, peers=(1, 2, 3)), storage, random.Random(1))
    assert restarted.voters == (1, 2, 3, 4)  # from the compaction point's record


def test_snapshot_carries_the_configuration() -> None:
    s = cluster()
    s.run("add-nodes 1 join=true")
    s.run("conf-change 1 voters=1,2,3 learners=4")
    s.run("stabilize")
    snap_conf = core(s, 1).log.conf_at(core(s, 1).log.committed)
    assert snap_conf.learners == (4,)
    joiner = RaftCore(Config(id=5, peers=()), MemoryStorage(), random.Random(2))
    assert joiner.voters == ()
    from raft.messages import SnapshotMeta

    joiner.step(
        Message(
            MessageType.SNAP,
            to=5,
            frm=1,
            term=core(s, 1).term,
            snapshot=SnapshotMeta(core(s, 1).log.committed, core(s, 1).term, snap_conf),
        )
    )
    assert joiner.voters == (1, 2, 3) and joiner.learners == (4,)


def test_a_restarted_node_falls_back_to_the_bootstrap_configuration_when_its_only_entry_goes() -> (
    None
):
    """Found by the simulation: a node restarted with an uncommitted configuration entry
    in its log, which a new leader then overwrites, must fall back to the bootstrap member
    list, not to no configuration at all (it would drop every message after that)."""
    from raft.messages import Entry, HardState, encode_conf

    storage = MemoryStorage(
        hard_state=HardState(term=1, vote=1, commit=1),
        entries=[
            Entry(1, 1, EntryKind.NOOP),
            Entry(2, 1, EntryKind.CONF_CHANGE, encode_conf(ConfState((1, 2)))),
        ],
    )
    restarted = RaftCore(Config(id=1, peers=(1, 2, 3)), storage, random.Random(1))
    assert restarted.voters == (1, 2)
    restarted.step(
        Message(
            MessageType.APP,
            to=1,
            frm=2,
            term=2,
            index=1,
            log_term=1,
            entries=(Entry(2, 2, EntryKind.NOOP),),
            commit=1,
        )
    )
    assert restarted.voters == (1, 2, 3)


def test_a_change_that_leaves_recorded_voters_a_minority_is_refused() -> None:
    """Once a majority of voters have a recorded data dir only their votes elect; a
    change that leaves them a minority (here: removing a recorded voter while node 3 was
    never heard from) is refused, so no voter nobody knows can decide an election."""
    from raft.messages import Member

    s = cluster()
    lead = core(s, 1)
    recorded = ConfState((1, 2, 3), (), (Member(1, incarnation="a"), Member(2, incarnation="b")))
    lead.propose_conf_change(recorded)
    s.run("stabilize")
    with pytest.raises(ConfChangeRefused, match="never heard from: \\[3\\]"):
        lead.propose_conf_change(ConfState((1, 3), (), (Member(1, incarnation="a"),)))
    # removing the unrecorded one is fine: both remaining voters are recorded
    lead.propose_conf_change(ConfState((1, 2), (), recorded.members))
    s.run("stabilize")
    assert lead.voters == (1, 2)


def test_a_learner_that_acknowledged_nothing_is_never_caught_up() -> None:
    s = cluster()
    s.run("add-nodes 1 join=true")
    s.run("isolate 4")
    s.run("conf-change 1 voters=1,2,3 learners=4")
    s.run("stabilize")
    assert core(s, 1).learners_caught_up(max_lag=1000) == []  # short log, no answer yet
    s.run("heal")
    settle(s, 5, node=1)
    assert core(s, 1).learners_caught_up(max_lag=0) == [4]
