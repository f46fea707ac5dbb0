"""One test per Raft rule the core must follow, on real cores over MemoryStorage."""

from __future__ import annotations

import random

import pytest

from raft.core import CAMPAIGN_TRANSFER, Config, RaftCore
from raft.errors import NotLeader, ProposalDropped
from raft.memory_storage import MemoryStorage
from raft.messages import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Role,
)
from raft.scenario import Scenario


def elected_cluster(count: int = 3, options: str = "") -> Scenario:
    s = Scenario()
    s.run(f"add-nodes {count} {options}")
    s.run("campaign 1")
    s.run("stabilize")
    assert s.nodes[1].core is not None and s.nodes[1].core.role is Role.LEADER
    return s


def core_of(s: Scenario, node_id: int) -> RaftCore:
    core = s.nodes[node_id].core
    assert core is not None
    return core


def fresh_core(node_id: int = 1, peers: tuple[int, ...] = (1, 2, 3), **kw: object) -> RaftCore:
    cfg = Config(id=node_id, peers=peers, **kw)  # type: ignore[arg-type]
    return RaftCore(cfg, MemoryStorage(), random.Random(7))


# ------------------------------------------------------------------ proposals


def test_propose_on_follower_raises_not_leader_with_leader_id() -> None:
    s = elected_cluster()
    with pytest.raises(NotLeader) as info:
        core_of(s, 2).propose(b"x")
    assert info.value.leader_id == 1


def test_propose_without_known_leader_raises_not_leader_none() -> None:
    core = fresh_core()
    with pytest.raises(NotLeader) as info:
        core.propose(b"x")
    assert info.value.leader_id is None
    with pytest.raises(NotLeader):
        core.read_index(b"r")
    with pytest.raises(NotLeader):
        core.transfer_leader(2)


def test_propose_refused_during_transfer() -> None:
    s = elected_cluster()
    s.run("isolate 2")
    core_of(s, 1).transfer_leader(2)
    with pytest.raises(ProposalDropped):
        core_of(s, 1).propose(b"x")


def test_bad_requests_get_clear_errors_and_change_nothing() -> None:
    s = elected_cluster()
    leader = core_of(s, 1)
    before = leader.status()
    with pytest.raises(TypeError):
        leader.propose("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        leader.read_index(b"")
    with pytest.raises(ValueError):
        leader.transfer_leader(9)
    assert leader.status() == before
    assert not leader.has_ready()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id": 0},
        {"peers": (1, 1)},
        {"election_ticks": 1, "heartbeat_ticks": 1},
        {"heartbeat_ticks": 0},
        {"max_msg_bytes": 0},
        {"max_inflight_msgs": 0},
    ],
)
def test_invalid_config_rejected(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"id": 1, "peers": (1, 2, 3)}
    base.update(kwargs)
    with pytest.raises(ValueError):
        RaftCore(Config(**base), MemoryStorage(), random.Random(1))  # type: ignore[arg-type]


# ------------------------------------------------------------------ commit rule


def test_figure8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """Raft §5.4.2: entry 2 (term 2) replicated on a majority must not commit on its own."""
    s = Scenario()
    s.run("add-nodes 3 max_msg_bytes=1")  # one entry per APP: acks arrive index by index
    for n in (1, 2, 3):
        s.run(f"crash {n}")
    s.run("write-log 1 1 2")
    s.run("write-log 2 1")
    s.run("write-log 3 1")
    for n in (1, 2, 3):
        s.run(f"restart {n}")
    s.run("isolate 3")
    s.run("campaign 1")
    leader = core_of(s, 1)
    commits_seen: set[int] = set()
    exercised = False
    for _ in range(50):
        s.run("process-ready")
        s.run("deliver-msgs")
        if leader.role is Role.LEADER:
            commits_seen.add(leader.log.committed)
            st = leader.status()
            if st.progress[2][0] == 2 and st.progress[1][0] >= 2:
                # A majority (1 and 2) holds entry 2 of term 2, yet it is not committed.
                assert leader.log.committed == 0
                exercised = True
    assert exercised
    assert 2 not in commits_seen
    assert leader.log.committed == 3  # committed together with the new term's NOOP
    assert leader.term == 3
    assert leader.log.term(3) == 3


def test_leader_counts_itself_only_after_persisting() -> None:
    s = elected_cluster()
    leader = core_of(s, 1)
    index, _ = leader.propose(b"x")
    rd = leader.ready()
    assert [e.index for e in rd.entries] == [index]
    # Both followers ack before the leader's own fsync: 2 of 3 is a quorum anyway.
    for follower in (2, 3):
        leader.step(Message(MessageType.APP_RESP, to=1, frm=follower, term=1, index=index))
    assert leader.status().progress[1][0] == index - 1  # own match waits for advance()
    assert leader.log.committed == index  # followers alone were a quorum
    # But with only one follower ack, the leader's own persist is needed:
    s.nodes[1].storage.save(rd.hard_state, rd.entries)
    leader.advance(rd)
    index2, _ = leader.propose(b"y")
    rd2 = leader.ready()
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=1, index=index2))
    assert leader.log.committed == index
    s.nodes[1].storage.save(rd2.hard_state, rd2.entries)
    leader.advance(rd2)
    assert leader.status().progress[1][0] == index2
    assert leader.log.committed == index2


# ------------------------------------------------------------------ Ready semantics


def test_ready_routes_messages_by_durability() -> None:
    core = fresh_core(pre_vote=False)
    core.campaign()
    rd = core.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert rd.messages == ()
    assert {m.type for m in rd.messages_after_persist} == {MessageType.VOTE}
    assert {m.to for m in rd.messages_after_persist} == {2, 3}
    assert rd.soft_state is not None and rd.soft_state.role is Role.CANDIDATE
    core.advance(rd)
    assert not core.has_ready()
    core.step(Message(MessageType.VOTE_RESP, to=1, frm=2, term=1))
    rd = core.ready()
    assert rd.soft_state is not None and rd.soft_state.role is Role.LEADER
    assert rd.hard_state is None  # term/vote/commit unchanged: nothing to persist
    assert [e.kind for e in rd.entries] == [EntryKind.NOOP]
    assert {m.type for m in rd.messages} == {MessageType.APP}
    assert rd.messages_after_persist == ()


def test_follower_hands_out_committed_entries_only_once_durable() -> None:
    core = fresh_core(node_id=2)
    entries = (Entry(1, 1, EntryKind.NOOP), Entry(2, 1, EntryKind.NORMAL, b"a"))
    core.step(Message(MessageType.APP, to=2, frm=1, term=1, entries=entries, commit=2))
    rd = core.ready()
    assert rd.entries == entries
    assert rd.hard_state == HardState(term=1, vote=0, commit=2)
    assert rd.committed_entries == ()  # not yet in stable storage
    assert [m.type for m in rd.messages_after_persist] == [MessageType.APP_RESP]
    assert rd.messages == ()
    assert rd.soft_state is not None and rd.soft_state.leader_id == 1
    core.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    core.advance(rd)
    rd = core.ready()
    assert rd.committed_entries == entries
    assert rd.soft_state is None and rd.hard_state is None
    core.advance(rd)
    assert not core.has_ready()
    assert core.status().applied == 2


def test_restart_resumes_from_durable_state() -> None:
    entries = [Entry(i, 2 if i > 1 else 1, EntryKind.NORMAL, b"e%d" % i) for i in range(1, 5)]
    storage = MemoryStorage(HardState(term=5, vote=2, commit=3), entries=entries)
    core = RaftCore(Config(id=1, peers=(1, 2, 3), applied=1), storage, random.Random(3))
    st = core.status()
    assert (st.term, st.vote, st.role, st.commit, st.applied) == (5, 2, Role.FOLLOWER, 3, 1)
    rd = core.ready()
    assert rd.hard_state is None and rd.soft_state is None and rd.entries == ()
    assert [e.index for e in rd.committed_entries] == [2, 3]
    core.advance(rd)
    # It still refuses a second vote in term 5 for someone else.
    core.step(Message(MessageType.VOTE, to=1, frm=3, term=5, index=9, log_term=5))
    rd = core.ready()
    assert [(m.type, m.reject) for m in rd.messages_after_persist] == [
        (MessageType.VOTE_RESP, True)
    ]


def test_conf_state_voters_override_config_peers() -> None:
    storage = MemoryStorage(conf_state=ConfState(voters=(1,)))
    core = RaftCore(Config(id=1, peers=(1, 2, 3)), storage, random.Random(1))
    core.campaign()
    assert core.role is Role.LEADER  # single voter per the durable membership


# ------------------------------------------------------------------ flow control


def _apps_in_flight(s: Scenario, to: int) -> list[Message]:
    return [m for m in s.inflight if m.type is MessageType.APP and m.to == to]


def test_inflight_window_bounded_by_message_count() -> None:
    s = elected_cluster(options="max_inflight_msgs=2")
    for i in range(5):
        s.run(f"propose 1 p{i}")
    assert len(_apps_in_flight(s, 2)) == 2
    assert core_of(s, 1).status().progress[2] == (1, 4, "replicate")
    s.run("stabilize")  # acks open the window again until everything is replicated
    assert core_of(s, 2).log.committed == 6
    assert core_of(s, 1).status().progress[2] == (6, 7, "replicate")


def test_inflight_window_bounded_by_bytes() -> None:
    s = elected_cluster(options="max_inflight_bytes=200")
    for i in range(5):
        s.run(f"propose 1 {'x' * 100}{i}")  # 125 bytes each with overhead
    assert len(_apps_in_flight(s, 3)) == 2  # 250 >= 200 after two
    s.run("stabilize")
    assert core_of(s, 3).log.committed == 6


def test_heartbeat_response_unsticks_a_window_whose_messages_were_lost() -> None:
    s = elected_cluster(options="max_inflight_msgs=1")
    s.run("propose 1 a")
    s.run("drop-msgs 2")
    s.run("propose 1 b")
    assert _apps_in_flight(s, 2) == []  # window full of a lost message
    s.run("tick 1 1")
    s.run("stabilize")
    assert core_of(s, 2).log.committed == 3


def test_max_msg_bytes_limits_each_append_but_sends_at_least_one_entry() -> None:
    s = elected_cluster(options="max_msg_bytes=300")
    s.run("isolate 2")
    for i in range(6):
        s.run(f"propose 1 {'y' * 100}{i}")
    s.run("propose 1 " + "z" * 1000)
    s.run("stabilize")
    s.run("heal")
    s.delivered.clear()
    s.run("tick 1 1")
    s.run("stabilize")
    apps = [m for m in s.delivered if m.type is MessageType.APP and m.to == 2 and m.entries]
    assert apps
    for m in apps:
        assert len(m.entries) == 1 or sum(e.size() for e in m.entries) <= 300
    assert any(len(m.entries) == 2 for m in apps)
    assert any(len(m.entries[0].data) == 1000 for m in apps)
    assert core_of(s, 2).log.committed == core_of(s, 1).log.committed == 8


def test_heartbeat_commit_is_capped_by_follower_match() -> None:
    s = elected_cluster()
    s.run("isolate 3")
    s.run("propose 1 a")
    s.run("stabilize")
    s.run("heal")
    s.run("tick 1 1")
    beats = {m.to: m.commit for m in s.inflight if m.type is MessageType.HEARTBEAT}
    assert beats == {2: 2, 3: 1}


# ------------------------------------------------------------------ message hygiene


def test_no_message_is_ever_addressed_to_self() -> None:
    # The scenario network raises AssertionError on any self-addressed message.
    rng = random.Random(11)
    s = elected_cluster(count=5)
    for step in range(300):
        op = rng.random()
        node = rng.randint(1, 5)
        if op < 0.5:
            s.run(f"tick {node} 1")
        elif op < 0.7:
            leader = next((n for n in s.nodes.values() if n.core.role is Role.LEADER), None)
            if leader is not None:
                s.run(f"propose {leader.id} v{step}")
        elif op < 0.75:
            s.run(f"isolate {node}")
        elif op < 0.8:
            s.run("heal")
        else:
            s.run("stabilize")
    single = fresh_core(peers=(1,))
    single.campaign()
    single.propose(b"x")
    rd = single.ready()
    assert rd.messages == () and rd.messages_after_persist == ()


def _assert_ignored(core: RaftCore, m: Message) -> None:
    before = core.status()
    core.step(m)
    assert core.status() == before
    rd = core.ready()
    assert rd.messages == () and rd.messages_after_persist == ()


def test_messages_for_others_from_strangers_or_self_are_dropped() -> None:
    core = fresh_core()
    core.ready()
    _assert_ignored(core, Message(MessageType.APP, to=2, frm=3, term=9))
    _assert_ignored(core, Message(MessageType.VOTE_RESP, to=1, frm=9, term=9))
    _assert_ignored(core, Message(MessageType.APP_RESP, to=1, frm=9, term=9))
    _assert_ignored(core, Message(MessageType.APP_RESP, to=1, frm=1, term=9))
    _assert_ignored(core, Message(MessageType.SNAP, to=1, frm=2, term=9))
    _assert_ignored(core, Message(MessageType.HEARTBEAT, to=1, frm=2, term=0))


def test_a_vote_request_from_outside_our_configuration_is_answered() -> None:
    """Our configuration may be older than the candidate's (it was added, or we lag an
    uncommitted change): the candidate counts by its own, so we answer like etcd does.
    Removed nodes are kept from disrupting by pre-vote and the leader lease instead."""
    core = fresh_core()
    core.ready()
    core.step(Message(MessageType.VOTE, to=1, frm=9, term=9, index=0, log_term=0))
    rd = core.ready()
    (resp,) = rd.messages_after_persist
    assert resp.type is MessageType.VOTE_RESP and resp.to == 9 and not resp.reject
    assert core.term == 9 and core.vote == 9


def test_malformed_append_is_dropped_without_term_change() -> None:
    core = fresh_core()
    core.ready()
    gap = (Entry(1, 1), Entry(3, 1))
    _assert_ignored(core, Message(MessageType.APP, to=1, frm=2, term=1, entries=gap))
    future = (Entry(1, 5),)
    _assert_ignored(core, Message(MessageType.APP, to=1, frm=2, term=1, entries=future))
    vote_from_future = Message(MessageType.VOTE, to=1, frm=2, term=2, index=5, log_term=7)
    _assert_ignored(core, vote_from_future)
    misplaced = (Entry(4, 1),)
    _assert_ignored(core, Message(MessageType.APP, to=1, frm=2, term=1, entries=misplaced))


def test_vote_request_in_leader_lease_is_ignored_without_term_change() -> None:
    s = elected_cluster()
    follower = core_of(s, 2)
    vote = Message(MessageType.VOTE, to=2, frm=3, term=5, index=1, log_term=1)
    _assert_ignored(follower, vote)
    # ...unless it is a leadership-transfer campaign.
    follower.step(
        Message(
            MessageType.VOTE, to=2, frm=3, term=5, index=2, log_term=1, context=CAMPAIGN_TRANSFER
        )
    )
    assert follower.term == 5 and follower.vote == 3


def test_higher_term_response_always_moves_term() -> None:
    s = elected_cluster()
    leader = core_of(s, 1)
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=4, index=0))
    assert leader.term == 4 and leader.role is Role.FOLLOWER and leader.lead == 0


def test_stale_append_gets_our_term_back_without_term_change() -> None:
    s = elected_cluster()
    follower = core_of(s, 2)
    follower.ready()
    follower.step(Message(MessageType.VOTE_RESP, to=2, frm=3, term=5))  # bumps to 5
    assert follower.term == 5
    follower.ready()
    follower.step(Message(MessageType.APP, to=2, frm=1, term=1, index=1, log_term=1))
    rd = follower.ready()
    assert follower.term == 5
    assert [(m.type, m.to, m.term) for m in rd.messages_after_persist] == [
        (MessageType.APP_RESP, 1, 5)
    ]


# ------------------------------------------------------------------ timing


def test_election_timeout_is_randomized_from_injected_rng() -> None:
    def timeouts(seed: int) -> list[int]:
        cfg = Config(id=1, peers=(1, 2, 3), election_ticks=10, pre_vote=False)
        core = RaftCore(cfg, MemoryStorage(), random.Random(seed))
        seen = []
        for _ in range(60):
            seen.append(core.randomized_election_timeout)
            core.campaign()  # each candidacy resets the timer
        return seen

    a = timeouts(1)
    assert all(10 <= t < 20 for t in a)
    assert len(set(a)) > 5
    assert timeouts(1) == a
    assert timeouts(2) != a


def test_follower_campaigns_only_after_its_randomized_timeout() -> None:
    core = fresh_core(pre_vote=False)
    timeout = core.randomized_election_timeout
    for _ in range(timeout - 1):
        core.tick()
    assert core.role is Role.FOLLOWER
    core.tick()
    assert core.role is Role.CANDIDATE and core.term == 1


def test_pre_candidate_keeps_term_and_vote() -> None:
    storage = MemoryStorage(HardState(term=3, vote=2, commit=0))
    core = RaftCore(Config(id=1, peers=(1, 2, 3)), storage, random.Random(5))
    core.campaign()
    assert core.role is Role.PRE_CANDIDATE
    rd = core.ready()
    assert rd.hard_state is None
    assert {(m.type, m.term) for m in rd.messages_after_persist} == {(MessageType.PRE_VOTE, 4)}
    # A rejection at our own term sends us back to follower without a term change.
    core.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=2, term=3, reject=True))
    core.step(Message(MessageType.PRE_VOTE_RESP, to=1, frm=3, term=3, reject=True))
    assert core.role is Role.FOLLOWER and core.term == 3 and core.vote == 2


def test_transfer_target_campaigns_immediately_with_transfer_context() -> None:
    core = fresh_core(node_id=2)
    core.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=1))
    core.ready()
    core.step(Message(MessageType.TIMEOUT_NOW, to=2, frm=1, term=1))
    assert core.role is Role.CANDIDATE and core.term == 2
    rd = core.ready()
    votes = [m for m in rd.messages_after_persist if m.type is MessageType.VOTE]
    assert {m.to for m in votes} == {1, 3}
    assert all(m.context == CAMPAIGN_TRANSFER for m in votes)


def test_pre_vote_lease_applies_even_without_check_quorum() -> None:
    s = elected_cluster(options="check_quorum=false")
    follower = core_of(s, 2)
    pre_vote = Message(MessageType.PRE_VOTE, to=2, frm=3, term=2, index=5, log_term=1)
    _assert_ignored(follower, pre_vote)  # heard from leader 1 within the timeout
    for _ in range(10):  # one election timeout of silence ends the lease
        follower.tick()
    follower.ready()
    follower.step(pre_vote)
    rd = follower.ready()
    assert [(m.type, m.reject, m.term) for m in rd.messages_after_persist] == [
        (MessageType.PRE_VOTE_RESP, False, 2)
    ]
    assert follower.term == 1  # granting a pre-vote never changes our term
    # Without check-quorum there is no lease on real votes: Raft must follow the term.
    vote = Message(MessageType.VOTE, to=2, frm=3, term=3, index=5, log_term=1)
    follower.step(vote)
    assert follower.term == 3 and follower.vote == 3


def test_single_voter_read_index_is_immediate() -> None:
    core = fresh_core(peers=(1,))
    core.campaign()
    assert core.role is Role.LEADER and core.log.committed == 0  # NOOP not yet durable
    core.read_index(b"r1")
    rd = core.ready()
    assert [(r.index, r.context) for r in rd.read_states] == [(0, b"r1")]


def test_read_index_waits_for_current_term_commit_with_peers() -> None:
    core = fresh_core(pre_vote=False)
    core.campaign()
    core.step(Message(MessageType.VOTE_RESP, to=1, frm=2, term=1))
    assert core.role is Role.LEADER
    core.read_index(b"r1")
    rd = core.ready()
    assert rd.read_states == ()
    assert not [m for m in rd.messages if m.type is MessageType.HEARTBEAT]  # not yet asked
    core.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]
    core.advance(rd)
    core.step(Message(MessageType.APP_RESP, to=1, frm=2, term=1, index=1))  # NOOP commits
    rd = core.ready()
    beats = [m for m in rd.messages if m.type is MessageType.HEARTBEAT]
    assert {m.context for m in beats} == {b"r1"}
    core.step(Message(MessageType.HEARTBEAT_RESP, to=1, frm=3, term=1, context=b"r1"))
    assert [(r.index, r.context) for r in core.ready().read_states] == [(1, b"r1")]


def test_an_accept_at_the_match_index_resumes_replication_from_probe() -> None:
    """etcd: MaybeUpdate(index) || (Match == index && StateProbe) -> BecomeReplicate."""
    from raft.progress import ProgressState

    s = elected_cluster()
    leader = core_of(s, 1)
    pr = leader.progress[2]
    match = pr.match_index
    assert match > 0 and pr.state is ProgressState.REPLICATE
    pr.become_probe()
    pr.probe_sent = True  # a probe is out; its answer says what we already know
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=leader.term, index=match))
    assert pr.state is ProgressState.REPLICATE and not pr.is_paused()
