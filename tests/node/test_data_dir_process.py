"""Data dir safety with real node processes and real files: the lock, the identity check,
owner-only files, adopting an older raftq's dir, and the incarnation the node serves.

Every node runs as `python -m node` (through LocalCluster, stopped by PID at teardown, or
`subprocess.run` for the ones that must refuse to start, waited for with a timeout).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from cluster import Client
from cluster.launcher import LocalCluster, free_ports
from node.data_dir import EXIT_DATA_DIR_REFUSED

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under `root`: (mtime_ns, mode, contents)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        data = path.read_bytes() if path.is_file() else b""
        out[str(path.relative_to(root))] = (st.st_mtime_ns, stat.S_IMODE(st.st_mode), data)
    return out


def _run_node(
    node_id: int, data_dir: Path, *extra: str, cmd: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one node that is expected to refuse to start (and so to exit by itself)."""
    if cmd is None:
        http, raft = free_ports(2)
        cmd = [
            sys.executable,
            "-m",
            "node",
            "--id",
            str(node_id),
            "--http",
            f"127.0.0.1:{http}",
            "--raft",
            f"127.0.0.1:{raft}",
            "--data-dir",
            str(data_dir),
            *extra,
        ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _identity(data_dir: Path) -> dict:
    return json.loads((data_dir / "IDENTITY").read_text())


def _events(log_path: Path, name: str) -> list[dict]:
    out = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            out.append(record)
    return out


def _assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == EXIT_DATA_DIR_REFUSED, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    plain = [line for line in proc.stderr.splitlines() if line.startswith("raftq node: ")]
    assert len(plain) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in plain[0], plain[0]
    critical = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]
    assert [r["event"] for r in critical if r.get("level") == "critical"] == [
        "node.data_dir_refused"
    ]


def test_a_second_process_on_a_data_dir_is_refused_while_the_first_serves(make_cluster) -> None:
    cluster = make_cluster(1)
    first_pid = cluster.pids[1]
    data_dir = cluster.specs[1].data_dir
    with Client(cluster.urls, timeout_s=15) as client:
        q = client.queue("locked")
        q.create()
        q.send("before")
        # exactly the first one's command line: a double start (ports are not even reached)
        proc = _run_node(1, data_dir, cmd=cluster.command(1))
        _assert_refused(proc, f"data dir {data_dir} is in use", f"pid {first_pid}")
        assert cluster.pids == {1: first_pid}
        q.send("after")
        assert q.info()["depth"] == 2
    assert (data_dir / "LOCK").read_text().strip() == str(first_pid)


def test_files_are_owner_only_and_the_incarnation_is_served(make_cluster) -> None:
    cluster = make_cluster(1)
    data_dir = cluster.specs[1].data_dir  # the launcher made it with the umask's mode
    lmdb_dir = data_dir / "lmdb"
    assert _mode(data_dir) == _mode(lmdb_dir) == _mode(data_dir / "snapshots") == 0o700
    for name in ("IDENTITY", "LOCK", "lmdb/data.mdb", "lmdb/lock.mdb"):
        assert _mode(data_dir / name) == 0o600, name
    assert sorted(p.name for p in data_dir.iterdir()) == ["IDENTITY", "LOCK", "lmdb", "snapshots"]
    identity = _identity(data_dir)
    assert (identity["cluster_id"], identity["node_id"]) == ("raftq", 1)
    view = cluster.cluster_view(1)
    assert view is not None
    assert view["incarnation"] == identity["incarnation"]
    assert view["nodes"][0]["id"] == 1 and view["nodes"][0]["incarnation"] == view["incarnation"]
    started = _events(cluster.specs[1].log_path, "node.started")
    assert started[-1]["incarnation"] == identity["incarnation"]
    assert [e["reason"] for e in _events(cluster.specs[1].log_path, "node.new_incarnation")] == [
        "fresh data dir"
    ]
    cluster.restart(1)
    cluster.wait_ready(1, timeout_s=30)
    assert (cluster.cluster_view(1) or {}).get("incarnation") == identity["incarnation"]
    assert len(_events(cluster.specs[1].log_path, "node.new_incarnation")) == 1


def test_another_nodes_or_clusters_data_dir_is_refused_and_unchanged(
    make_cluster, tmp_path: Path
) -> None:
    cluster = make_cluster(1)
    with Client(cluster.urls, timeout_s=15) as client:
        client.queue("mine").create()
        client.queue("mine").send("node 1's message")
    incarnation = (cluster.cluster_view(1) or {})["incarnation"]
    cluster.stop(1)
    data_dir = cluster.specs[1].data_dir
    before = _snapshot(data_dir)

    _assert_refused(
        _run_node(2, data_dir),
        f"data dir {data_dir} belongs to node 1 of cluster 'raftq'",
        "this is node 2 of cluster 'raftq'",
    )
    _assert_refused(
        _run_node(1, data_dir, "--cluster-id", "other"),
        "belongs to node 1 of cluster 'raftq'",
        "this is node 1 of cluster 'other'",
    )
    assert _snapshot(data_dir) == before

    # What `raftq up` shows: the launcher reads the reason from the node's log.
    wrong = LocalCluster(
        nodes=1,
        data_dir=cluster.data_dir,
        http_port=free_ports(1),
        raft_port=free_ports(1),
        extra_args=("--cluster-id", "other"),
    )
    try:
        wrong.start_node(1)
        wrong._procs[1].wait(timeout=60)
        assert wrong.returncodes() == {1: EXIT_DATA_DIR_REFUSED}
        reason = wrong.exit_reason(1) or ""
        assert reason.startswith("node.data_dir_refused: ") and "belongs to node 1" in reason
    finally:
        wrong.stop_all()
    assert _snapshot(data_dir) == before

    cluster.start_node(1)  # its own node still starts on it, same incarnation, same data
    cluster.wait_ready(1, timeout_s=30)
    assert (cluster.cluster_view(1) or {})["incarnation"] == incarnation
    with Client(cluster.urls, timeout_s=15) as client:
        assert client.queue("mine").info()["depth"] == 1


def _forget_lmdb_identity(lmdb_dir: Path) -> None:
    """Delete LmdbStorage's identity record, as a data dir of an older raftq lacks it."""
    env = lmdb.open(str(lmdb_dir), max_dbs=64, subdir=True)
    try:
        meta = env.open_db(b"raft.meta", create=False)
        with env.begin(write=True) as txn:
            assert txn.delete(b"identity", db=meta)
    finally:
        env.close()


def test_an_older_raftqs_data_dir_is_adopted_and_then_checked(make_cluster) -> None:
    cluster = make_cluster(1)
    with Client(cluster.urls, timeout_s=15) as client:
        client.queue("old").create()
        client.queue("old").send("from before the upgrade")
    cluster.stop(1)
    data_dir = cluster.specs[1].data_dir
    # what an older raftq left: LMDB (no identity record in it), no IDENTITY, no LOCK
    (data_dir / "IDENTITY").unlink()
    (data_dir / "LOCK").unlink()
    _forget_lmdb_identity(data_dir / "lmdb")

    cluster.start_node(1)
    cluster.wait_ready(1, timeout_s=30)
    adopted = _events(cluster.specs[1].log_path, "node.data_dir_adopted")
    assert len(adopted) == 1
    identity = _identity(data_dir)
    assert identity["node_id"] == 1 and identity["incarnation"] == adopted[0]["incarnation"]
    assert (cluster.cluster_view(1) or {})["incarnation"] == identity["incarnation"]
    assert len(_events(cluster.specs[1].log_path, "node.new_incarnation")) == 1  # the first run
    with Client(cluster.urls, timeout_s=15) as client:
        assert client.queue("old").info()["depth"] == 1

    # Without IDENTITY, LMDB's own record (written on adoption) still refuses node 2, and
    # the refused node stamps no IDENTITY of its own on the dir.
    cluster.stop(1)
    (data_dir / "IDENTITY").unlink()
    _assert_refused(_run_node(2, data_dir), "belongs to node 1, not 2")
    assert not (data_dir / "IDENTITY").exists()
