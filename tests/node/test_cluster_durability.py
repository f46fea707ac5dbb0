"""Issue 3's durability promises on 3 real node processes.

- Every message whose send was acknowledged is received at least once, even when the
  leader is killed with SIGKILL in the middle of the load.
- A restart of all three nodes (graceful, or SIGKILL of all at once) leaves every queue's
  depth and contents unchanged.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from cluster import AsyncClient
from tests.support.queues import drain

pytestmark = pytest.mark.integration


async def test_no_acknowledged_message_lost_when_leader_killed(make_cluster):
    cluster = make_cluster(3)
    total, workers = 5000, 32
    acked: set[str] = set()
    killed: list[int] = []
    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        q = client.queue("durable")
        await q.create(visibility_timeout_s=60)
        next_i = iter(range(total))

        async def producer() -> None:
            for i in next_i:
                body = f"m-{i}"
                await q.send(body)  # retries inside its deadline with the same dedup id
                acked.add(body)
                if len(acked) >= total // 3 and not killed:
                    leader = cluster.leader()
                    killed.append(leader.id)
                    cluster.kill(leader.id, signal.SIGKILL)

        await asyncio.wait_for(asyncio.gather(*(producer() for _ in range(workers))), 240)
        assert killed, "the leader was never killed"
        cluster.restart(killed[0])
        received = await asyncio.wait_for(drain(q), 240)

    assert len(acked) == total
    lost = acked - set(received)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
    # dedup ids make the client's retries idempotent: nothing arrived twice either
    assert len(received) == len(set(received))


@pytest.mark.parametrize("how", ["graceful", "kill_all"])
async def test_restart_all_nodes_keeps_depth_and_contents(make_cluster, how):
    cluster = make_cluster(3)
    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        dlq = client.queue("keep-dlq")
        await dlq.create()
        q = client.queue("keep")
        await q.create(visibility_timeout_s=120, max_receives=1, dead_letter_queue="keep-dlq")
        await q.send_many([f"k-{i}" for i in range(300)])
        leased = await q.receive(max=40)  # in flight across the restart
        assert len(leased) == 40
        before = {name: await client.queue(name).info() for name in ("keep", "keep-dlq")}

    if how == "graceful":
        cluster.stop_all()
    else:
        for node_id in cluster.ids:
            cluster.kill(node_id, signal.SIGKILL)
    cluster.start()
    cluster.wait_for_leader(timeout_s=30)

    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        q = client.queue("keep")
        after = {name: await client.queue(name).info() for name in ("keep", "keep-dlq")}
        for name in before:
            for key in ("depth", "in_flight", "delayed", "sent_total", "acked_total"):
                assert after[name][key] == before[name][key], (name, key)
        # the leases survived: acking them with the old receipts works
        result = await q.acknowledge_many(leased)
        assert result.acked == 40
        remaining = await drain(q)
    assert sorted(remaining) == sorted(f"k-{i}" for i in range(40, 300))
