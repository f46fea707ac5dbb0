"""A node whose Raft safety check fails stops: a clear log line, exit code 1, and
`raftq up` says which node stopped and why, while the other two keep serving.

The failed check is provoked the way a broken or hostile member would (one that holds the
cluster's peer secret, which `raftq up` made): an AppendEntries, sent on the follower's
Raft port as if from the leader, that disagrees with an entry the follower has committed. Before the audit, the follower logged it and went on voting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from raft.framing import config_digest
from raft.messages import Entry, Message, MessageType
from raft.transport import Transport
from tests.cluster.test_cli import _consecutive_free_ports, _pid_alive, _up, run

pytestmark = pytest.mark.integration


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def _forge_append(
    frm: int, to: int, raft_addr: str, term: int, entries: list, secret: bytes
) -> None:
    """Send one APP on `to`'s Raft port, claiming to be node `frm`."""
    host, port = raft_addr.rsplit(":", 1)
    fake = Transport(
        frm,
        "raftq",
        ("127.0.0.1", 0),
        {to: (host, int(port))},
        lambda m: None,
        config_digest=config_digest((1, 2, 3), 8 << 20),  # a peer that agrees on members
        secret=secret,
    )
    await fake.start()
    try:
        (index, prev_term), (last, _) = entries[-2], entries[-1]
        fake.send(
            Message(
                MessageType.APP,
                to=to,
                frm=frm,
                term=term,
                index=index,
                log_term=prev_term,
                entries=(Entry(last, term, data=b"forged"),),
                commit=last,
            )
        )
        fake.flush()
        await asyncio.sleep(1.0)
    finally:
        await fake.stop()


def test_a_forged_conflicting_append_stops_the_follower_and_up_reports_it(tmp_path: Path) -> None:
    http = _consecutive_free_ports(6)
    proc, doc = _up(tmp_path / "data", http)
    pids = [n["pid"] for n in doc["nodes"]]
    try:
        servers = ",".join(n["url"] for n in doc["nodes"])
        args = ["--servers", servers, "--timeout", "15"]
        assert run(*args, "queue", "create", "safe")[0] == 0
        assert run(*args, "send", "safe", "one", "two")[0] == 0
        leader = doc["leader"]["id"]
        victim = next(n for n in doc["nodes"] if n["id"] != leader)
        deadline = time.monotonic() + 10
        while True:  # the follower has applied what the leader committed
            view = _get(victim["url"] + "/v1/cluster")
            if view["applied_index"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        log = _get(victim["url"] + "/v1/admin/log?from=1")
        entries = [(index, term) for index, term, _crc in log["entries"]]
        assert len(entries) >= 3
        secret = Path(doc["peer_secret_file"]).read_bytes().strip()
        asyncio.run(
            _forge_append(leader, victim["id"], victim["raft"], view["term"] + 1, entries, secret)
        )

        deadline = time.monotonic() + 15
        while _pid_alive(victim["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _pid_alive(victim["pid"]), "the follower kept running after the violation"
        node_log = (tmp_path / "data" / f"node-{victim['id']}.log").read_text()
        assert '"event": "raft.safety_violation"' in node_log
        assert "committed term" in node_log

        # The other two are a majority: writes still commit.
        code, _, err = run(*args, "send", "safe", "three")
        assert code == 0, err
        time.sleep(1.0)  # raftq up polls its nodes twice a second
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        text = err.decode()
        assert f"node {victim['id']} exited with code 1 (raft.safety_violation:" in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_follower_restarted_on_an_old_copy_of_its_data_dir_stops(make_cluster) -> None:
    """Its log is shorter than what it acknowledged: the leader's heartbeat names a commit
    it cannot hold. Before the audit it clamped the commit and went on as if nothing was
    lost (and could have applied entries the cluster later overwrote)."""
    import shutil

    from cluster import Client

    cluster = make_cluster(3)
    leader = cluster.wait_for_leader(timeout_s=30)
    victim = next(i for i in cluster.ids if i != leader.id)
    with Client(cluster.urls, timeout_s=15) as client:
        q = client.queue("old-copy")
        q.create()
        q.send("before the copy")
        cluster.stop(victim)
        data = cluster.specs[victim].data_dir
        backup = data.with_name(data.name + "-copy")
        shutil.copytree(data, backup)
        cluster.start_node(victim)
        cluster.wait_ready(victim, timeout_s=30)
        for i in range(20):  # the leader now knows the victim holds all of these
            q.send(f"after {i}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            view = cluster.cluster_view(victim) or {}
            if view.get("applied_index", 0) >= (cluster.cluster_view(leader.id) or {}).get(
                "commit_index", 1 << 60
            ):
                break
            time.sleep(0.1)
        cluster.stop(victim)
        shutil.rmtree(data)
        shutil.copytree(backup, data)
        cluster.start_node(victim)
        deadline = time.monotonic() + 20
        while victim in cluster.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.returncodes()[victim] == 1, "the node went on with a rolled-back log"
        reason = cluster.exit_reason(victim) or ""
        assert reason.startswith("raft.safety_violation") and "out of range" in reason, reason
        q.send("the others still serve")
        assert q.receive(max=30, wait_s=2)
