"""Rotating a running 3-node cluster's peer secret, one node at a time, while a client
keeps sending: every node restarted with the new secret and the old one
(`--previous-secret-file`), then every node with only the new one. The cluster serves
throughout, and a receipt handed out before the rotation is still good after it (the
receipt key lives in the replicated state, not in the secret)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cluster import Client
from cluster.launcher import LocalCluster, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]


class RotatingCluster(LocalCluster):
    """A LocalCluster whose nodes each get their own secret files."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        #: node id -> (secret file, previous secret file or None); default: the launcher's
        self.secret_files: dict[int, tuple[Path, Path | None]] = {}

    def command(self, node_id: int) -> list[str]:
        argv = super().command(node_id)
        if node_id in self.secret_files:
            current, previous = self.secret_files[node_id]
            argv[argv.index("--secret-file") + 1] = str(current)
            if previous is not None:
                argv += ["--previous-secret-file", str(previous)]
        return argv


class Producer(threading.Thread):
    """Sends one message every few milliseconds until stopped; records every outcome."""

    def __init__(self, servers: str) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.stop = threading.Event()
        self.sent: list[str] = []
        self.errors: list[str] = []
        self.slowest_s = 0.0

    def run(self) -> None:
        with Client(self.servers, timeout_s=30) as client:
            q = client.queue("rotation")
            i = 0
            while not self.stop.is_set():
                body = f"m-{i}"
                started = time.monotonic()
                try:
                    q.send(body, dedup_id=body)
                    self.sent.append(body)
                except Exception as exc:  # recorded: the test fails on any
                    self.errors.append(f"{body}: {exc!r}")
                self.slowest_s = max(self.slowest_s, time.monotonic() - started)
                i += 1
                time.sleep(0.02)


def test_the_secret_is_rotated_node_by_node_without_downtime(tmp_path: Path) -> None:
    ports = free_ports(9)
    cluster = RotatingCluster(
        nodes=3,
        data_dir=tmp_path / "data",
        http_port=ports[:3],
        raft_port=ports[3:6],
        binary_port=ports[6:],
    )
    new = tmp_path / "new-secret"
    new.write_text("the-new-cluster-secret-0123456789\n")
    new.chmod(0o600)
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=60)
        old = cluster.secret_path
        assert old is not None and old.read_bytes().strip() != new.read_bytes().strip()
        with Client(cluster.binary_servers, timeout_s=30) as client:
            q = client.queue("rotation")
            q.create(visibility_timeout_s=600)
            q.send("received before the rotation", dedup_id="early")
            early = q.receive(wait_s=5)
            assert early is not None
        producer = Producer(cluster.binary_servers)
        producer.start()
        time.sleep(1.0)
        for step, files in enumerate([(new, old), (new, None)]):
            for node_id in cluster.ids:
                cluster.secret_files[node_id] = files
                cluster.restart(node_id)
                for i in cluster.ids:
                    cluster.wait_ready(i, timeout_s=60)
                time.sleep(0.5)  # traffic flows with this node on its new secret(s)
                assert not producer.errors, (step, node_id, producer.errors)
        # every node now holds only the new secret, and talks to the others with it
        for node_id in cluster.ids:
            assert "--previous-secret-file" not in cluster.command(node_id)
        time.sleep(1.0)
        producer.stop.set()
        producer.join(timeout=60)
        assert not producer.errors, producer.errors
        assert len(producer.sent) > 20
        with Client(cluster.binary_servers, timeout_s=30) as client:
            q = client.queue("rotation")
            assert q.acknowledge(early) is True  # a receipt from before the rotation
            info = q.info()
            assert info["depth"] == len(producer.sent) and info["in_flight"] == 0
        views = [cluster.cluster_view(i) for i in cluster.ids]
        assert all(v is not None and v["leader"] is not None for v in views)
    finally:
        cluster.stop_all()
