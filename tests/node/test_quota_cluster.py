"""Issue 16 §4 on real node processes: the disk quota alarm rises and clears, and a node
whose LMDB cannot grow stops cleanly while the other two go on.

- With a small `--quota-bytes`, sends end in `507 insufficient_storage` (nothing proposed
  for them); receives, acks, purges and deletes still work; metrics and `GET /v1/cluster`
  show the use, the quota and the alarm; a purge (or deleting the queue) frees the state
  machine's pages and the alarm clears by itself.
- A follower (then the leader) restarted with a `--max-map-bytes` barely above its data
  stops with one clear `node.disk_full` line and a non-zero exit; no acknowledged message
  is lost; restarted with a larger ceiling it opens the same data and catches up.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import AsyncClient
from cluster.launcher import LocalCluster, free_ports
from tests.support.api_client import ApiClient
from tests.support.queues import drain

pytestmark = pytest.mark.integration

QUOTA = 2 << 20
BATCH = [{"body": "x" * 1000} for _ in range(50)]  # ~50 KB of bodies per request
MAX_FILL_REQUESTS = 300  # 15 MB of bodies: far past the quota


async def _fill(api: ApiClient, queue: str) -> dict:
    """Send batches until the quota refuses one; the refusal's body."""
    for _ in range(MAX_FILL_REQUESTS):
        status, body = await api.post(f"/v1/queues/{queue}/messages", {"messages": BATCH})
        if status == 507:
            return body
        assert status == 200, (status, body)
    raise AssertionError(f"no 507 after {MAX_FILL_REQUESTS} sends with a {QUOTA}-byte quota")


async def _metrics(api: ApiClient) -> dict[str, float]:
    status, text = await api.text("/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line.startswith("raftq_disk_"):
            name, value = line.split()
            out[name] = float(value)
    return out


async def _wait_alarm(api: ApiClient, alarm: bool, timeout_s: float = 10.0) -> dict:
    """Poll this node's `disk` view until its alarm is `alarm` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, view = await api.get("/v1/cluster")
        assert status == 200
        if view["disk"]["alarm"] is alarm:
            return view["disk"]
        assert time.monotonic() < deadline, f"alarm still {view['disk']} after {timeout_s}s"
        await asyncio.sleep(0.1)


async def _state(api: ApiClient) -> dict:
    status, state = await api.get("/v1/admin/state")
    assert status == 200
    return state


async def test_quota_alarm_rises_and_clears(make_cluster):
    cluster = make_cluster(3, extra_args=("--quota-bytes", str(QUOTA)))
    leader = cluster.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster.ids if i != leader.id)
    async with ApiClient(leader.url) as lead, ApiClient(cluster.url(follower)) as other:
        for name in ("q", "side"):
            assert (await lead.put(f"/v1/queues/{name}", {}))[0] == 201
        assert (await lead.post("/v1/queues/side/messages", {"messages": BATCH[:5]}))[0] == 200
        view = (await lead.get("/v1/cluster"))[1]["disk"]
        assert view == {"used_bytes": view["used_bytes"], "quota_bytes": QUOTA, "alarm": False}

        refused = await _fill(lead, "q")
        err = refused["error"]
        assert err["code"] == "insufficient_storage"
        assert err["quota_bytes"] == QUOTA and err["used_bytes"] >= QUOTA
        assert str(QUOTA) in err["message"] and "--quota-bytes" in err["message"]
        assert "acks, deletes and purges still work" in err["message"]

        # Every request that adds data is refused, and nothing is proposed for it. (The
        # leader records each member's incarnation through the log once it has heard from
        # it: wait for that, so the applied index moves only for a proposal of ours.)
        deadline = time.monotonic() + 10
        while not all(
            m["incarnation"] for m in (await lead.get("/v1/cluster/members"))[1]["members"]
        ):
            assert time.monotonic() < deadline, "incarnations never recorded"
            await asyncio.sleep(0.1)
        before = await _state(lead)
        one = {"messages": [{"body": "one more"}]}
        for api, method, path, body in (
            (lead, "POST", "/v1/queues/q/messages", one),
            (other, "POST", "/v1/queues/q/messages", one),  # forwarded: the leader refuses
            (lead, "POST", "/v1/queues/q/messages?ack=none", one),  # not 202 and lost
            (lead, "PUT", "/v1/queues/new-queue", {}),
            (other, "PUT", "/v1/queues/new-queue", {}),
            (lead, "POST", "/v1/producers", {}),
            (lead, "POST", "/v1/transactions", {"txn_id": "t1", "send": [{"queue": "q", **one}]}),
        ):
            status, answer = await api.call(method, path, body)
            assert status == 507, (method, path, status, answer)
            assert answer["error"]["code"] == "insufficient_storage"
        await asyncio.sleep(0.3)  # a proposal, had one been made, would have applied
        assert await _state(lead) == before

        # Metrics: every node exposes its use and quota; the leader's alarm is up.
        for node_id in cluster.ids:
            async with ApiClient(cluster.url(node_id)) as api:
                m = await _metrics(api)
                assert m["raftq_disk_quota_bytes"] == QUOTA
                assert m["raftq_disk_used_bytes"] > 0
                assert m["raftq_disk_quota_alarm"] in (0, 1)
                disk = (await api.get("/v1/cluster"))[1]["disk"]
                assert set(disk) == {"used_bytes", "quota_bytes", "alarm"}
        m = await _metrics(lead)
        assert m["raftq_disk_quota_alarm"] == 1 and m["raftq_disk_used_bytes"] >= QUOTA

        # What drains or frees still works past the quota.
        status, got = await lead.post("/v1/queues/q/receive", {"max": 10})
        assert status == 200 and len(got["messages"]) == 10
        receipts = [m["receipt"] for m in got["messages"]]
        assert (await lead.post("/v1/queues/q/extend", {"receipts": receipts[:2]}))[0] == 200
        assert (await lead.post("/v1/queues/q/nack", {"receipts": receipts[2:4]}))[0] == 200
        assert (await lead.post("/v1/queues/q/ack", {"receipts": receipts[4:8]}))[0] == 200
        ack_only = {"txn_id": "t2", "ack": [{"queue": "q", "receipt": receipts[8]}]}
        assert (await lead.post("/v1/transactions", ack_only))[0] == 200
        assert (await other.post("/v1/queues/q/ack", {"receipts": receipts[9:]}))[0] == 200
        assert (await lead.put("/v1/queues/q", {"visibility_timeout_s": 60}))[0] == 200
        assert (await lead.post("/v1/queues/side/purge", {}))[0] == 200

        # A purge frees the state machine's pages: the alarm clears by itself.
        assert (await lead.post("/v1/queues/q/purge", {}))[0] == 200
        cleared = await _wait_alarm(lead, False)
        assert cleared["used_bytes"] < QUOTA * 0.95
        assert (await _metrics(lead))["raftq_disk_quota_alarm"] == 0
        assert (await other.post("/v1/queues/q/messages", one))[0] == 200

        # Fill again; deleting the queue clears it too, and a new queue can be made.
        await _fill(lead, "q")
        await _wait_alarm(lead, True)
        assert (await lead.delete("/v1/queues/q"))[0] == 200
        await _wait_alarm(lead, False)
        assert (await lead.put("/v1/queues/q2", {}))[0] == 201
        assert (await lead.post("/v1/queues/q2/messages", one))[0] == 200

    logs = cluster.specs[leader.id].log_path.read_text()
    events = [json.loads(line) for line in logs.splitlines() if '"node.quota_alarm"' in line]
    assert [e["state"] for e in events] == ["raised", "cleared", "raised", "cleared"]
    assert all(e["quota_bytes"] == QUOTA and "used_bytes" in e for e in events)


# ---------------------------------------------------------------- disk full


class _PerNodeArgs(LocalCluster):
    """A LocalCluster where one node can run with extra flags (its own LMDB ceiling)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.node_args: dict[int, list[str]] = {}

    def command(self, node_id: int) -> list[str]:
        return super().command(node_id) + self.node_args.get(node_id, [])


@pytest.fixture
def cluster3_args(tmp_path: Path) -> Iterator[_PerNodeArgs]:
    ports = free_ports(6)
    cluster = _PerNodeArgs(3, tmp_path / "c", http_port=ports[:3], raft_port=ports[3:])
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        yield cluster
    finally:
        cluster.stop_all()


def _critical_events(log_path: Path, since: int) -> list[dict]:
    text = log_path.read_bytes()[since:].decode()
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("level") == "critical":
            out.append(record)
    return out


@pytest.mark.parametrize("victim_role", ["follower", "leader"])
async def test_a_node_whose_map_is_full_stops_cleanly_and_the_others_go_on(
    cluster3_args, victim_role
):
    cluster = cluster3_args
    leader = cluster.wait_for_leader(timeout_s=30)
    victim = (
        leader.id if victim_role == "leader" else next(i for i in cluster.ids if i != leader.id)
    )
    acked: list[str] = []
    async with AsyncClient(cluster.urls, timeout_s=60) as client:
        q = client.queue("full")
        await q.create(visibility_timeout_s=120)
        await q.send_many([f"before-{i}" for i in range(100)])
        acked += [f"before-{i}" for i in range(100)]

        # Restart the victim with a ceiling barely above its data (the chaos scenario's
        # way), and a quota above it, so the map fills instead of the quota refusing.
        cluster.stop(victim)
        data_file = cluster.specs[victim].data_dir / "lmdb" / "data.mdb"
        ceiling = os.path.getsize(data_file) + (256 << 10)
        cluster.node_args[victim] = ["--max-map-bytes", str(ceiling), "--quota-bytes", str(1 << 40)]
        log_offset = cluster.specs[victim].log_path.stat().st_size
        cluster.start_node(victim)
        cluster.wait_ready(victim, timeout_s=30)
        if victim_role == "leader":
            async with ApiClient(cluster.url(cluster.wait_for_leader().id)) as api:
                status, _ = await api.post("/v1/cluster/transfer-leader", {"to": victim})
                assert status == 200
            assert cluster.wait_for_leader(timeout_s=30).id == victim

        for round_no in range(200):  # each round ~25 KB: the ceiling is ~256 KB away
            if cluster.returncodes()[victim] is not None:
                break
            bodies = [f"r{round_no}-{i}-" + "y" * 500 for i in range(50)]
            await q.send_many(bodies)  # retried with the same dedup ids across a failover
            acked += bodies
        deadline = time.monotonic() + 30
        while cluster.returncodes()[victim] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        code = cluster.returncodes()[victim]
        assert code not in (None, 0), f"node {victim} did not stop (code {code})"

        # One clear line, first: what `raftq up` reports as the reason.
        reason = cluster.exit_reason(victim)
        assert reason is not None and reason.startswith("node.disk_full: "), reason
        assert "--max-map-bytes" in reason and "data is intact" in reason
        critical = _critical_events(cluster.specs[victim].log_path, log_offset)
        events = [e["event"] for e in critical]
        assert events.count("node.disk_full") == 1 and events[0] == "node.disk_full"
        assert "node.raft_failed" not in events  # said once, by node.disk_full

        # The other two go on.
        await q.send_many([f"after-{i}" for i in range(100)])
        acked += [f"after-{i}" for i in range(100)]

        # A larger ceiling opens the same data; the node catches up and agrees.
        cluster.node_args.pop(victim)
        cluster.start_node(victim)
        cluster.wait_ready(victim, timeout_s=30)
        async with (
            ApiClient(cluster.url(victim)) as api,
            ApiClient(cluster.url(cluster.wait_for_leader().id)) as lead,
        ):
            deadline = time.monotonic() + 30
            while True:
                mine, theirs = await _state(api), await _state(lead)
                if mine == theirs:
                    break
                assert time.monotonic() < deadline, (mine, theirs)
                await asyncio.sleep(0.2)

        received = await asyncio.wait_for(drain(q), 120)
    lost = set(acked) - set(received)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:5]}"
