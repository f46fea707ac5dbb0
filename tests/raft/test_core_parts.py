"""Unit tests of the core's small parts: quorum math, progress, the log view, storage."""

from __future__ import annotations

import pytest

from raft.errors import Compacted, StorageError, Unavailable
from raft.memory_storage import MemoryStorage
from raft.messages import ConfState, Entry, HardState
from raft.progress import Inflights, Progress, ProgressState
from raft.quorum import VoteResult, committed_index, has_quorum, majority, vote_result
from raft.raft_log import LogConflict, RaftLog
from raft.read_only import ReadOnly


def ents(*terms: int, start: int = 1) -> list[Entry]:
    return [Entry(start + i, t, data=b"d%d" % (start + i)) for i, t in enumerate(terms)]


# ------------------------------------------------------------------ quorum


def test_majority_and_committed_index() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert committed_index((1, 2, 3), {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index((1, 2, 3, 4), {1: 5, 2: 3, 3: 1, 4: 9}) == 3
    assert committed_index((1, 2, 3), {1: 5}) == 0
    assert committed_index((1,), {1: 7}) == 7


def test_vote_result() -> None:
    voters = (1, 2, 3, 4, 5)
    assert vote_result(voters, {1: True, 2: True}) is VoteResult.PENDING
    assert vote_result(voters, {1: True, 2: True, 3: True}) is VoteResult.WON
    assert vote_result(voters, {1: True, 2: False, 3: False, 4: False}) is VoteResult.LOST
    assert vote_result((1,), {1: True}) is VoteResult.WON
    assert has_quorum((1, 2, 3), {1, 3}) and not has_quorum((1, 2, 3), {1, 9})


# ------------------------------------------------------------------ progress


def test_inflights_limits_by_count_and_bytes() -> None:
    w = Inflights(max_msgs=3, max_bytes=100)
    w.add(5, 10)
    w.add(7, 10)
    assert not w.full()
    w.add(9, 10)
    assert w.full()
    w.free_le(7)
    assert len(w) == 1 and w.total_bytes == 10 and not w.full()
    w.add(12, 95)
    assert w.full()  # 105 bytes
    w.free_first_one()
    assert w.total_bytes == 95


def test_probe_sends_one_then_waits() -> None:
    pr = Progress(next_index=11, max_inflight_msgs=4, max_inflight_bytes=1 << 20)
    assert pr.state is ProgressState.PROBE and not pr.is_paused()
    pr.sent_entries(2, 50, 12)
    assert pr.is_paused() and pr.next_index == 11  # probe does not advance next
    assert pr.maybe_update(12)
    pr.become_replicate()
    assert pr.next_index == 13 and not pr.is_paused()
    for last in (13, 14, 15, 16):
        pr.sent_entries(1, 10, last)
    assert pr.next_index == 17 and pr.is_paused()


def test_decrease_skips_to_hint_and_ignores_stale_rejections() -> None:
    pr = Progress(next_index=11, max_inflight_msgs=4, max_inflight_bytes=1 << 20)
    assert not pr.maybe_decrease_to(rejected=7, next_probe_hint=3)  # answers an older probe
    assert pr.maybe_decrease_to(rejected=10, next_probe_hint=3)
    assert pr.next_index == 4
    pr.maybe_update(5)
    pr.become_replicate()
    pr.sent_entries(3, 30, 8)
    assert not pr.maybe_decrease_to(rejected=5, next_probe_hint=1)  # stale: <= match
    assert pr.maybe_decrease_to(rejected=8, next_probe_hint=1)
    assert pr.next_index == 6  # replicate falls back to match + 1


def test_a_rejection_lowers_the_commit_index_known_sent() -> None:
    """The peer rejected entries after next_index - 1, so it cannot have taken a commit
    index beyond that from them: the leader must send the commit again."""
    pr = Progress(next_index=11, max_inflight_msgs=4, max_inflight_bytes=1 << 20)
    pr.sent_commit = 10
    assert pr.maybe_decrease_to(rejected=10, next_probe_hint=3)
    assert pr.next_index == 4 and pr.sent_commit == 3
    pr.maybe_update(5)
    pr.become_replicate()
    pr.sent_commit = 9
    pr.sent_entries(3, 30, 8)
    assert pr.maybe_decrease_to(rejected=8, next_probe_hint=1)
    assert pr.next_index == 6 and pr.sent_commit == 5


# ------------------------------------------------------------------ log view


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = RaftLog(MemoryStorage(entries=ents(1, 1, 1, 4, 4, 5, 5, 6, 6, 6)), 0, 0)
    assert log.find_conflict_by_term(10, 3) == (3, 1)
    assert log.find_conflict_by_term(10, 6) == (10, 6)
    assert log.find_conflict_by_term(10, 5) == (7, 5)
    assert log.find_conflict_by_term(10, 0) == (0, 0)
    assert log.find_conflict_by_term(99, 4) == (5, 4)


def test_unstable_tail_stable_to_and_truncation() -> None:
    storage = MemoryStorage(entries=ents(1, 1))
    log = RaftLog(storage, committed=1, applied=0)
    assert log.maybe_append(2, 1, 3, ents(2, 2, start=3)) == 4
    assert log.committed == 3 and log.persisted_last_index() == 2
    # Committed through 3, but only 1..2 are durable here: 3 waits for its write.
    assert log.take_committed_to_apply() == tuple(ents(1, 1))
    assert [e.index for e in log.take_entries_to_persist()] == [3, 4]
    assert log.take_entries_to_persist() == ()  # handed out once
    # A new leader overwrites 4 before the first write was acknowledged.
    assert log.maybe_append(3, 2, 3, ents(3, start=4)) == 4
    assert log.overwrites == 1
    assert [(e.index, e.term) for e in log.take_entries_to_persist()] == [(4, 3)]
    storage.save(None, ents(2, 2, start=3))
    log.stable_to(4, 2, 0)  # the stale write: 4/2 is no longer ours, nothing moves
    assert log.persisted_last_index() == 2
    storage.save(None, [Entry(4, 3, data=b"d4")])
    log.stable_to(4, 3, 1)
    assert log.persisted_last_index() == 4 and log.unstable == []
    assert [e.index for e in log.take_committed_to_apply()] == [3]


def test_log_refuses_to_overwrite_committed_entries() -> None:
    log = RaftLog(MemoryStorage(entries=ents(1, 1, 1)), committed=2, applied=0)
    with pytest.raises(LogConflict):
        log.maybe_append(1, 1, 3, ents(2, 2, start=2))
    assert log.last_index() == 3 and log.term(2) == 1


def test_entries_respect_max_bytes_but_return_one() -> None:
    storage = MemoryStorage(entries=ents(1, 1, 1))
    log = RaftLog(storage, 0, 0)
    log.append(ents(2, 2, start=4))
    size = ents(1)[0].size()
    assert [e.index for e in log.entries(1, 2 * size)] == [1, 2]
    assert [e.index for e in log.entries(3, 2 * size)] == [3, 4]  # crosses the boundary
    assert [e.index for e in log.entries(2, 1)] == [2]
    assert log.entries(6) == []


# ------------------------------------------------------------------ read-only


def test_read_only_releases_in_order() -> None:
    ro = ReadOnly()
    assert ro.add_request(3, b"a") and ro.add_request(4, b"b")
    assert not ro.add_request(9, b"a")
    assert ro.recv_ack(2, b"b") == {2}
    assert ro.recv_ack(2, b"zz") is None
    assert [(s.index, s.context) for s in ro.advance(b"b")] == [(3, b"a"), (4, b"b")]
    assert len(ro) == 0 and ro.last_pending_context() == b""


# ------------------------------------------------------------------ memory storage


def test_memory_storage_save_truncates_and_validates() -> None:
    st = MemoryStorage(conf_state=ConfState(voters=(1, 2, 3)))
    assert (st.first_index(), st.last_index(), st.term(0)) == (1, 0, 0)
    st.save(HardState(1, 1, 0), ents(1, 1, 1))
    st.save(HardState(2, 2, 2), ents(2, start=3))  # overwrites 3
    assert [(e.index, e.term) for e in st.entries(1, 4)] == [(1, 1), (2, 1), (3, 2)]
    with pytest.raises(StorageError):
        st.save(None, ents(2, start=9))  # gap
    with pytest.raises(StorageError):
        st.save(HardState(2, 2, 8), [])  # commit beyond the log
    with pytest.raises(StorageError):
        st.save(None, [Entry(4, 2), Entry(6, 2)])
    assert st.last_index() == 3 and st.hard_state == HardState(2, 2, 2)
    with pytest.raises(Unavailable):
        st.term(4)
    with pytest.raises(Unavailable):
        st.entries(1, 5)
    with pytest.raises(Compacted):
        st.term(-1)
    assert st.initial_state()[1].voters == (1, 2, 3)


def test_crash_copy_keeps_durable_state_only_and_is_independent() -> None:
    st = MemoryStorage()
    st.save(HardState(3, 1, 1), ents(1, 3))
    copy = st.crash_copy()
    st.save(HardState(4, 0, 2), ents(4, start=3))
    assert copy.hard_state == HardState(3, 1, 1)
    assert copy.last_index() == 2
    copy.close()
    with pytest.raises(StorageError):
        copy.save(None, ents(3, start=3))
