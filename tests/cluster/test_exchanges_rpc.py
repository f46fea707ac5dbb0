"""Exchanges and request-reply through the client on real 3-node clusters: the exchange
helpers, a publish and a request-reply across a leader kill, and reply queues that never
outlive their request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from cluster import (
    AsyncClient,
    Client,
    Conflict,
    LocalCluster,
    Message,
    NotFound,
    PublishMessage,
    RequestTimeout,
)

pytestmark = pytest.mark.integration


def test_exchange_helpers(cluster3: LocalCluster) -> None:
    with Client(cluster3.binary_urls) as client:
        for q in ("hx-eu", "hx-all"):
            client.queue(q).create()
        ex = client.exchange("hx-events")
        assert ex.declare(type="topic")["type"] == "topic"
        with pytest.raises(Conflict):
            ex.declare(type="fanout")
        assert ex.bind("hx-eu", pattern="*.eu")["created"] is True
        ex.bind("hx-all", pattern="#")
        result = ex.publish({"n": 1}, routing_key="signup.eu", headers={"src": "web"})
        assert result.routed_to == ["hx-all", "hx-eu"] and not result.unroutable
        assert set(result.ids) == {"hx-all", "hx-eu"}
        many = ex.publish_many(
            [PublishMessage("a", routing_key="x.us"), PublishMessage("b", routing_key="y.eu")]
        )
        assert [r.routed_to for r in many] == [["hx-all"], ["hx-all", "hx-eu"]]
        msg = client.queue("hx-eu").receive()
        assert msg is not None and msg.data == {"n": 1} and msg.attributes["src"] == "web"
        info = ex.info()
        assert info["published_total"] == 3 and info["routed_total"] == 5
        assert ex.unbind("hx-eu", pattern="*.eu")["deleted"] is True
        with pytest.raises(NotFound):
            ex.unbind("hx-eu", pattern="*.eu")
        assert "hx-events" in {e["name"] for e in client.exchanges()}
        assert ex.delete() == {"deleted": "hx-events", "bindings": 1}


def test_a_request_without_a_responder_times_out_and_removes_its_reply_queue(
    cluster3: LocalCluster,
) -> None:
    with Client(cluster3.urls) as client:
        q = client.queue("hx-nobody")
        q.create()
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            q.request("hello?", timeout_s=0.5)
        assert time.monotonic() - started < 10
        assert not [x for x in client.queues() if x["name"].startswith("rpc.reply.")]
        [request] = q.receive(max=10)
        assert request.attributes["reply_to"].startswith("rpc.reply.")
        assert len(request.attributes["correlation_id"]) == 32


async def _leader_after(cluster: LocalCluster, not_id: int | None, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None and leader.id != not_id:
            return leader.id
        await asyncio.sleep(0.1)
    raise TimeoutError("no new leader")


@pytest.mark.parametrize("protocol", ["http", "raftq"])
async def test_request_reply_across_a_leader_kill_is_answered_once(
    make_cluster: Callable[..., LocalCluster], protocol: str
) -> None:
    """The responder's handler SIGKILLs the leader before answering: its reply commit
    and the caller's wait move to the new leader, and the request is answered once."""
    cluster = make_cluster(3)
    urls = cluster.urls if protocol == "http" else cluster.binary_urls
    calls: list[str] = []
    killed: list[int] = []

    async def handler(msg: Message) -> dict[str, object]:
        calls.append(msg.id)
        if not killed:
            leader = await _leader_after(cluster, None)
            await asyncio.to_thread(cluster.kill, leader)
            killed.append(leader)
        return {"answer": msg.data["n"] * 2}

    async with AsyncClient(urls, timeout_s=30) as caller, AsyncClient(urls, timeout_s=30) as svc:
        service = svc.queue("hx-double")
        await service.create(visibility_timeout_s=60)
        stop = asyncio.Event()
        serving = asyncio.create_task(
            service.serve(handler, stop_event=stop, handle_signals=False, poll_wait_s=1)
        )
        try:
            reply = await caller.queue("hx-double").request({"n": 21}, timeout_s=45)
            assert reply.data == {"answer": 42}
            second = await caller.request_reply("hx-double", {"n": 5}, timeout_s=30)
            assert second.data == {"answer": 10}
        finally:
            stop.set()
            stats = await asyncio.wait_for(serving, 30)
        assert len(killed) == 1
        assert len(calls) == 2, "each request handled once: its lease outlived the failover"
        assert stats.succeeded == 2 and stats.stale == 0
        info = await service.info()
        assert info["acked_total"] == 2 and info["depth"] == info["in_flight"] == 0
        assert not [q for q in await caller.queues() if q["name"].startswith("rpc.reply.")]


async def test_a_publish_across_a_leader_kill_lands_once(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """Publishes retried across a leader kill reuse their dedup ids: one copy each."""
    cluster = make_cluster(3)
    async with AsyncClient(cluster.urls, timeout_s=30) as client:
        for q in ("hk-a", "hk-b"):
            await client.queue(q).create()
        ex = client.exchange("hk-fan")
        await ex.declare(type="fanout")
        for q in ("hk-a", "hk-b"):
            await ex.bind(q)
        done: list[int] = []

        async def publisher(worker: int) -> None:
            for i in range(worker, 300, 4):
                await ex.publish({"n": i})
                done.append(i)

        async def nemesis() -> None:
            while len(done) < 100:
                await asyncio.sleep(0.01)
            leader = await _leader_after(cluster, None)
            await asyncio.to_thread(cluster.kill, leader)

        await asyncio.gather(nemesis(), *(publisher(w) for w in range(4)))
        for name in ("hk-a", "hk-b"):
            seen: list[int] = []
            while batch := await client.queue(name).receive(max=100, wait_s=0.5):
                seen += [m.data["n"] for m in batch]
            assert sorted(seen) == list(range(300)), name


def test_a_responder_replies_only_to_reply_queues(cluster3: LocalCluster) -> None:
    """A request naming another queue as reply_to is acked without a reply: the responder
    does not write where a caller points it."""
    with Client(cluster3.urls) as client:
        service, victim = client.queue("hx-svc"), client.queue("hx-victim")
        service.create()
        victim.create()
        service.send("x", attributes={"reply_to": "hx-victim", "correlation_id": "c"})
        service.send("y", attributes={"reply_to": "rpc.reply.mine", "correlation_id": "d"})
        client.queue("rpc.reply.mine").create(expires_s=60)
        stop = threading.Event()
        server = threading.Thread(
            target=service.serve,
            args=(lambda msg: f"re:{msg.body}",),
            kwargs={"stop_event": stop, "handle_signals": False, "poll_wait_s": 0.5},
        )
        server.start()
        try:
            reply = client.queue("rpc.reply.mine").receive(wait_s=10)
            assert reply is not None and reply.body == "re:y"
            assert reply.attributes["correlation_id"] == "d"
        finally:
            stop.set()
            server.join()
        assert victim.info()["sent_total"] == 0
        assert service.info()["acked_total"] == 2
        client.queue("rpc.reply.mine").delete()
