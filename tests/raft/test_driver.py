"""RaftNode on real parts: three nodes in one event loop, real LMDB in tmp dirs, real TCP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from benchmarks.demo.kv_state_machine import KvStateMachine
from cluster.launcher import free_ports
from raft.driver import NodeStopped, Overloaded, RaftNode
from raft.errors import LeadershipLost, NotLeader, ProposalDropped, StorageError
from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import LmdbStorage
from raft.messages import ConfState, HardState, MessageType, Role

pytestmark = pytest.mark.timeout(60)

CLUSTER = "test-driver"
TICK_MS = 20


class Member:
    """One node's durable parts, so a test can stop and restart the same node."""

    def __init__(
        self,
        node_id: int,
        root: Path,
        peers: dict[int, tuple[str, int]],
    ) -> None:
        self.node_id = node_id
        self.path = str(root / f"n{node_id}")
        self.peers = peers
        self.node: RaftNode | None = None
        self.env: LmdbEnv | None = None
        self.sm: KvStateMachine | None = None
        self.storage: LmdbStorage | None = None
        self.applied: list[tuple[int, int]] = []

    async def start(self) -> RaftNode:
        self.env = LmdbEnv(self.path)
        self.storage = LmdbStorage(
            self.env, initial_conf=ConfState(tuple(sorted(self.peers))), cluster_id=CLUSTER
        )
        self.sm = KvStateMachine(self.env)

        def on_applied(entries: Any, _results: list[Any]) -> None:
            self.applied.extend((e.index, e.term) for e in entries)

        self.node = RaftNode(
            self.node_id,
            self.peers,
            self.storage,
            self.sm,
            cluster_id=CLUSTER,
            shared_txn=True,  # the KV state lives in the log's LMDB env
            tick_ms=TICK_MS,
            election_ticks=10,
            rng_seed=self.node_id,
            on_applied=on_applied,
        )
        await self.node.start()
        return self.node

    async def stop(self, *, transfer: bool = False) -> None:
        if self.node is not None:
            await self.node.stop(transfer=transfer)
            self.node = None
        if self.storage is not None:
            self.storage.close()
        if self.env is not None:
            self.env.close()
            self.env = None


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[dict[int, Member]]:
    """Three members on loopback."""
    ports = free_ports(3)
    peers = {i + 1: ("127.0.0.1", p) for i, p in enumerate(ports)}
    members = {i: Member(i, tmp_path, peers) for i in peers}
    try:
        for m in members.values():
            await m.start()
        yield members
    finally:
        for m in members.values():
            with contextlib.suppress(Exception):
                await m.stop()


async def wait_leader(members: dict[int, Member], timeout_s: float = 10.0) -> RaftNode:
    """Wait until exactly one running node is leader and every running node agrees."""
    async with asyncio.timeout(timeout_s):
        while True:
            nodes = [m.node for m in members.values() if m.node is not None]
            leaders = [n for n in nodes if n.is_leader]
            if len(leaders) == 1 and all(n.leader_id == leaders[0].node_id for n in nodes):
                return leaders[0]
            await asyncio.sleep(0.01)


async def wait_applied(members: dict[int, Member], index: int, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while any(m.node is not None and m.node.applied_index < index for m in members.values()):
            await asyncio.sleep(0.01)


async def test_elects_one_leader_and_commits(cluster: dict[int, Member]) -> None:
    with structlog.testing.capture_logs() as logs:
        leader = await wait_leader(cluster)
        result = await leader.propose(b"Sa\x00one", timeout_s=5)
    # The driver's event carries the vote count (the core logs a bare raft.elected too).
    elected = [e for e in logs if e["event"] == "raft.elected" and "votes" in e]
    assert elected and elected[-1]["term"] == leader.term
    assert elected[-1]["votes"] >= 2  # a majority of 3, our own vote included
    assert isinstance(result, int) and result > 0  # the KV SM answers with the entry index
    await wait_applied(cluster, result)
    for m in cluster.values():
        assert m.sm is not None and m.sm.get(b"a") == b"one"
        assert (result, leader.term) in m.applied
    st = leader.status()
    assert st.role is Role.LEADER and st.commit >= result and st.applied >= result
    assert set(st.progress) == {1, 2, 3}
    assert leader.diagnostics()["transport"].keys() == {str(i) for i in (1, 2, 3)} - {str(st.id)}


async def test_concurrent_proposals_are_batched_and_all_applied(
    cluster: dict[int, Member],
) -> None:
    leader = await wait_leader(cluster)
    results = await asyncio.gather(
        *(leader.propose(f"Ik{i % 7}".encode(), timeout_s=10) for i in range(700))
    )
    # Each counter was incremented 100 times, each result is a distinct step of one counter.
    assert sorted(results) == sorted(list(range(1, 101)) * 7)
    assert leader.stats["persists"] < 700  # proposals shared fsyncs
    last = leader.applied_index
    await wait_applied(cluster, last)
    summaries = [m.sm.summary() for m in cluster.values() if m.sm is not None]
    assert all(s == summaries[0] for s in summaries)


async def test_follower_refuses_with_leader_hint(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    follower = next(m.node for m in cluster.values() if m.node is not leader)
    assert follower is not None
    for call in (follower.propose(b"x"), follower.read_index()):
        with pytest.raises(NotLeader) as info:
            await call
        assert info.value.leader_id == leader.node_id
        host, port = leader.peers[leader.node_id]
        assert info.value.leader_addr == f"{host}:{port}"


async def test_read_index_waits_for_apply(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    index = await leader.propose(b"Sk\x00v", timeout_s=5)
    read = await leader.read_index(timeout_s=5)
    assert read >= index
    assert leader.applied_index >= read
    reads = await asyncio.gather(*(leader.read_index(timeout_s=5) for _ in range(50)))
    assert min(reads) >= index


async def test_transfer_leader(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    target = next(i for i in cluster if i != leader.node_id)
    await leader.propose(b"Sbefore\x00x", timeout_s=5)
    with structlog.testing.capture_logs() as logs:
        await leader.transfer_leader(target, timeout_s=5)
    downs = [e for e in logs if e["event"] == "raft.stepped_down" and "reason" in e]
    assert [e["reason"] for e in downs] == ["leadership_transferred"]
    new_leader = await wait_leader(cluster)
    assert new_leader.node_id == target
    assert not leader.is_leader
    with pytest.raises(NotLeader):
        await leader.propose(b"x")
    index = await new_leader.propose(b"Safter\x00y", timeout_s=5)
    await wait_applied(cluster, index)


async def test_stopped_node_restarts_with_its_log_and_catches_up(
    cluster: dict[int, Member],
) -> None:
    leader = await wait_leader(cluster)
    await asyncio.gather(*(leader.propose(f"Sa{i}\x00v".encode(), timeout_s=5) for i in range(50)))
    victim = next(m for m in cluster.values() if m.node is not leader)
    await wait_applied(cluster, leader.applied_index)
    before_last = victim.node.status().last_index  # type: ignore[union-attr]
    await victim.stop()
    for i in range(50):
        await leader.propose(f"Sb{i}\x00w".encode(), timeout_s=5)
    victim.applied.clear()
    node = await victim.start()
    assert node.status().last_index >= before_last  # the log survived the restart
    assert node.applied_index >= before_last - 1  # state machine resumed, not replayed
    await wait_applied(cluster, leader.applied_index)
    # Only entries above the persisted applied_index were re-applied after the restart.
    assert all(index > before_last - 1 for index, _ in victim.applied)
    summaries = [m.sm.summary() for m in cluster.values() if m.sm is not None]
    assert all(s == summaries[0] for s in summaries)
    assert summaries[0]["keys"] == 100


async def test_leader_restart_keeps_term_and_vote_durable(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    term = leader.term
    await leader.propose(b"Sx\x00y", timeout_s=5)
    member = cluster[leader.node_id]
    await member.stop()
    await wait_leader(cluster)
    node = await member.start()
    assert member.storage is not None
    hs: HardState = member.storage.initial_state()[0]
    assert hs.term >= term
    assert node.term >= term
    await wait_leader(cluster)


async def test_proposal_from_deposed_leader_is_dropped_or_applied(
    cluster: dict[int, Member],
) -> None:
    """A proposal in flight across a leadership change resolves exactly by the log."""
    leader = await wait_leader(cluster)
    futs = [leader.propose_nowait(f"Sz{i}\x00v".encode()) for i in range(20)]
    target = next(i for i in cluster if i != leader.node_id)
    with contextlib.suppress(Exception):
        await leader.transfer_leader(target, timeout_s=5)
    new_leader = await wait_leader(cluster)
    await new_leader.propose(b"Safter\x00v", timeout_s=5)
    outcomes = await asyncio.gather(*futs, return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, ProposalDropped):
            continue
        assert isinstance(outcome, int), outcome
        # Applied: the committed entry at that index really is this proposal.
        got = cluster[new_leader.node_id].storage.entries(outcome, outcome + 1)  # type: ignore[union-attr]
        assert got[0].data == f"Sz{i}\x00v".encode()


def test_role_is_follower_before_start(tmp_path: Path) -> None:
    env = LmdbEnv(str(tmp_path / "n"))
    storage = LmdbStorage(env, initial_conf=ConfState((1, 2, 3)))
    node = RaftNode(
        1,
        {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2), 3: ("127.0.0.1", 3)},
        storage,
        KvStateMachine(env),
        cluster_id=CLUSTER,
    )
    assert node.role == Role.FOLLOWER and not node.is_leader
    with pytest.raises(ValueError):
        RaftNode(4, {1: ("127.0.0.1", 1)}, storage, KvStateMachine(env), cluster_id=CLUSTER)
    env.close()


def test_a_shared_transaction_needs_parts_that_can_share_one(tmp_path: Path) -> None:
    """The composition root says the log and the state machine share one LMDB env; the
    driver checks the parts' contracts once instead of probing them per batch."""
    from raft.memory_storage import MemoryStorage

    env = LmdbEnv(str(tmp_path / "n"))
    with pytest.raises(TypeError, match="TransactionalStorage"):
        RaftNode(
            1,
            {1: ("127.0.0.1", 1)},
            MemoryStorage(conf_state=ConfState((1,))),  # no shared transactions
            KvStateMachine(env),
            cluster_id=CLUSTER,
            shared_txn=True,
        )
    env.close()


async def test_the_driver_runs_over_any_peer_transport(tmp_path: Path) -> None:
    """PeerTransport is the driver's whole view of the network: a single node over a
    transport that never touches a socket elects itself and applies a proposal."""
    from raft.transport import PeerStats, PeerTransport

    made: list[Any] = []

    class NoNetwork:
        def __init__(
            self,
            node_id: int,
            cluster_id: str,
            listen: Any,
            peers: Any,
            on_message: Any,
            **options: Any,
        ) -> None:
            self.received = 0
            self.peer_incarnations: dict[int, str] = {}
            self.options = options
            made.append(self)

        @property
        def listen_addr(self) -> tuple[str, int]:
            return ("127.0.0.1", 0)

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

        def send(self, msg: Any) -> None:
            raise AssertionError(f"a single node sends nothing: {msg}")

        def flush(self) -> None:
            pass

        def update_peer(self, peer_id: int, addr: Any) -> None:
            pass

        def remove_peer(self, peer_id: int) -> None:
            pass

        def stats(self) -> dict[int, PeerStats]:
            return {}

    env = LmdbEnv(str(tmp_path / "n"))
    storage = LmdbStorage(env, initial_conf=ConfState((1,)))
    node = RaftNode(
        1,
        {1: ("127.0.0.1", 0)},
        storage,
        KvStateMachine(env),
        cluster_id=CLUSTER,
        shared_txn=True,
        tick_ms=TICK_MS,
        transport_factory=NoNetwork,
    )
    await node.start()
    try:
        assert isinstance(made[0], PeerTransport)
        assert made[0].options["with_incarnation"] is True
        await node.wait_for_leader(timeout_s=5)
        index = await node.propose(b"Ik=v", timeout_s=5)
        assert node.status().applied >= index and node.status().voters == (1,)
    finally:
        await node.stop()
        env.close()


async def test_replies_leave_only_after_their_state_is_durable(
    cluster: dict[int, Member],
) -> None:
    """Every vote grant and append ack a node sends is backed by what its storage holds.

    LmdbStorage publishes its hard state and last index only after the fsynced commit, so
    checking them at the moment of sending checks the driver's Ready order.
    """
    violations: list[str] = []
    checked = {"votes": 0, "acks": 0}

    def guard(member: Member) -> None:
        node, storage = member.node, member.storage
        assert node is not None and storage is not None
        transport = node._transport
        assert transport is not None
        real_send = transport.send

        def send(m: Any) -> None:
            hs = storage.initial_state()[0]
            if m.type == MessageType.VOTE_RESP and not m.reject:
                checked["votes"] += 1
                if hs.term < m.term or hs.vote != m.to:
                    violations.append(f"vote {m} sent with durable {hs}")
            elif m.type == MessageType.APP_RESP and not m.reject and m.index:
                checked["acks"] += 1
                if storage.last_index() < m.index or hs.term < m.term:
                    violations.append(f"ack {m} with durable last {storage.last_index()}")
            real_send(m)

        transport.send = send  # type: ignore[method-assign]

    for m in cluster.values():
        guard(m)
    leader = await wait_leader(cluster)
    await asyncio.gather(*(leader.propose(f"Sd{i}\x00v".encode(), timeout_s=5) for i in range(200)))
    # A leader change makes everyone grant votes under the guard too.
    target = next(i for i in cluster if i != leader.node_id)
    await leader.transfer_leader(target, timeout_s=5)
    new_leader = await wait_leader(cluster)
    await new_leader.propose(b"Sd-after\x00v", timeout_s=5)
    assert not violations, violations[:3]
    assert checked["votes"] >= 1 and checked["acks"] >= 10


class _FailingSaves:
    """Wraps a storage; every save fails once `broken` is set (a dead disk)."""

    def __init__(self, inner: LmdbStorage) -> None:
        self.inner = inner
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def save(self, hard_state: Any, entries: Any) -> None:
        if self.broken:
            raise StorageError("injected: disk is gone")
        self.inner.save(hard_state, entries)

    def prepare_save(self, hard_state: Any, entries: Any) -> Any:
        # the driver's shared-transaction path (log append + apply in one commit)
        if self.broken:
            raise StorageError("injected: disk is gone")
        return self.inner.prepare_save(hard_state, entries)


async def test_failed_persist_stops_the_node_and_acknowledges_nothing(
    cluster: dict[int, Member],
) -> None:
    leader = await wait_leader(cluster)
    wrapped = _FailingSaves(cluster[leader.node_id].storage)  # type: ignore[arg-type]
    leader._storage = wrapped  # type: ignore[assignment]
    wrapped.broken = True
    futs = [leader.propose_nowait(f"Sf{i}\x00v".encode()) for i in range(10)]
    outcomes = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 10)
    assert all(isinstance(o, NodeStopped) for o in outcomes), outcomes
    assert isinstance(await asyncio.wait_for(leader.wait_closed(), 5), StorageError)
    with pytest.raises(NodeStopped):
        await leader.propose(b"x")


async def test_isolated_leader_fails_its_proposals_when_it_steps_down(
    cluster: dict[int, Member],
) -> None:
    """Proposals stranded on a cut-off leader fail with LeadershipLost as soon as
    check-quorum makes it step down (not when the partition heals), and never apply."""
    leader = await wait_leader(cluster)
    old_id = leader.node_id
    cut = {"on": True}
    for m in cluster.values():
        transport = m.node._transport  # type: ignore[union-attr]
        real_send = transport.send

        def send(msg: Any, _real: Any = real_send) -> None:
            if cut["on"] and old_id in (msg.frm, msg.to):
                return
            _real(msg)

        transport.send = send  # type: ignore[method-assign]
    stranded = [leader.propose_nowait(f"Sstranded{i}\x00v".encode()) for i in range(5)]
    others = {i: m for i, m in cluster.items() if i != old_id}
    with structlog.testing.capture_logs() as logs:
        new_leader = await wait_leader(others)
        async with asyncio.timeout(5):
            while leader.is_leader:  # check-quorum makes the cut-off leader step down
                await asyncio.sleep(0.01)
    assert new_leader.node_id != old_id
    downs = [e for e in logs if e["event"] == "raft.stepped_down" and "reason" in e]
    assert downs and downs[0]["node_id"] == old_id
    assert downs[0]["reason"] == "lost_quorum"
    # Answered while still cut off: the callers need not wait for the heal.
    outcomes = await asyncio.wait_for(asyncio.gather(*stranded, return_exceptions=True), 1)
    assert all(isinstance(o, LeadershipLost) for o in outcomes), outcomes
    assert "outcome is unknown" in str(outcomes[0])
    index = await new_leader.propose(b"Snew\x00v", timeout_s=5)
    cut["on"] = False
    await wait_applied(cluster, index)
    assert cluster[old_id].sm.get(b"stranded0") is None  # type: ignore[union-attr]


async def test_bad_proposal_is_refused_and_changes_nothing(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    index = await leader.propose(b"Sok\x001", timeout_s=5)
    last = leader.status().last_index
    for bad in ("text", None, bytearray(b"x")):
        with pytest.raises(TypeError):
            leader.propose_nowait(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await leader.transfer_leader(99)
    assert leader.status().last_index == last
    assert await leader.propose(b"Sok\x002", timeout_s=5) == last + 1 > index


async def test_too_many_waiting_proposals_are_refused(cluster: dict[int, Member]) -> None:
    leader = await wait_leader(cluster)
    leader.max_pending_proposals = 5
    futs = [leader.propose_nowait(f"So{i}\x00v".encode()) for i in range(5)]
    with pytest.raises(Overloaded):
        leader.propose_nowait(b"Sover\x00v")
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert await leader.propose(b"Safter\x00v", timeout_s=5) > 0
    assert cluster[leader.node_id].sm.get(b"over") is None  # type: ignore[union-attr]
