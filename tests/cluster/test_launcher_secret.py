"""The launcher gives a local cluster's peers one random secret, in an owner-only file."""

from __future__ import annotations

import stat
from pathlib import Path

from cluster.launcher import LocalCluster, ensure_secret_file


def test_every_node_gets_the_clusters_secret_file(tmp_path: Path) -> None:
    cluster = LocalCluster(3, tmp_path / "data")
    assert cluster.secret_path == tmp_path / "data" / "peer-secret"
    commands = [cluster.command(i) for i in cluster.ids]
    for argv in commands:
        assert argv[argv.index("--secret-file") + 1] == str(cluster.secret_path)
    ensure_secret_file(cluster.secret_path)
    first = cluster.secret_path.read_bytes()
    assert len(first.strip()) >= 32
    assert stat.S_IMODE(cluster.secret_path.stat().st_mode) == 0o600
    ensure_secret_file(cluster.secret_path)  # kept across restarts
    assert cluster.secret_path.read_bytes() == first
    other = tmp_path / "other" / "peer-secret"
    ensure_secret_file(other)
    assert other.read_bytes() != first  # random per cluster


def test_a_cluster_may_run_without_a_peer_secret(tmp_path: Path) -> None:
    cluster = LocalCluster(1, tmp_path / "data", peer_secret=False)
    assert cluster.secret_path is None and "--secret-file" not in cluster.command(1)
