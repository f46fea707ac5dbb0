"""`raftq bench failover`: how long sends stop when the leader dies or hangs.

The issue's measure: from a `kill -9` of the leader (or a SIGSTOP, which a client cannot
tell from a slow node) to the first send the cluster acknowledges, through the client
library with its default timeouts and protocol (raftq://), as an application sees it.
Four tasks send one message at a time on one `AsyncClient`, so sends start
continuously; the time is that of the
first send started after the fault that succeeds. Between trials the node is started
again (or continued) and the cluster settles, so each trial starts from a healthy cluster.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

from benchmarks.queue_workloads import Result
from cluster.client import AsyncClient
from cluster.launcher import LocalCluster

SENDERS = 4
SETTLE_S = 1.0


async def _one_trial(cluster: LocalCluster, client: AsyncClient, hang: bool) -> float:
    queue = client.queue("bench-failover")
    leader = await asyncio.to_thread(cluster.wait_for_leader, 30.0)
    fault_at: float | None = None
    first_ok: list[float] = []
    done = asyncio.Event()

    async def sender() -> None:
        while not done.is_set():
            started = time.monotonic()
            try:
                await queue.send(b"x")
            except Exception:  # the client gave up on this one; the next one counts
                continue
            if fault_at is not None and started >= fault_at:
                first_ok.append(time.monotonic() - fault_at)
                done.set()

    tasks = [asyncio.ensure_future(sender()) for _ in range(SENDERS)]
    try:
        await asyncio.sleep(SETTLE_S)  # steady sending before the fault
        fault_at = time.monotonic()
        cluster.kill(leader.id, signal.SIGSTOP if hang else signal.SIGKILL)
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        done.set()
        if hang:
            cluster.kill(leader.id, signal.SIGCONT)
        await asyncio.gather(*tasks, return_exceptions=True)
    if not hang:
        cluster.start_node(leader.id)
    await asyncio.to_thread(cluster.wait_ready, leader.id, 30.0)
    await asyncio.sleep(SETTLE_S)
    return min(first_ok)


async def measure(cluster: LocalCluster, trials: int) -> list[Result]:
    """`trials` kills and `trials` hangs of the leader, alternating; one Result for each."""
    times: dict[bool, list[float]] = {False: [], True: []}
    async with AsyncClient(cluster.binary_urls) as client:
        await client.queue("bench-failover").create()
        for _ in range(trials):
            for hang in (False, True):
                times[hang].append(await _one_trial(cluster, client, hang))
    results = []
    for hang, label, fault in (
        (False, "failover-kill", "kill -9"),
        (True, "failover-stop", "SIGSTOP"),
    ):
        got = times[hang]
        results.append(
            Result(
                label,
                len(got),
                len(got),
                sum(got),
                [t * 1000 for t in got],
                0,
                f"{fault} of the leader -> first send acked: median {statistics.median(got):.2f}s, "
                f"max {max(got):.2f}s over {len(got)} trials",
            )
        )
    return results
