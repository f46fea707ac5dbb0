"""Three real demo node processes (benchmarks.demo) on loopback: commit, kill -9 the leader, fail over, catch up.

What it proves: nothing acknowledged is lost across a kill -9 of the leader, a new leader
comes up within 3 s, the killed node restarts from its LMDB files and catches up, and
afterwards the three logs ((index, term, crc) of every entry) and KV states are identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from benchmarks.demo.control_client import ControlClient, ControlError
from benchmarks.demo.launcher import DemoCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

N_PROPOSALS = 10_000


async def connect_all(cluster: DemoCluster, ids: list[int]) -> dict[int, ControlClient]:
    return {i: await cluster.connect(i) for i in ids}


async def wait_caught_up(
    clients: dict[int, ControlClient], index: int, timeout_s: float = 20.0
) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            sts = await asyncio.gather(*(c.request("status") for c in clients.values()))
            if all(s["applied"] >= index for s in sts):
                return
            await asyncio.sleep(0.05)


class Workload:
    """Proposes unique keys to whoever leads, following leader changes; records acks."""

    def __init__(self, cluster: DemoCluster, clients: dict[int, ControlClient]) -> None:
        self.cluster = cluster
        self.clients = clients
        self.acked: dict[bytes, int] = {}  # command -> the index the state machine answered
        self.failed = 0
        self.attempted = 0
        self.stop = asyncio.Event()

    async def run(self, prefix: str) -> None:
        seq = 0
        target = next(iter(self.clients))
        while not self.stop.is_set():
            batch = [f"S{prefix}{seq + j}\x00v".encode() for j in range(20)]
            seq += 20
            self.attempted += len(batch)
            client = self.clients.get(target)
            try:
                if client is None:
                    raise ConnectionError("no client")
                results = await client.request("propose_many", batch, timeout_s=2.0)
            except ControlError as exc:
                self.failed += len(batch)
                hint = exc.value.get("leader_id")
                if exc.code == "not_leader" and hint in self.clients:
                    target = hint
                else:
                    await asyncio.sleep(0.02)
                continue
            except (ConnectionError, TimeoutError):
                self.failed += len(batch)
                alive = [i for i in self.clients if i != target]
                target = alive[seq // 20 % len(alive)] if alive else target
                await asyncio.sleep(0.02)
                continue
            for cmd, (ok, value) in zip(batch, results, strict=True):
                if ok:
                    self.acked[cmd] = value
                else:
                    self.failed += 1
                    if value.get("error") == "not_leader" and value.get("leader_id"):
                        target = value["leader_id"]


def check_acked_in_log(acked: dict[bytes, int], log_dump: list[list[int]]) -> None:
    by_index = {index: crc for index, _term, crc in log_dump}
    lost = [cmd for cmd, index in acked.items() if by_index.get(index) != zlib.crc32(cmd)]
    assert not lost, f"{len(lost)} acknowledged entries lost or changed, e.g. {lost[:3]}"


async def test_kill_leader_no_acked_entry_lost_and_logs_converge(tmp_path: Path) -> None:
    cluster = DemoCluster(str(tmp_path), 3, fsync=True, tick_ms=50, election_ticks=10)
    clients: dict[int, ControlClient] = {}
    try:
        cluster.start()
        clients = await connect_all(cluster, [1, 2, 3])
        leader = await cluster.wait_leader(clients)

        # 1. 10,000 concurrent proposals through the leader's control interface.
        acked: dict[bytes, Any] = {}
        cmds = [f"Sk{i}\x00value-{i}".encode() for i in range(N_PROPOSALS)]
        async with asyncio.timeout(40):
            results = await asyncio.gather(*(clients[leader].propose_batched(c) for c in cmds))
        acked.update(zip(cmds, results, strict=True))
        assert len(set(results)) == N_PROPOSALS  # each answered with its own log index

        # 2. Keep proposing across a kill -9 of the leader.
        workload = Workload(cluster, dict(clients))
        load_task = asyncio.create_task(workload.run("c"))
        await asyncio.sleep(0.3)
        old_leader = leader
        cluster.kill(old_leader)
        killed_at = time.monotonic()
        await clients.pop(old_leader).close()
        workload.clients.pop(old_leader)
        new_leader = await cluster.wait_leader(clients, timeout_s=10.0, poll_s=0.01)
        failover_s = time.monotonic() - killed_at
        assert new_leader != old_leader
        assert failover_s < 3.0, f"new leader after {failover_s:.2f} s"
        await asyncio.sleep(0.5)  # the workload commits on the new leader
        workload.stop.set()
        await asyncio.wait_for(load_task, 10)
        assert len(workload.acked) > 0
        acked.update(workload.acked)

        # 3. No acknowledged entry lost on the survivors.
        dump = await clients[new_leader].request("log", None, timeout_s=30)
        check_acked_in_log(acked, dump)
        keys = set(await clients[new_leader].request("kv_keys", None, timeout_s=30))
        missing = [c for c in acked if c[1:].partition(b"\x00")[0] not in keys]
        assert not missing, f"{len(missing)} acknowledged keys missing, e.g. {missing[:3]}"

        # 4. The old leader restarts from its files and catches up.
        cluster.start_node(old_leader)
        clients[old_leader] = await cluster.connect(old_leader)
        final_index = await clients[new_leader].request("propose", b"Sfinal\x00done")
        await wait_caught_up(clients, final_index)

        # 5. Identical logs (index, term, crc) and identical KV state everywhere.
        dumps = await asyncio.gather(
            *(c.request("log", None, timeout_s=30) for c in clients.values())
        )
        assert dumps[0][-1][0] >= final_index
        assert all(d == dumps[0] for d in dumps), "logs differ between nodes"
        check_acked_in_log(acked, dumps[0])
        summaries = await asyncio.gather(*(c.request("kv_summary") for c in clients.values()))
        assert all(s == summaries[0] for s in summaries), summaries
        # Every acked key is there; unacked ones (in flight at the kill) may have committed too.
        n_acked_keys = len({c.partition(b"\x00")[0] for c in acked})
        assert n_acked_keys + 1 <= summaries[0]["keys"] <= N_PROPOSALS + workload.attempted + 1
    finally:
        for c in clients.values():
            with contextlib.suppress(Exception):
                await c.close()
        cluster.stop()


async def test_leader_crash_between_log_write_and_ack_loses_nothing(tmp_path: Path) -> None:
    """A leader dies right after an fsynced append, before any ack: the failpoint form of
    the classic lost-acknowledgement bug. Acked entries survive; all logs converge."""
    cluster = DemoCluster(str(tmp_path), 3, fsync=True, tick_ms=50, election_ticks=10)
    clients: dict[int, ControlClient] = {}
    try:
        cluster.start()
        clients = await connect_all(cluster, [1, 2, 3])
        first = await cluster.wait_leader(clients)
        victim = next(i for i in clients if i != first)
        # Restart the victim armed to crash at its 30th persist, then make it the leader.
        cluster.kill(victim)
        await clients.pop(victim).close()
        cluster.start_node(victim, env={"RAFTQ_FAILPOINT": "raft.after_persist_before_ack:30"})
        clients[victim] = await cluster.connect(victim)
        async with asyncio.timeout(15):
            while True:
                with contextlib.suppress(ControlError, TimeoutError):
                    await clients[first].request("transfer", victim, timeout_s=3)
                if await cluster.wait_leader(clients) == victim:
                    break
        workload = Workload(cluster, dict(clients))
        load_task = asyncio.create_task(workload.run("f"))
        assert await cluster.wait_exit(victim, 20) == 137  # the failpoint fired
        await clients.pop(victim).close()
        workload.clients.pop(victim)
        new_leader = await cluster.wait_leader(clients, timeout_s=10)
        await asyncio.sleep(0.3)
        workload.stop.set()
        await asyncio.wait_for(load_task, 10)
        assert workload.acked, "nothing was acknowledged"

        cluster.start_node(victim)
        clients[victim] = await cluster.connect(victim)
        final_index = await clients[new_leader].request("propose", b"Sfinal\x00done")
        await wait_caught_up(clients, final_index)
        dumps = await asyncio.gather(*(c.request("log", None) for c in clients.values()))
        assert all(d == dumps[0] for d in dumps), "logs differ between nodes"
        check_acked_in_log(workload.acked, dumps[0])
        summaries = await asyncio.gather(*(c.request("kv_summary") for c in clients.values()))
        assert all(s == summaries[0] for s in summaries), summaries
    finally:
        for c in clients.values():
            with contextlib.suppress(Exception):
                await c.close()
        cluster.stop()
