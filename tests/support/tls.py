"""Certificates made at test time (trustme): a cluster CA, node certificates, client
certificates, written as PEM files into the test's tmp dir. Nothing is committed.

The node certificates follow raftq's conventions (raft/peer_tls.py, docs/API.md "TLS"):
a client-port certificate names the host clients dial (127.0.0.1, localhost); a peer
certificate names its node as the DNS SAN `raftq-node-<id>`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trustme

from cluster.launcher import ClusterTls, NodeTls
from raft.peer_tls import PeerTls, peer_name


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate chain and its key, as two PEM files."""

    cert: Path
    key: Path


class TestCA:
    """One CA and the files of what it issues, under `root`."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, root: Path, name: str = "ca") -> None:
        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=f"raftq test {name}")
        self.ca_file = root / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    def issue(self, label: str, *identities: str) -> KeyPair:
        """A certificate for `identities` (DNS names or IPs), saved as `<label>.pem/.key`."""
        leaf = self.ca.issue_cert(*identities)
        pair = KeyPair(
            self.root / f"{self.name}-{label}.pem", self.root / f"{self.name}-{label}.key"
        )
        pair.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(pair.key))
        pair.key.chmod(0o600)
        return pair

    def server(self, label: str = "server") -> KeyPair:
        """A client-port certificate for a node on loopback."""
        return self.issue(label, "127.0.0.1", "localhost")

    def peer(self, node_id: int) -> KeyPair:
        """A peer certificate that names node `node_id`."""
        return self.issue(f"peer-{node_id}", peer_name(node_id))

    def peer_tls(self, node_id: int, *, names: int | None = None) -> PeerTls:
        """Loaded peer contexts for node `node_id` (its certificate naming `names`, if given:
        a node that holds another's certificate)."""
        pair = self.peer(node_id if names is None else names)
        return PeerTls.from_files(str(pair.cert), str(pair.key), str(self.ca_file))

    def cluster_tls(self, ids: Iterable[int], *, client_certs: bool = False) -> ClusterTls:
        """What `LocalCluster(tls=...)` needs for nodes `ids`: one CA for the client ports
        and the peers; with `client_certs`, the client ports require a certificate from
        this CA, and the launcher presents one."""
        nodes = {}
        for i in ids:
            server, peer = self.server(f"server-{i}"), self.peer(i)
            nodes[i] = NodeTls(
                cert=server.cert, key=server.key, peer_cert=peer.cert, peer_key=peer.key
            )
        client = self.issue("client", "raftq-client") if client_certs else None
        return ClusterTls(
            ca=self.ca_file,
            nodes=nodes,
            client_ca=self.ca_file if client_certs else None,
            client_cert=client.cert if client else None,
            client_key=client.key if client else None,
        )
