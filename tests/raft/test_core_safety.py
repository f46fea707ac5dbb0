"""The core's safety checks under the races and lost disks the audit found.

Each test drives `RaftCore` over `MemoryStorage` by hand, with storage writes completed
when the test says: orders the core must survive whatever its driver does.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from raft.core import Config, RaftCore
from raft.errors import SafetyViolation
from raft.memory_storage import MemoryStorage
from raft.messages import Entry, HardState, Message, MessageType, Ready
from raft.scenario import Scenario

PEERS = (1, 2, 3, 4, 5)


def follower(node_id: int = 2, entries: int = 3, commit: int = 3, term: int = 1) -> RaftCore:
    storage = MemoryStorage(
        hard_state=HardState(term=term, commit=commit),
        entries=[Entry(i, 1, data=b"e%d" % i) for i in range(1, entries + 1)],
    )
    return RaftCore(Config(id=node_id, peers=PEERS), storage, random.Random(1))


def app(frm: int, term: int, entries: list[Entry], commit: int, prev: int = 3) -> Message:
    prev_term = 1
    return Message(
        MessageType.APP,
        to=2,
        frm=frm,
        term=term,
        index=prev,
        log_term=prev_term,
        entries=tuple(entries),
        commit=commit,
    )


def persist(core: RaftCore, rd: Ready) -> None:
    """What the storage step does for one Ready (write), without telling the core yet."""
    core.log.storage.save(rd.hard_state, rd.entries)  # type: ignore[attr-defined]


def notify_persisted(core: RaftCore, rd: Ready) -> None:
    """The driver's PERSISTED handling: advance the stable half only."""
    core.advance(replace(rd, committed_entries=()))


def test_a_late_persist_notice_never_applies_an_overwritten_entry() -> None:
    """The ABA race: 4@t2, then 4@t3, then 4@t2 again, queued; the first write's notice
    arrives after the second write reached the disk. Applying now would read 4@t3."""
    core = follower()
    core.step(app(1, 2, [Entry(4, 2, data=b"A")], commit=3))  # leader A, term 2
    w1 = core.ready()
    core.step(app(3, 3, [Entry(4, 3, data=b"C")], commit=3))  # leader C, term 3, overwrites
    w2 = core.ready()
    core.step(app(1, 4, [Entry(4, 2, data=b"A")], commit=4))  # A again, term 4, commit 4
    w3 = core.ready()
    assert [(e.index, e.term) for e in w1.entries + w2.entries + w3.entries] == [
        (4, 2),
        (4, 3),
        (4, 2),
    ]
    persist(core, w1)
    persist(core, w2)  # the disk now holds C's 4@t3, which was never committed
    notify_persisted(core, w1)
    rd = core.ready()
    assert rd.committed_entries == ()  # nothing at 4 is known durable yet
    assert core.log.persisted_last_index() == 3
    notify_persisted(core, w2)
    assert core.ready().committed_entries == ()
    persist(core, w3)
    notify_persisted(core, w3)
    applied = core.ready().committed_entries
    assert [(e.index, e.term, e.data) for e in applied] == [(4, 2, b"A")]


def test_an_honest_lagging_follower_never_trips_the_heartbeat_check() -> None:
    """Cut off while the others commit, then healed: the leader's heartbeats carry
    min(match, commit) for it, so it commits only what it holds and then catches up."""
    s = Scenario()
    s.run("add-nodes 3")
    s.run("campaign 1")
    s.run("stabilize")
    s.run("isolate 3")
    for i in range(5):
        s.run(f"propose 1 v{i}")
    s.run("stabilize")
    s.run("heal")
    for _ in range(6):  # heartbeats first (commit = its old match), then the catch-up
        s.run("tick 1")
        out = s.run("stabilize")
        assert "VIOLATION" not in out
    lagging = s.nodes[3].core
    assert lagging is not None
    assert lagging.log.committed == s.nodes[1].core.log.committed == 6  # the no-op and 5


def test_heartbeat_commit_beyond_the_log_stops_the_node() -> None:
    """A data dir rolled back to an old copy: the leader says 5 is committed for us."""
    core = follower(entries=3, commit=3)
    with pytest.raises(SafetyViolation, match="out of range"):
        core.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=2, commit=5, log_term=2))
    assert core.log.committed == 3


def test_a_brand_new_log_waits_for_entries_instead_of_stopping() -> None:
    """A wiped data dir started again under its id (a new incarnation): until the leader
    learns so, it heartbeats the old match. An empty log contradicts nothing: no commit,
    no stop, an answer so the leader keeps in touch. A log that lost only its tail still
    stops (above)."""
    core = follower(entries=0, commit=0, term=0)
    core.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=2, commit=45, log_term=2))
    assert core.log.committed == 0 and core.term == 2 and core.lead == 1
    rd = core.ready()
    (resp,) = rd.messages_after_persist
    assert resp.type is MessageType.HEARTBEAT_RESP and resp.to == 1
    assert rd.committed_entries == ()


def test_heartbeat_commit_of_an_entry_we_hold_differently_stops_the_node() -> None:
    """A rolled-back copy that is long enough: our entry 3 is not the committed one."""
    core = follower(entries=3, commit=1)
    with pytest.raises(SafetyViolation, match="differs"):
        core.step(Message(MessageType.HEARTBEAT, to=2, frm=1, term=3, commit=3, log_term=2))
    assert core.log.committed == 1


def test_an_append_that_would_overwrite_a_committed_entry_stops_the_node() -> None:
    """A forged (or corrupt) APP below our commit index that disagrees with what we
    committed: etcd would ignore it silently; it proves a broken log, so it is fatal."""
    core = follower(entries=3, commit=3)
    forged = app(1, 2, [Entry(3, 2, data=b"evil"), Entry(4, 2)], commit=4, prev=2)
    with pytest.raises(SafetyViolation, match="committed term 1"):
        core.step(forged)
    assert [e.data for e in core.log.storage.entries(1, 4)] == [b"e1", b"e2", b"e3"]


def test_a_late_duplicate_append_below_the_commit_index_is_answered_not_fatal() -> None:
    core = follower(entries=3, commit=3)
    late = app(1, 2, [Entry(3, 1, data=b"e3"), Entry(4, 2)], commit=3, prev=2)
    core.step(late)
    [reply] = core.ready().messages_after_persist
    assert reply.type is MessageType.APP_RESP and not reply.reject and reply.index == 3
