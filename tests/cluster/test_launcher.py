"""LocalCluster process management on real processes and signals.

The nodes here are `tests/cluster/fake_node.py` (an HTTP stand-in for `python -m node`,
reached through a tiny `python` wrapper) so these tests exercise spawning, logs, kill,
stop with SIGKILL escalation, restart and cleanup independently of the Raft node.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.launcher import ClusterStartError, LocalCluster, free_ports

FAKE_NODE = Path(__file__).with_name("fake_node.py")


def _alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:\tZ") for line in f)
    except FileNotFoundError:
        return False


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_NODE}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def cluster(tmp_path: Path, fake_python: str) -> Iterator[LocalCluster]:
    c = LocalCluster(
        3,
        tmp_path / "data",
        http_port=free_ports(3),
        raft_port=free_ports(3),
        python=fake_python,
        stop_grace_s=5,
    )
    try:
        yield c
    finally:
        c.stop_all(grace_s=2)


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_command_and_peers(tmp_path: Path) -> None:
    c = LocalCluster(2, tmp_path, http_port=8001, raft_port=8101, extra_args=("--x",))
    assert c.urls == ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
    assert c.servers == "http://127.0.0.1:8001,http://127.0.0.1:8002"
    peers = "1=http://127.0.0.1:8001@127.0.0.1:8101,2=http://127.0.0.1:8002@127.0.0.1:8102"
    assert c.command(2)[1:] == [
        "-P",
        "-m",
        "node",
        "--id",
        "2",
        "--http",
        "127.0.0.1:8002",
        "--raft",
        "127.0.0.1:8102",
        "--peers",
        peers,
        "--data-dir",
        str(tmp_path.resolve() / "node-2"),
        "--secret-file",
        str(tmp_path.resolve() / "peer-secret"),
        "--auth",
        "off",
        "--x",
    ]
    with pytest.raises(ValueError):
        LocalCluster(3, tmp_path, http_port=[1, 2])
    with pytest.raises(ValueError):
        c.kill(7)


def test_start_wait_for_leader_logs_and_dirs(cluster: LocalCluster) -> None:
    cluster.start()
    leader = cluster.wait_for_leader(15)
    assert (leader.id, leader.url, leader.term) == (1, cluster.urls[0], 1)
    assert sorted(cluster.pids) == [1, 2, 3]
    for i in (1, 2, 3):
        cluster.wait_ready(i, timeout_s=15)
        assert (cluster.data_dir / f"node-{i}").is_dir()
        log_text = (cluster.data_dir / f"node-{i}.log").read_text()
        assert f"fake node {i} started pid={cluster.pids[i]}" in log_text
        assert cluster.peers_arg() in log_text


def test_kill_restart_stop(cluster: LocalCluster) -> None:
    cluster.start()
    cluster.wait_for_leader(15)
    cluster.wait_ready(2, timeout_s=15)
    old_pid = cluster.pids[2]
    cluster.kill(2)
    assert 2 not in cluster.pids and not _alive(old_pid)
    assert cluster.returncodes()[2] == -signal.SIGKILL
    new_pid = cluster.restart(2)
    assert new_pid != old_pid and cluster.pids[2] == new_pid
    cluster.wait_ready(2, timeout_s=15)
    assert cluster.stop(2) == 0  # graceful SIGTERM
    log_text = (cluster.data_dir / "node-2.log").read_text()
    assert log_text.count("started") == 2 and "fake node 2 stopping" in log_text
    assert cluster.running() == [1, 3]


def test_stop_escalates_to_sigkill(tmp_path: Path, fake_python: str) -> None:
    c = LocalCluster(
        1,
        tmp_path,
        http_port=free_ports(1),
        raft_port=free_ports(1),
        python=fake_python,
        extra_args=("--ignore-sigterm",),
        stop_grace_s=0.5,
    )
    with c:
        c.wait_ready(1, timeout_s=15)
        start = time.monotonic()
        assert c.stop(1) == -signal.SIGKILL
        assert time.monotonic() - start < 5


def test_context_manager_leaves_no_process(tmp_path: Path, fake_python: str) -> None:
    with LocalCluster(
        3, tmp_path, http_port=free_ports(3), raft_port=free_ports(3), python=fake_python
    ) as c:
        c.wait_for_leader(15)
        pids = list(c.pids.values())
        assert all(_alive(p) for p in pids)
    assert not any(_alive(p) for p in pids)


def test_all_nodes_exiting_fails_fast(tmp_path: Path) -> None:
    # `false` as the interpreter: every node exits at once with code 1
    c = LocalCluster(2, tmp_path, http_port=free_ports(2), raft_port=free_ports(2), python="false")
    with c:
        start = time.monotonic()
        with pytest.raises(ClusterStartError, match="every node exited"):
            c.wait_for_leader(20)
        assert time.monotonic() - start < 10


def test_all_nodes_exiting_names_why_from_their_logs(tmp_path: Path) -> None:
    """`raftq up` prints this error: a node that refused its data dir says why in its log."""
    refusing = tmp_path / "python"
    line = {
        "event": "node.data_dir_refused",
        "level": "critical",
        "error": "data dir d is in use by another raftq process (pid 42)",
    }
    refusing.write_text(f"#!/bin/sh\necho {shlex.quote(json.dumps(line))}\nexit 3\n")
    refusing.chmod(0o755)
    c = LocalCluster(
        2, tmp_path, http_port=free_ports(2), raft_port=free_ports(2), python=str(refusing)
    )
    with c, pytest.raises(ClusterStartError) as err:
        c.wait_for_leader(20)
    message = str(err.value)
    assert "every node exited (codes {1: 3, 2: 3})" in message, message
    for node_id in (1, 2):
        assert f"node {node_id}: node.data_dir_refused: data dir d is in use" in message


@pytest.mark.parametrize("how", ["atexit", "sigkill"])
def test_nodes_die_with_their_launcher(tmp_path: Path, fake_python: str, how: str) -> None:
    """Exiting without stop_all (atexit) or being SIGKILLed (PDEATHSIG) still stops nodes."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from cluster.launcher import LocalCluster, free_ports
        c = LocalCluster(2, {str(tmp_path)!r}, http_port=free_ports(2),
                         raft_port=free_ports(2), python={fake_python!r}, stop_grace_s=2)
        c.start()
        c.wait_for_leader(15)
        print("PIDS", *c.pids.values(), flush=True)
        if {how!r} == "atexit":
            sys.exit(0)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"PIDS"):  # skip log lines
            line = proc.stdout.readline()
            assert line, "launcher script exited early"
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2
        if how == "sigkill":
            proc.kill()
        proc.wait(timeout=15)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_stray_module_in_the_callers_directory_does_not_replace_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes start with `python -P`: a node.py or common.py where the user runs `raftq up`
    (or `raftq bench`) is not imported in place of raftq's own packages."""
    for name in ("node", "common", "raft"):
        (tmp_path / f"{name}.py").write_text("raise SystemExit('the stray module ran')\n")
    monkeypatch.chdir(tmp_path)
    ports = free_ports(2)
    with LocalCluster(1, tmp_path / "data", http_port=ports[:1], raft_port=ports[1:]) as c:
        assert c.wait_for_leader(timeout_s=30).id == 1
