"""Membership on real node processes: a node joins with `--join` (catching up by snapshot)
and is promoted; the cluster grows 3 → 5 and shrinks back to 3 under a steady send load,
removing its leader on the way, without losing an acknowledged message; a follower whose
data dir was wiped comes back as a new incarnation and is swapped in by the leader on its
own; the `raftq member` and `raftq leader` commands drive it all.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from cluster.cli import main as raftq
from cluster.launcher import LocalCluster, free_ports
from cluster.sync_client import Client
from tests.conftest import start_cluster

pytestmark = pytest.mark.integration

SMALL_LOG = ("--snapshot-entries", "80", "--snapshot-trailing", "20")


def cli(cluster: LocalCluster, *argv: str) -> tuple[int, Any, str]:
    """Run `raftq --servers ... argv --json`; (exit code, decoded stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = raftq(["--servers", cluster.servers, *argv, "--json"], stdout=out, stderr=err)
    text = out.getvalue().strip()
    return code, json.loads(text) if text else None, err.getvalue()


def wait_for(what: str, check, timeout_s: float = 60.0, poll_s: float = 0.25):
    """Poll `check()` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a node restarting, an election: poll again
            last = exc
        else:
            if last:
                return last
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def members(cluster: LocalCluster) -> dict[str, Any]:
    code, conf, err = cli(cluster, "member", "list")
    assert code == 0, err
    return conf


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def converged(cluster: LocalCluster, ids: list[int]) -> dict[int, tuple[int, str]] | None:
    """(applied index, state hash) of every node in `ids` once they all agree, else None."""
    states = {i: get_json(cluster.url(i) + "/v1/admin/state") for i in ids}
    found = {i: (s["applied_index"], s["state_hash"]) for i, s in states.items()}
    return found if len(set(found.values())) == 1 else None


def add_joining_node(cluster: LocalCluster, join_via: int | None = None) -> int:
    http_port, raft_port = free_ports(2)
    node_id = cluster.add_node(http_port, raft_port, join_via=join_via)
    cluster.start_node(node_id)
    return node_id


def is_voter(cluster: LocalCluster, node_id: int) -> bool:
    return node_id in members(cluster)["voters"]


class SteadySender:
    """Sends numbered messages one batch at a time until stopped (bounded in count and
    time), remembering every body the cluster acknowledged."""

    def __init__(self, servers: str, queue: str, max_batches: int = 4000) -> None:
        self.servers = servers
        self.queue = queue
        self.max_batches = max_batches
        self.acked: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadySender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        with Client(self.servers, timeout_s=30) as client:
            q = client.queue(self.queue)
            for batch in range(self.max_batches):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                bodies = [f"b{batch}-{i}" for i in range(5)]
                try:
                    q.send_many(bodies)
                except Exception as exc:  # unacknowledged: may or may not be there
                    self.failures.append(repr(exc))
                    continue
                self.acked.extend(bodies)


def drain(cluster: LocalCluster, queue: str, expect: int) -> set[str]:
    """Receive and ack everything in `queue`; the bodies."""
    seen: set[str] = set()
    with Client(cluster.servers, timeout_s=30) as client:
        q = client.queue(queue)
        for _ in range(expect // 100 + 50):
            msgs = q.receive(100, wait_s=0.5)
            if not msgs:
                break
            seen.update(m.body for m in msgs)
            q.acknowledge_many(msgs)
    return seen


def fill(cluster: LocalCluster, queue: str, requests: int, prefix: str) -> None:
    """Create `queue` and send it `requests` batches of 5 messages (enough entries that a
    SMALL_LOG cluster compacts past them)."""
    with Client(cluster.servers, timeout_s=30) as client:
        q = client.queue(queue)
        q.create()
        for i in range(requests):
            q.send_many([f"{prefix}{i}-{j}" for j in range(5)])


def test_a_node_joins_catches_up_by_snapshot_and_is_promoted(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, SMALL_LOG)
    try:
        fill(cluster, "joined", 120, "m")
        node = add_joining_node(cluster)
        wait_for("node 4 to become a voter", lambda: is_voter(cluster, node))
        conf = members(cluster)
        four = next(m for m in conf["members"] if m["id"] == node)
        assert (
            four["url"] == cluster.url(node) and four["raft_addr"] == cluster.specs[node].raft_addr
        )
        wait_for("the state to converge", lambda: converged(cluster, [1, 2, 3, node]))
        # it caught up from a snapshot: its log starts after the leader's compaction point
        view = get_json(cluster.url(node) + "/v1/cluster")
        assert view["first_index"] > 1, view
        log_text = cluster.specs[node].log_path.read_text()
        assert "node.joined" in log_text and "raft.snapshot_installed" in log_text
        # it serves like any member: a write through it, read back through another node
        with Client(cluster.url(node), timeout_s=30) as client:
            client.queue("joined").send("through-4")
        with Client(cluster.url(1), timeout_s=30) as client:
            assert client.queue("joined").info()["depth"] == 601
        # a retried join (same id, same addresses) changes nothing
        code, again, err = cli(
            cluster,
            "member",
            "add",
            str(node),
            cluster.url(node),
            cluster.specs[node].raft_addr,
        )
        assert code == 0, err
        assert again["voters"] == conf["voters"]
        # the same id at another address is refused, and nothing changes
        code, _, err = cli(cluster, "member", "add", str(node), cluster.url(node), "127.0.0.1:9")
        assert code == 1 and "member already" in err
        assert members(cluster)["voters"] == conf["voters"]
    finally:
        cluster.stop_all()


def test_three_to_five_to_three_under_load_removing_the_leader(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, SMALL_LOG)
    try:
        with Client(cluster.servers, timeout_s=30) as client:
            client.queue("churn").create()
        with SteadySender(cluster.servers, "churn") as sender:
            wait_for("some load", lambda: len(sender.acked) >= 100)
            four = add_joining_node(cluster)
            wait_for("node 4 a voter", lambda: is_voter(cluster, four))
            five = add_joining_node(cluster)
            wait_for("node 5 a voter", lambda: is_voter(cluster, five))
            assert sorted(members(cluster)["voters"]) == [1, 2, 3, four, five]
            # remove the leader itself: it commits its removal, hands over, steps down
            leader = cluster.wait_for_leader().id
            code, conf, err = cli(cluster, "member", "remove", str(leader))
            assert code == 0, err
            assert leader not in conf["voters"] and len(conf["voters"]) == 4
            new_leader = wait_for(
                "another leader",
                lambda: (lead := cluster.leader()) is not None and lead.id != leader and lead,
            )
            # then one more original member, from the new leader's side
            gone = next(i for i in (1, 2, 3) if i not in (leader, new_leader.id))
            code, conf, err = cli(cluster, "member", "remove", str(gone))
            assert code == 0, err
            assert len(conf["voters"]) == 3 and gone not in conf["voters"]
            count_before = len(sender.acked)
            wait_for("more load after the changes", lambda: len(sender.acked) > count_before + 50)
        remaining = sorted(members(cluster)["voters"])
        for node_id in (leader, gone):
            cluster.forget_node(node_id)
        assert sorted(cluster.running()) == remaining
        wait_for("the remaining nodes to converge", lambda: converged(cluster, remaining))
        acked = set(sender.acked)
        assert len(acked) >= 150
        seen = drain(cluster, "churn", len(acked) + 500)
        assert not acked - seen, f"{len(acked - seen)} acknowledged messages lost"
    finally:
        cluster.stop_all()


def test_a_wiped_follower_comes_back_as_a_new_incarnation(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3, SMALL_LOG)
    try:
        fill(cluster, "amnesia", 40, "a")

        def incarnations() -> dict[int, str] | None:
            conf = members(cluster)
            found = {m["id"]: m["incarnation"] for m in conf["members"]}
            return found if all(found.values()) else None

        before = wait_for("every incarnation recorded", incarnations)
        leader = cluster.wait_for_leader().id
        wiped = next(i for i in cluster.ids if i != leader)
        cluster.stop(wiped)
        shutil.rmtree(cluster.specs[wiped].data_dir)
        cluster.start_node(wiped)

        def replaced() -> bool:
            conf = members(cluster)
            mine = next(m for m in conf["members"] if m["id"] == wiped)
            return mine["incarnation"] not in (None, before[wiped]) and mine["voter"]

        wait_for("the wiped node swapped in and promoted", replaced)
        after = incarnations()
        assert after is not None and after[wiped] != before[wiped]
        assert {i: after[i] for i in after if i != wiped} == {
            i: before[i] for i in before if i != wiped
        }
        wait_for("the state to converge", lambda: converged(cluster, cluster.ids))
        node_log = cluster.specs[wiped].log_path.read_text()
        assert "node.new_incarnation" in node_log
        leader_logs = "".join(cluster.specs[i].log_path.read_text() for i in cluster.ids)
        assert "replace_incarnation" in leader_logs
        seen = drain(cluster, "amnesia", 200)
        assert len(seen) == 200
    finally:
        cluster.stop_all()


def test_leader_transfer_from_the_command_line(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path, 3)
    try:
        leader = cluster.wait_for_leader().id
        code, result, err = cli(cluster, "leader", "transfer")
        assert code == 0, err
        assert result["transferred"] and result["leader_id"] != leader
        target = next(i for i in cluster.ids if i not in (leader, result["leader_id"]))
        code, result, err = cli(cluster, "leader", "transfer", "--to", str(target))
        assert code == 0, err
        assert result == {"leader_id": target, "transferred": True}
        assert cluster.wait_for_leader().id == target
        code, _, err = cli(cluster, "leader", "transfer", "--to", "9")
        assert code == 1 and "voting member" in err
        # membership errors are definite: a promote of a non-member, a bad id
        code, _, err = cli(cluster, "member", "promote", "7")
        assert code == 1 and "not a member" in err
        code, _, err = cli(cluster, "member", "remove", "7")
        assert code == 1 and "not a member" in err
        code, _, err = cli(cluster, "member", "remove", "x")
        assert code == 2
    finally:
        cluster.stop_all()
