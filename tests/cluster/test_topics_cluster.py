"""Topics and consumer groups on a real 3-node cluster, through the client: idempotent
publishing across a leader kill, pub/sub across groups, partitions shared within a group
and handed over without a skipped record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from cluster import AsyncClient, Client, LocalCluster, NotFound, TransactionAborted
from cluster.topics import GroupSubscriber, TopicRecord

pytestmark = pytest.mark.integration


async def _leader_after(cluster: LocalCluster, not_id: int | None, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = await asyncio.to_thread(cluster.leader)
        if leader is not None and leader.id != not_id:
            return leader.id
        await asyncio.sleep(0.1)
    raise TimeoutError("no new leader")


async def _replicas_agree(cluster: LocalCluster, timeout_s: float = 30) -> None:
    """Every node reaches the same applied index with the same state hash (the logs, their
    partitions, producer sessions and timers are all replicated state)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = set()
        for i in cluster.ids:
            async with AsyncClient([cluster.url(i)], timeout_s=5) as one:
                state = await one.request("GET", "/v1/admin/state")
            found.add((state["applied_index"], state["state_hash"]))
        if len(found) == 1:
            return
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)


async def _read_all(client: AsyncClient, topic: str) -> dict[int, list[TopicRecord]]:
    """Every retained record of every partition, by partition, in offset order."""
    info = await client.topic(topic).info()
    out: dict[int, list[TopicRecord]] = {}
    for part in info["partition_stats"]:
        p, offset = part["partition"], part["log_start"]
        out[p] = []
        while offset < part["high_watermark"]:
            page = await client.topic(topic).fetch(p, offset=offset, max=1000)
            out[p].extend(page.records)
            offset = page.next_offset
    return out


async def test_publishing_across_a_leader_kill_keeps_order_and_has_no_duplicates(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """2,000 keyed publishes from 8 tasks while the leader is SIGKILLed: every record once,
    each key's records in publish order in its partition (the producer session dedups the
    client's retries)."""
    cluster = make_cluster(3)
    keys, per_key = 8, 250
    published: list[tuple[int, int]] = []
    at_kill: list[int] = []
    async with AsyncClient(cluster.urls, timeout_s=30) as client:
        topic = client.topic("orders")
        await topic.create(partitions=3)

        async def producer(k: int) -> None:
            for n in range(per_key):
                published.append(await topic.publish({"k": k, "n": n}, key=f"key-{k}"))

        async def nemesis() -> None:
            while len(published) < 700:
                await asyncio.sleep(0.01)
            leader = await _leader_after(cluster, None)
            await asyncio.to_thread(cluster.kill, leader)
            at_kill.append(len(published))
            await _leader_after(cluster, leader)
            await asyncio.to_thread(cluster.start_node, leader)

        await asyncio.gather(nemesis(), *(producer(k) for k in range(keys)))
        assert len(published) == keys * per_key == len(set(published))
        assert at_kill and at_kill[0] < keys * per_key  # the kill came mid-way
        logs = await _read_all(client, "orders")
        await _replicas_agree(cluster)
    assert sum(len(records) for records in logs.values()) == keys * per_key  # no duplicate
    for p, records in logs.items():
        assert [r.offset for r in records] == list(range(len(records)))
        seen: dict[int, list[int]] = {}
        for r in records:
            assert r.key == f"key-{r.data['k']}"
            seen.setdefault(r.data["k"], []).append(r.data["n"])
        for k, ns in seen.items():
            assert ns == list(range(per_key)), (p, k)  # every record, in order


@pytest.mark.parametrize("protocol", ["http", "raftq"])
async def test_two_groups_each_receive_every_record(cluster3: LocalCluster, protocol: str) -> None:
    """Over HTTP and over the binary protocol (msgpack: values travel as bytes)."""
    total = 2000
    urls = cluster3.urls if protocol == "http" else cluster3.binary_urls
    async with AsyncClient(urls, timeout_s=30) as client:
        topic = client.topic(f"fanout-{protocol}")
        await topic.create(partitions=3)
        for start in range(0, total, 500):
            await asyncio.gather(*(topic.publish(str(i)) for i in range(start, start + 500)))
        got: dict[str, list[int]] = {f"audit-{protocol}": [], f"billing-{protocol}": []}
        subscribers = {
            g: client.subscriber(topic.name, g, lambda r, g=g: got[g].append(int(r.text)))
            for g in got
        }
        runs = [asyncio.create_task(s.run()) for s in subscribers.values()]
        deadline = time.monotonic() + 60
        while any(len(set(v)) < total for v in got.values()):
            assert time.monotonic() < deadline, {g: len(v) for g, v in got.items()}
            await asyncio.sleep(0.1)
        for s in subscribers.values():
            s.stop()
        await asyncio.gather(*runs)
        for group, values in got.items():
            assert sorted(set(values)) == list(range(total)), group
            info = await client.group(group)
            assert all(o["lag"] == 0 for o in info["offsets"]), info
            assert info["members"] == []  # each left when stopped


async def test_members_split_the_partitions_and_a_leave_hands_them_over(
    cluster3: LocalCluster,
) -> None:
    """Three members of one group get two of six partitions each; after one leaves, its
    partitions go on from exactly its committed offsets and no record is skipped."""
    total, group = 1200, "split"
    events: list[tuple[str, int, int]] = []  # (member, partition, offset), in handling order
    async with AsyncClient(cluster3.urls, timeout_s=30) as client:
        topic = client.topic("shared")
        await topic.create(partitions=6)

        def handler_for(member: str) -> Callable[[TopicRecord], None]:
            return lambda r: events.append((member, r.partition, r.offset))

        members: dict[str, GroupSubscriber] = {
            m: client.subscriber(
                "shared", group, handler_for(m), member_id=m, session_timeout_s=3, max_records=20
            )
            for m in ("m1", "m2", "m3")
        }
        runs = {m: asyncio.create_task(s.run()) for m, s in members.items()}
        deadline = time.monotonic() + 30
        while True:  # everyone joined and took its share
            try:
                info = await client.group(group)
            except NotFound:  # no member has joined yet
                await asyncio.sleep(0.05)
                continue
            shares = [s.partitions for s in members.values()]
            settled = all(s.generation == info["generation"] for s in members.values())
            if len(info["members"]) == 3 and settled and all(len(p) == 2 for p in shares):
                break
            assert time.monotonic() < deadline, (info, shares)
            await asyncio.sleep(0.1)
        assert sorted(p for s in members.values() for p in s.partitions) == list(range(6))
        for start in range(0, total, 300):
            await asyncio.gather(*(topic.publish(str(i)) for i in range(start, start + 300)))
            await asyncio.sleep(0.2)
            if start == 300:  # m1 leaves while records keep coming
                leaver_parts = members["m1"].partitions
                members["m1"].stop()
                await runs.pop("m1")
                info = await client.group(group)
                committed = {p: info["offsets"][p]["committed"] for p in leaver_parts}
                mark = len(events)
        deadline = time.monotonic() + 60
        while True:
            info = await client.group(group)
            if all(o["lag"] == 0 for o in info["offsets"]):
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.2)
        for s in members.values():
            s.stop()
        await asyncio.gather(*runs.values())
        hw = {o["partition"]: o["high_watermark"] for o in info["offsets"]}
    assert sum(hw.values()) == total
    handled = {(p, o) for _m, p, o in events}
    assert handled == {(p, o) for p in hw for o in range(hw[p])}  # nothing skipped
    after = events[mark:]
    assert not any(m == "m1" for m, _p, _o in after)
    for p in leaver_parts:
        resumed = [o for m, q, o in after if q == p]
        expected = committed[p] if committed[p] is not None else 0
        assert resumed and min(resumed) == expected, (p, committed, resumed[:5])


def test_a_client_transaction_publishes_and_commits_offsets_once(cluster3: LocalCluster) -> None:
    """Consume-transform-produce on topics with the blocking client: the output records and
    the input offset commit together; a zombie of an older generation commits nothing."""
    with Client(cluster3.servers, timeout_s=30) as client:
        client.topic("tx-in").create(partitions=1)
        client.topic("tx-out").create(partitions=1)
        client.topic("tx-in").publish_many(["a", "b"])
        joined = client.request(
            "POST", "/v1/groups/tx-g/join", json_body={"topic": "tx-in", "member_id": "w1"}
        )
        page = client.topic("tx-in").fetch(0)
        with client.transaction("tx-batch-1") as txn:
            for record in page.records:
                txn.publish("tx-out", record.text.upper(), key=record.text)
            txn.commit_offset("tx-g", joined["generation"], "tx-in", 0, page.next_offset, "w1")
        assert txn.result is not None and not txn.result.duplicate
        again = client.transaction("tx-batch-1")
        again.publish("tx-out", "A")
        assert again.commit().duplicate  # the same txn id applies nothing twice
        assert [r.text for r in client.topic("tx-out").fetch(0).records] == ["A", "B"]
        assert client.group("tx-g")["offsets"][0]["committed"] == 2
        client.request(
            "POST", "/v1/groups/tx-g/join", json_body={"topic": "tx-in", "member_id": "w2"}
        )
        zombie = client.transaction()
        zombie.publish("tx-out", "late")
        zombie.commit_offset("tx-g", joined["generation"], "tx-in", 0, 2)
        with pytest.raises(TransactionAborted):
            zombie.commit()
        assert client.topic("tx-out").info()["partition_stats"][0]["high_watermark"] == 2


async def test_a_member_without_partitions_waits_and_takes_over(cluster3: LocalCluster) -> None:
    """Two members, one partition: the second idles (without spinning the loop) until the
    first leaves, then reads on from the first's committed offset."""
    seen: dict[str, list[int]] = {"first": [], "second": []}
    async with AsyncClient(cluster3.urls, timeout_s=30) as client:
        topic = client.topic("single")
        await topic.create(partitions=1)
        await topic.publish_many([str(i) for i in range(10)])
        first = client.subscriber(
            "single", "solo", lambda r: seen["first"].append(r.offset), member_id="a", wait_s=0.5
        )
        second = client.subscriber(
            "single", "solo", lambda r: seen["second"].append(r.offset), member_id="b", wait_s=0.5
        )
        runs = [asyncio.create_task(first.run())]
        while len(seen["first"]) < 10:
            await asyncio.sleep(0.05)
        runs.append(asyncio.create_task(second.run()))
        ticks = 0
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # the loop stays responsive meanwhile
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks > 50 and seen["second"] == []
        first.stop()
        await runs[0]
        await topic.publish_many([str(i) for i in range(10, 15)])
        deadline = time.monotonic() + 20
        while len(seen["second"]) < 5:
            assert time.monotonic() < deadline, seen
            await asyncio.sleep(0.05)
        second.stop()
        await runs[1]
    assert seen["first"] == list(range(10)) and seen["second"] == list(range(10, 15))
