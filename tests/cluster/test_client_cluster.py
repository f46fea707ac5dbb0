"""The client against a real 3-node cluster: failover without loss or duplicates, dead
servers, total outage, follower-only server lists and the consumer loop."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from cluster import AsyncClient, Client, ClusterUnavailable, LocalCluster, Message
from cluster.discovery import REDIRECT_HEADERS
from cluster.launcher import free_ports

pytestmark = pytest.mark.integration


async def _leader_after(cluster: LocalCluster, not_id: int | None, timeout_s: float = 30) -> int:
    """Wait (off the event loop) until a node other than `not_id` leads; its id."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None and leader.id != not_id:
            return leader.id
        await asyncio.sleep(0.1)
    raise TimeoutError("no new leader")


@pytest.mark.parametrize("protocol", ["http", "raftq"])
async def test_failover_2000_sends_exactly_once(
    make_cluster: Callable[..., LocalCluster], protocol: str
) -> None:
    """2,000 sends while the leader is SIGKILLed twice: every message exactly once, no error,
    over HTTP and over the binary protocol (the router retries with the same dedup ids)."""
    cluster = make_cluster(3)
    total, workers = 2000, 16
    sent_ids: dict[int, str] = {}
    kills: list[int] = []
    urls = cluster.urls if protocol == "http" else cluster.binary_urls
    async with AsyncClient(urls, timeout_s=30) as client:
        q = client.queue("failover")
        await q.create(visibility_timeout_s=300)
        todo = iter(range(total))

        async def producer() -> None:
            for i in todo:
                sent_ids[i] = await q.send({"n": i})

        async def nemesis() -> None:
            for threshold in (500, 1200):
                while len(sent_ids) < threshold:
                    await asyncio.sleep(0.01)
                leader = await _leader_after(cluster, None)
                await asyncio.to_thread(cluster.kill, leader)
                kills.append(leader)
                await _leader_after(cluster, leader)
                await asyncio.to_thread(cluster.start_node, leader)  # keep a quorum

        await asyncio.gather(nemesis(), *(producer() for _ in range(workers)))
        assert len(kills) == 2
        assert len(sent_ids) == total and len(set(sent_ids.values())) == total

        bodies: list[int] = []
        ids: set[str] = set()
        while True:
            batch = await q.receive(max=100, wait_s=0.5)
            if not batch:
                break
            bodies.extend(m.data["n"] for m in batch)
            ids.update(m.id for m in batch)
        assert sorted(bodies) == list(range(total))  # all there, none twice
        assert ids == set(sent_ids.values())
        info = await q.info()
        assert info["in_flight"] == total and info["depth"] == 0


@pytest.mark.parametrize(
    ("request_timeout_s", "leader_check_s"),
    [(2.0, None), (60.0, 1.0)],
    ids=["attempt-timeout", "leader-check"],
)
async def test_hung_leader_is_routed_around(
    make_cluster: Callable[..., LocalCluster],
    request_timeout_s: float,
    leader_check_s: float | None,
) -> None:
    """SIGSTOP the leader: discovery (highest term, majority answers) finds the new leader
    while the hung node never answers. The client leaves the hung node either when the
    attempt times out, or (the default) when its leader check hears a majority name
    another leader: with a 60 s attempt timeout only that check can finish the send
    within 15 s."""
    cluster = make_cluster(3)
    async with AsyncClient(
        cluster.urls,
        timeout_s=15,  # the bound the test used to time: the send must finish inside it
        request_timeout_s=request_timeout_s,
        leader_check_s=leader_check_s,
    ) as client:
        q = client.queue("hung")
        await q.create()
        old = await _leader_after(cluster, None)
        assert client.leader_url == cluster.url(old)
        await asyncio.to_thread(cluster.kill, old, signal.SIGSTOP)
        try:
            mid = await q.send("while the leader hangs")
            assert client.leader_url != cluster.url(old)
        finally:
            await asyncio.to_thread(cluster.kill, old, signal.SIGCONT)
        msg = await q.receive(wait_s=5)
        assert msg is not None and msg.id == mid


async def test_first_server_dead_still_works(cluster3: LocalCluster) -> None:
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    async with AsyncClient([dead, *cluster3.urls], timeout_s=15) as client:
        q = client.queue("dead-first")
        await q.create()
        mid = await q.send("hi")
        msg = await q.receive(wait_s=2)
        assert msg is not None and msg.id == mid and msg.body == "hi"
        assert await q.acknowledge(msg)


async def test_follower_only_server_list_finds_leader(cluster3: LocalCluster) -> None:
    leader = cluster3.wait_for_leader(30)
    follower = next(u for i, u in zip(cluster3.ids, cluster3.urls, strict=True) if i != leader.id)
    # the contract the client relies on: asked for redirects, a follower answers a write
    # with 307 + hints (the client sends X-Raftq-Redirect on every request)
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{follower}/v1/queues/via-follower",
            json={},
            headers=REDIRECT_HEADERS,
            allow_redirects=False,
        ) as resp,
    ):
        body = await resp.json()
        assert resp.status == 307 and body["error"]["code"] == "not_leader"
        assert body["leader_url"] == leader.url
        assert resp.headers["Location"].startswith(leader.url)
    async with AsyncClient([follower], timeout_s=15) as client:
        q = client.queue("via-follower")
        await q.create()
        assert await q.send("x")
        assert client.leader_url == leader.url


async def test_all_nodes_down_raises_cluster_unavailable(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = make_cluster(3)
    cluster.stop_all()
    start = time.monotonic()
    with pytest.raises(ClusterUnavailable) as info:
        async with AsyncClient(cluster.urls, timeout_s=2, request_timeout_s=1) as client:
            await client.queue("q").send("lost?")
    assert time.monotonic() - start < 4
    assert set(info.value.attempts) == set(cluster.urls)


async def test_consumer_sees_receive_count_3_after_two_failures(cluster3: LocalCluster) -> None:
    async with AsyncClient(cluster3.urls, timeout_s=15) as client:
        q = client.queue("consumer-retry")
        await q.create(visibility_timeout_s=5)
        await q.send({"job": 1})
        counts: list[int] = []

        async def handler(msg: Message) -> None:
            counts.append(msg.receive_count)
            if msg.receive_count < 3:
                raise RuntimeError("transient failure")
            q.stop()

        stats = await asyncio.wait_for(
            q.consume(handler, retry_base_delay_s=0.1, poll_wait_s=0.5, handle_signals=False),
            timeout=30,
        )
        assert counts == [1, 2, 3]
        assert (stats.failed, stats.succeeded) == (2, 1)
        info = await q.info()
        assert info["depth"] == info["in_flight"] == info["delayed"] == 0
        assert info["acked_total"] == 1


async def test_consumer_extends_lease_on_real_cluster(cluster3: LocalCluster) -> None:
    async with AsyncClient(cluster3.urls, timeout_s=15) as client:
        q = client.queue("consumer-slow")
        await q.create()
        await q.send("slow")

        async def handler(msg: Message) -> None:
            await asyncio.sleep(2.5)  # > the 1 s visibility timeout below
            q.stop()

        stats = await asyncio.wait_for(
            q.consume(handler, visibility_timeout_s=1, handle_signals=False), timeout=30
        )
        assert stats.succeeded == 1 and stats.extended >= 3 and stats.stale == 0
        assert (await q.info())["acked_total"] == 1


async def test_consumer_handlers_share_ack_requests(cluster3: LocalCluster) -> None:
    """16 handlers finishing together ack in a few shared requests, each ack counted once."""
    total = 300
    async with AsyncClient(cluster3.urls, timeout_s=15) as client:
        q = client.queue("consumer-acks")
        await q.create(visibility_timeout_s=60)
        await q.send_many([{"n": i} for i in range(total)])
        seen: set[int] = set()

        async def handler(msg: Message) -> None:
            seen.add(msg.data["n"])
            if len(seen) == total:
                q.stop()

        stats = await asyncio.wait_for(
            q.consume(handler, concurrency=16, poll_wait_s=0.5, handle_signals=False), timeout=60
        )
        assert seen == set(range(total))
        assert (stats.succeeded, stats.stale, stats.failed) == (total, 0, 0)
        info = await q.info()
        assert info["depth"] == info["in_flight"] == 0 and info["acked_total"] == total
        # One request per ack would be 300; handlers that finish together share one.
        assert q._acks.requests <= total // 2, q._acks.requests


async def test_concurrent_sends_share_requests_and_a_bad_one_fails_alone(
    cluster3: LocalCluster,
) -> None:
    """64 tasks sending 8 messages each: every send its own id, the messages exactly once,
    far fewer requests than sends; one oversize message among them fails only its caller."""
    from cluster.errors import TooLarge

    tasks_n, per_task = 64, 8
    async with AsyncClient(cluster3.urls, timeout_s=15) as client:
        q = client.queue("grouped-sends")
        await q.create(visibility_timeout_s=60, max_message_bytes=1024)
        ids: dict[tuple[int, int], str] = {}
        refused: list[Exception] = []

        async def producer(t: int) -> None:
            for i in range(per_task):
                if (t, i) == (7, 3):
                    try:
                        await q.send("x" * 2000)
                    except TooLarge as exc:
                        refused.append(exc)
                    continue
                ids[(t, i)] = await q.send({"t": t, "i": i})

        await asyncio.gather(*(producer(t) for t in range(tasks_n)))
        total = tasks_n * per_task - 1
        assert len(refused) == 1 and len(ids) == total and len(set(ids.values())) == total
        assert q._sends.requests < total // 4, q._sends.requests
        seen: dict[tuple[int, int], str] = {}
        for _ in range(100):
            batch = await q.receive(max=100, wait_s=0.5)
            if not batch:
                break
            for m in batch:
                key = (m.data["t"], m.data["i"])
                assert key not in seen
                seen[key] = m.id
        assert seen == ids


async def test_an_idle_consumer_gets_each_send_in_the_senders_own_entry(
    cluster3: LocalCluster,
) -> None:
    """An idle consumer keeps its receives waiting at the leader; each send, one at a time,
    carries one of them in its own Raft entry (the leader counts it), and every message is
    handled once."""
    total = 20
    async with AsyncClient(cluster3.urls, timeout_s=15) as client:
        q = client.queue("ride-consumer")
        await q.create(visibility_timeout_s=60)
        leader = await _leader_after(cluster3, None)
        url = cluster3.url(leader)

        async def carried() -> float:
            async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
                text = await resp.text()
            line = next(x for x in text.splitlines() if x.startswith("raftq_receives_with_send"))
            return float(line.split()[1])

        before = await carried()
        seen: list[int] = []

        async def handler(msg: Message) -> None:
            seen.append(msg.data["n"])
            if len(seen) == total:
                q.stop()

        consumer = asyncio.ensure_future(
            q.consume(handler, concurrency=4, poll_wait_s=5, handle_signals=False)
        )
        for n in range(total):
            await asyncio.sleep(0.1)  # the consumer is idle: its receives wait
            await q.send({"n": n})
        stats = await asyncio.wait_for(consumer, 30)
        assert sorted(seen) == list(range(total)) and stats.succeeded == total
        assert await carried() - before >= total * 3 // 4


def test_sync_client_against_real_cluster(cluster3: LocalCluster) -> None:
    with Client(cluster3.urls, timeout_s=15) as client:
        q = client.queue("sync-real")
        q.create()
        results = q.send_many([{"i": i} for i in range(10)])
        assert len({r.id for r in results}) == 10
        msgs = q.receive(max=10, wait_s=1)
        assert sorted(m.data["i"] for m in msgs) == list(range(10))
        assert q.acknowledge_many(msgs).acked == 10
        assert q.info()["depth"] == 0
        assert client.cluster()["leader"]["url"] == client.leader_url
        assert q.send_at_most_once(["fast"]) == 1
        msg = q.receive(wait_s=2)
        assert msg is not None and msg.body == "fast"
