"""Snapshots and log compaction on real node processes.

A follower that was down while the others compacted their logs comes back, is streamed
the leader's state in chunks, installs it and ends with the same state hash; a crash in
the middle of an install (before or after its transaction) still converges; and under a
steady send+ack load the data files level off instead of growing with every entry.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cluster.launcher import LocalCluster
from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration

SMALL_LOG = ("--snapshot-entries", "60", "--snapshot-trailing", "20")


async def view(cluster: LocalCluster, node_id: int) -> dict:
    async with ApiClient(cluster.url(node_id)) as api:
        _, body = await api.get("/v1/cluster")
        return body


async def state_hashes(cluster: LocalCluster) -> set[str]:
    hashes = set()
    for node_id in cluster.running():
        async with ApiClient(cluster.url(node_id)) as api:
            _, body = await api.get("/v1/admin/state")
            hashes.add(body["state_hash"])
    return hashes


async def wait_caught_up(cluster: LocalCluster, node_id: int, timeout_s: float = 60.0) -> dict:
    """Wait until `node_id` has applied what the leader committed; its /v1/cluster view."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        leader = cluster.leader()
        try:
            mine = await view(cluster, node_id)
            lead = await view(cluster, leader.id) if leader else None
        except OSError:
            mine, lead = None, None
        if mine and lead and mine["applied_index"] >= lead["commit_index"]:
            return mine
        if loop.time() > deadline:
            raise AssertionError(f"node {node_id} did not catch up: {mine} vs {lead}")
        await asyncio.sleep(0.2)


async def fill_while_down(cluster: LocalCluster, queue: str, rounds: int) -> None:
    """Sends one request at a time, so the leader's pipeline to a stopped peer fills and
    it stops sending to it, then compacts past what it sent."""
    leader = cluster.wait_for_leader()
    async with ApiClient(leader.url) as api:
        for i in range(rounds):
            status, _ = await api.post(
                f"/v1/queues/{queue}/messages",
                {"messages": [{"body": f"m{i}-{k}"} for k in range(4)]},
            )
            assert status == 200
            if i % 3 == 0:
                _, got = await api.post(f"/v1/queues/{queue}/receive", {"max": 4})
                receipts = [m["receipt"] for m in got["messages"]]
                if receipts:
                    await api.post(f"/v1/queues/{queue}/ack", {"receipts": receipts})


async def test_a_follower_that_missed_compacted_entries_installs_a_snapshot(make_cluster) -> None:
    cluster = make_cluster(3, SMALL_LOG)
    leader = cluster.wait_for_leader()
    victim = next(i for i in cluster.ids if i != leader.id)
    async with ApiClient(leader.url) as api:
        assert (await api.put("/v1/queues/snap", {}))[0] == 201
    cluster.stop(victim)
    await fill_while_down(cluster, "snap", 400)
    lead = await view(cluster, cluster.wait_for_leader().id)
    assert lead["first_index"] > 300  # the leader compacted what the victim never got
    cluster.start_node(victim)
    mine = await wait_caught_up(cluster, victim)
    assert mine["snapshots"]["installed"] >= 1
    assert mine["first_index"] > lead["snapshot_index"] - 100
    assert len(await state_hashes(cluster)) == 1
    # ...and it goes on from the log afterwards
    await fill_while_down(cluster, "snap", 30)
    await wait_caught_up(cluster, victim)
    assert len(await state_hashes(cluster)) == 1


@pytest.mark.parametrize("failpoint", ["raft.before_install", "raft.after_install"])
async def test_a_crash_in_the_middle_of_an_install_still_converges(
    make_cluster, failpoint: str
) -> None:
    cluster = make_cluster(3, SMALL_LOG)
    leader = cluster.wait_for_leader()
    victim = next(i for i in cluster.ids if i != leader.id)
    async with ApiClient(leader.url) as api:
        await api.put("/v1/queues/crash", {})
    cluster.stop(victim)
    await fill_while_down(cluster, "crash", 350)
    cluster.start_node(victim, env={"RAFTQ_FAILPOINT": failpoint})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while victim in cluster.running() and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert cluster.returncodes()[victim] == 137, "the failpoint never fired"
    log_text = cluster.specs[victim].log_path.read_text()
    assert f'"failpoint": "{failpoint}"' in log_text or failpoint in log_text
    cluster.start_node(victim)  # a normal restart on whatever the crash left
    await wait_caught_up(cluster, victim)
    assert len(await state_hashes(cluster)) == 1
    snapshot_dir = cluster.specs[victim].data_dir / "snapshots"
    leftovers = [p.name for p in snapshot_dir.iterdir() if p.suffix in (".part", ".tmp")]
    assert leftovers == []


async def test_admin_snapshot_writes_and_compacts(make_cluster) -> None:
    cluster = make_cluster(3, ("--snapshot-entries", "0", "--snapshot-trailing", "5"))
    leader = cluster.wait_for_leader()
    async with ApiClient(leader.url) as api:
        await api.put("/v1/queues/adm", {})
        for i in range(40):
            await api.post("/v1/queues/adm/messages", {"messages": [{"body": str(i)}]})
        before = (await api.get("/v1/cluster"))[1]
        assert before["first_index"] == 1  # snapshot_entries 0: never compacts by itself
        status, snap = await api.post("/v1/admin/snapshot", {})
        assert status == 200 and snap["snapshot_index"] == before["applied_index"]
        assert snap["bytes"] > 40 and snap["compact_to"] == snap["snapshot_index"] - 5
        for _ in range(50):  # compaction runs in the storage step, between writes
            after = (await api.get("/v1/cluster"))[1]
            if after["first_index"] == snap["compact_to"] + 1:
                break
            await asyncio.sleep(0.1)
        assert after["first_index"] == snap["compact_to"] + 1
        assert after["snapshots"]["written"] == 1 and after["snapshots"]["latest_index"]
    files = list((cluster.specs[leader.id].data_dir / "snapshots").iterdir())
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)  # every message


def data_file_bytes(data_dir: Path) -> int:
    return sum(os.path.getsize(p) for p in data_dir.rglob("*.mdb"))


async def test_under_steady_send_and_ack_the_data_files_level_off(make_cluster) -> None:
    """200,000 messages sent and acked (1,000 rounds of 200): the second half of the run
    grows the data files by less than 10%: compaction and acks free what new entries use."""
    cluster = make_cluster(3, ("--snapshot-entries", "200", "--snapshot-trailing", "50"))
    leader = cluster.wait_for_leader()
    batch, rounds = 200, 1000
    sizes = []
    async with ApiClient(leader.url) as api:
        await api.put("/v1/queues/steady", {})
        for i in range(rounds):
            status, _ = await api.post(
                "/v1/queues/steady/messages",
                {"messages": [{"body": f"{i:06d}-{k:03d}-" + "x" * 80} for k in range(batch)]},
            )
            assert status == 200
            _, got = await api.post("/v1/queues/steady/receive", {"max": batch})
            receipts = [m["receipt"] for m in got["messages"]]
            status, acked = await api.post("/v1/queues/steady/ack", {"receipts": receipts})
            assert status == 200 and acked["acked"] == len(receipts) == batch
            if (i + 1) % 50 == 0:
                sizes.append(data_file_bytes(cluster.data_dir))
        end = (await api.get("/v1/cluster"))[1]
        _, info = await api.get("/v1/queues/steady")
    assert info["sent_total"] == info["acked_total"] == batch * rounds
    assert end["first_index"] > end["last_index"] - 300  # the log keeps only its tail
    half, full = sizes[len(sizes) // 2 - 1], sizes[-1]
    assert full < half * 1.10, f"data files grew from {half} to {full} bytes"
