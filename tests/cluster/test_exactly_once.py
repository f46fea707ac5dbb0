"""Issue 5: exactly-once under producer retries, worker crashes, leader kills and zombies."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import AsyncClient, OutgoingMessage
from cluster.transactions import (
    AsyncTransaction,
    TransactionAborted,
    delivery_txn_id,
    exactly_once_consumer,
)
from tests.support.queues import drain

pytestmark = pytest.mark.integration

WORKER = Path(__file__).with_name("eo_worker.py")


async def test_producer_retries_across_leader_kill_and_full_restart(make_cluster):
    cluster = make_cluster(3)
    logical = [OutgoingMessage(f"order-{i}", dedup_id=f"order-{i}") for i in range(300)]

    async def send_all(expect_duplicates: bool) -> list[str]:
        async with AsyncClient(cluster.urls, timeout_s=60) as client:
            q = client.queue("orders")
            results = await q.send_many(logical, batch_size=50)
            if expect_duplicates:
                assert all(r.duplicate for r in results)
            return [r.id for r in results]

    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        await client.queue("orders").create(dedup_window_s=3600)
    first = await send_all(expect_duplicates=False)
    cluster.kill(cluster.leader().id, signal.SIGKILL)
    second = await send_all(expect_duplicates=True)  # the new leader remembers every id
    for node_id in cluster.ids:
        cluster.kill(node_id, signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader(timeout_s=30)
    third = await send_all(expect_duplicates=True)  # ...and so does a restarted cluster
    assert first == second == third

    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        bodies = await drain(client.queue("orders"))
    assert sorted(bodies) == sorted(f"order-{i}" for i in range(300))


async def test_pipeline_exactly_once_with_worker_and_leader_kills(make_cluster):
    cluster = make_cluster(3)
    total = 5000
    rng = random.Random(20261128)
    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        await client.queue("in").create(visibility_timeout_s=3)
        await client.queue("out").create()
        await client.queue("in").send_many([f"v-{i}" for i in range(total)], batch_size=500)

    def spawn() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(WORKER), cluster.servers, "in", "out"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    workers = [spawn() for _ in range(3)]
    leader_kills = 0
    try:
        async with AsyncClient(cluster.urls, timeout_s=60) as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 240
            while loop.time() < deadline:
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                workers[victim].wait()
                workers[victim] = spawn()
                info = await client.queue("in").info()
                if leader_kills < 2 and info["acked_total"] > (leader_kills + 1) * total // 3:
                    leader = cluster.leader()
                    cluster.kill(leader.id, signal.SIGKILL)
                    leader_kills += 1
                    await asyncio.sleep(1.0)
                    cluster.restart(leader.id)
                if info["depth"] == 0 and info["in_flight"] == 0 and info["delayed"] == 0:
                    break
            assert leader_kills == 2, "the leader was not killed twice before the input drained"
            info = await client.queue("in").info()
            assert info["depth"] == info["in_flight"] == 0, info
            out = await drain(client.queue("out"))
    finally:
        for w in workers:
            w.kill()
            w.wait()
    assert len(out) == total, f"{len(out)} outputs for {total} inputs"
    assert sorted(out) == sorted(f"V-{i}" for i in range(total))


async def test_zombie_consumer_commit_is_refused(make_cluster):
    cluster = make_cluster(1)
    async with AsyncClient(cluster.urls, timeout_s=30) as client:
        src, dst = client.queue("zin"), client.queue("zout")
        await src.create(visibility_timeout_s=1)
        await dst.create()
        await src.send("job")
        stalled = await src.receive(wait_s=1)  # worker A takes the job...
        await asyncio.sleep(1.5)  # ...and stalls past its lease
        fresh = await src.receive(wait_s=5)  # worker B gets it again
        assert fresh.id == stalled.id and fresh.receive_count == 2
        async with AsyncTransaction(client, txn_id=f"eo:zin:{fresh.receipt}") as b:
            b.acknowledge(fresh)
            b.send("zout", "done by B")
        counters = ("depth", "in_flight", "delayed", "sent_total", "acked_total")

        async def snapshot() -> list[int]:
            infos = (await dst.info(), await src.info())
            return [info[k] for info in infos for k in counters]

        before = await snapshot()
        zombie = AsyncTransaction(client, txn_id=f"eo:zin:{stalled.receipt}")
        zombie.acknowledge(stalled)
        zombie.send("zout", "done by A")
        with pytest.raises(TransactionAborted) as refused:
            await zombie.commit()
        assert refused.value.status == 409
        assert await snapshot() == before  # changed nothing
        assert await drain(dst) == ["done by B"]


async def test_repeated_txn_id_applies_once(make_cluster):
    cluster = make_cluster(1)
    async with AsyncClient(cluster.urls, timeout_s=30) as client:
        await client.queue("rin").create()
        await client.queue("rout").create()
        await client.queue("rin").send("x")
        msg = await client.queue("rin").receive(wait_s=1)
        first = AsyncTransaction(client, txn_id="same")
        first.acknowledge(msg)
        first.send("rout", "X")
        r1 = await first.commit()
        again = AsyncTransaction(client, txn_id="same")
        again.acknowledge(msg)
        again.send("rout", "X")
        r2 = await again.commit()
        assert r1.duplicate is False and r2.duplicate is True
        assert await drain(client.queue("rout")) == ["X"]


async def test_grouped_commit_with_a_zombie_delivery_spoils_only_that_one(
    make_cluster, monkeypatch
):
    """Completions that finish together commit as ONE transaction; when one of them went
    stale the cluster refuses the group, and the group is retried one delivery per
    transaction: the others commit, the zombie's output is never produced. A refused group
    is retried in halves: (a) and (b, c), which is refused again, then (b) and (c)."""
    cluster = make_cluster(1)
    committed_ids: list[str] = []
    real_commit = AsyncTransaction.commit

    async def recording_commit(self, timeout_s=None):
        committed_ids.append(self.txn_id)
        return await real_commit(self, timeout_s)

    monkeypatch.setattr(AsyncTransaction, "commit", recording_commit)
    async with AsyncClient(cluster.urls, timeout_s=30) as client:
        src, dst = client.queue("gin"), client.queue("gout")
        await src.create()
        await dst.create()
        await src.send_many(["a", "b", "c"])
        a = await src.receive(visibility_timeout_s=60)
        b = await src.receive(visibility_timeout_s=1)  # this worker's lease on b runs out
        c = await src.receive(visibility_timeout_s=60)
        await asyncio.sleep(1.5)
        fresh_b = await src.receive(wait_s=5)  # another worker gets b and commits it
        assert fresh_b.id == b.id
        async with AsyncTransaction(client, txn_id=f"eo:gin:{fresh_b.receipt}") as other:
            other.acknowledge(fresh_b)
            other.send("gout", "B by the other worker")
        committed_ids.clear()

        consumer = exactly_once_consumer(src, lambda m: None, output="gout")
        done = await asyncio.gather(
            *(consumer._complete(m, f"{m.body.upper()} once") for m in (a, b, c))
        )
        assert done == [True, False, True]
        assert committed_ids[0].startswith("eo:gin:group:")  # all three, refused (409)
        assert committed_ids[1] == delivery_txn_id("gin", a)
        assert committed_ids[2].startswith("eo:gin:group:")  # (b, c), refused
        assert committed_ids[3:] == [delivery_txn_id("gin", m) for m in (b, c)]
        assert sorted(await drain(dst)) == ["A once", "B by the other worker", "C once"]
        info = await src.info()
        assert (info["depth"], info["in_flight"], info["acked_total"]) == (0, 0, 3)
