"""`raftq up --tls`: a CA and node certificates made once in the data dir (cluster/certs.py)
that the nodes serve and the clients trust, and reused on the next start."""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import Client
from cluster.certs import make_cluster_tls
from common.tls import server_context
from raft.peer_tls import PeerTls, cert_node_id
from tests.cluster.test_cli import REPO, _consecutive_free_ports


def test_the_files_are_made_once_keys_owner_only(tmp_path: Path) -> None:
    tls = make_cluster_tls(tmp_path / "tls", [1, 2])
    files = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    assert set(files) == {
        "ca.pem", "ca.key", "node-1.pem", "node-1.key", "node-2.pem", "node-2.key",
        "peer-1.pem", "peer-1.key", "peer-2.pem", "peer-2.key",
    }  # fmt: skip
    for name in files:
        mode = stat.S_IMODE((tmp_path / "tls" / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    again = make_cluster_tls(tmp_path / "tls", [1, 2])
    assert again == tls
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == files


def test_peer_certificates_name_their_node_and_load(tmp_path: Path) -> None:
    tls = make_cluster_tls(tmp_path / "tls", [1, 2, 3])
    for node_id, files in tls.nodes.items():
        decoded = ssl._ssl._test_decode_cert(str(files.peer_cert))  # type: ignore[attr-defined]
        assert cert_node_id(decoded) == node_id
        PeerTls.from_files(str(files.peer_cert), str(files.peer_key), str(tls.ca))
        server_context(str(files.cert), str(files.key))
        names = ssl._ssl._test_decode_cert(str(files.cert))["subjectAltName"]  # type: ignore[attr-defined]
        assert ("IP Address", "127.0.0.1") in names and ("DNS", "localhost") in names


@pytest.mark.integration
def test_raftq_up_tls_serves_a_tls_cluster(tmp_path: Path) -> None:
    http = _consecutive_free_ports(9)
    data = tmp_path / "data"
    cmd = [
        sys.executable, "-m", "cluster.cli", "up", "--tls", "--data-dir", str(data),
        "--http-port", str(http), "--raft-port", str(http + 3),
        "--binary-port", str(http + 6), "--json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert Path(doc["ca_file"]).samefile(data / "tls" / "ca.pem")
        assert all(n["url"].startswith("https://") for n in doc["nodes"])
        servers = ",".join(n["binary_url"] for n in doc["nodes"])
        assert servers.startswith("raftqs://")
        with Client(servers, ca_file=doc["ca_file"], timeout_s=30) as client:
            q = client.queue("up-tls")
            q.create()
            q.send("over raftqs")
            msg = q.receive(wait_s=5)
            assert msg is not None and msg.body == "over raftqs" and q.acknowledge(msg)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
