"""raft.membership_policy: which messages a node's data-dir identity forbids, and the
leader's housekeeping (record incarnations, swap in a node that lost its disk, promote
learners that caught up). Pure functions, shared by the driver and the simulation."""

from __future__ import annotations

import pytest

from raft.membership_policy import (
    drop_message,
    next_change,
    recorded_voters,
    stale_incarnation,
    unsafe_change,
)
from raft.messages import ConfState, Member, Message, MessageType
from raft.scenario import Scenario

RECORDED = ConfState(
    (1, 2, 3), (), (Member(1, incarnation="a1"), Member(2, incarnation="b1"), Member(3))
)


def msg(kind: MessageType, frm: int = 2, reject: bool = False) -> Message:
    return Message(kind, to=1, frm=frm, term=5, reject=reject)


def test_stale_means_known_on_both_sides_and_different() -> None:
    assert stale_incarnation(RECORDED, 2, "b2")
    assert not stale_incarnation(RECORDED, 2, "b1")
    assert not stale_incarnation(RECORDED, 2, "")  # not announced: not judged
    assert not stale_incarnation(RECORDED, 3, "c9")  # not recorded yet
    assert not stale_incarnation(RECORDED, 7, "x")  # not a member
    assert recorded_voters(RECORDED) == {1, 2}


@pytest.mark.parametrize(
    "kind",
    [MessageType.APP_RESP, MessageType.HEARTBEAT_RESP, MessageType.VOTE_RESP, MessageType.VOTE],
)
def test_nothing_a_node_that_lost_its_disk_answers_counts(kind: MessageType) -> None:
    assert drop_message(RECORDED, 1, "a1", msg(kind), "b2") == "stale_sender"


@pytest.mark.parametrize("kind", [MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP])
def test_what_a_leader_sends_is_taken_from_anyone(kind: MessageType) -> None:
    """A leader's authority is its term; its appends teach a lagging node the new
    configuration (one that names the sender's new incarnation)."""
    assert drop_message(RECORDED, 1, "a1", msg(kind), "b2") is None


def test_a_node_the_configuration_does_not_name_as_itself_does_not_vote() -> None:
    assert drop_message(RECORDED, 1, "a2", msg(MessageType.VOTE), "b1") == "stale_self"
    assert drop_message(RECORDED, 1, "a2", msg(MessageType.PRE_VOTE), "b1") == "stale_self"
    # it still takes a leader's appends and answers them (they count once it is swapped in)
    assert drop_message(RECORDED, 1, "a2", msg(MessageType.APP), "b1") is None


def test_once_most_voters_are_recorded_only_recorded_voters_elect() -> None:
    granted = msg(MessageType.VOTE_RESP, frm=3)
    assert drop_message(RECORDED, 1, "a1", granted, "c1") == "unbound_voter"
    refused = msg(MessageType.VOTE_RESP, frm=3, reject=True)
    assert drop_message(RECORDED, 1, "a1", refused, "c1") is None  # it may carry a term
    fresh = ConfState((1, 2, 3), (), (Member(1, incarnation="a1"),))  # a new cluster
    assert drop_message(fresh, 1, "a1", granted, "c1") is None
    assert drop_message(RECORDED, 1, "a1", granted, "") is None  # tools, tests


def test_a_change_that_keeps_a_lost_disk_among_too_many_voters_is_unsafe() -> None:
    seen = {1: "a1", 2: "b2"}  # 2 came back without its disk
    assert unsafe_change(ConfState((1, 2), (), RECORDED.members), seen) is not None
    assert unsafe_change(RECORDED, seen) is None  # 2 of 3 still hold their data
    assert unsafe_change(ConfState((1, 3), (), RECORDED.members), seen) is None


def leader_cluster() -> Scenario:
    s = Scenario()
    s.run("add-nodes 3")
    s.run("campaign 1")
    s.run("stabilize")
    return s


def test_the_leader_records_everyone_it_heard_from_in_one_change() -> None:
    s = leader_cluster()
    core = s.nodes[1].core
    planned = next_change(core, {1: "a1", 2: "b1"}, promote_lag=100)
    assert planned is not None
    why, _peer, conf = planned
    assert why == "bind_incarnation"
    assert {m.id: m.incarnation for m in conf.members} == {1: "a1", 2: "b1"}
    core.propose_conf_change(conf)
    assert next_change(core, {1: "a1", 2: "b1"}, 100) is None  # one change at a time
    s.run("stabilize")
    assert next_change(core, {1: "a1", 2: "b1"}, 100) is None  # nothing left to do


ALL_RECORDED = ConfState(
    (1, 2, 3),
    (),
    (Member(1, incarnation="a1"), Member(2, incarnation="b1"), Member(3, incarnation="c1")),
)


def test_a_new_incarnation_is_swapped_in_as_a_learner_then_promoted() -> None:
    s = leader_cluster()
    core = s.nodes[1].core
    core.propose_conf_change(ALL_RECORDED)
    s.run("stabilize")
    why, peer, conf = next_change(core, {1: "a1", 2: "b2", 3: "c1"}, 100)  # type: ignore[misc]
    assert (why, peer) == ("replace_incarnation", 2)
    assert conf.voters == (1, 3) and conf.learners == (2,)
    assert conf.member(2) == Member(2, incarnation="b2", promote=True)
    core.propose_conf_change(conf)
    s.run("stabilize")
    for _ in range(3):
        s.run("tick 1")
        s.run("stabilize")
    why, peer, conf = next_change(core, {1: "a1", 2: "b2", 3: "c1"}, 100)  # type: ignore[misc]
    assert (why, peer) == ("promote", 2) and conf.voters == (1, 2, 3)


def test_the_leader_never_replaces_itself() -> None:
    s = leader_cluster()
    core = s.nodes[1].core
    core.propose_conf_change(RECORDED)
    s.run("stabilize")
    assert next_change(core, {1: "a9", 2: "b1"}, 100) is None
