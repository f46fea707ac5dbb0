"""Mutual TLS on the Raft peer port: the contexts, and which node a certificate names.

A cluster has its own CA. Every node holds a certificate from it (`--peer-cert`,
`--peer-key`, `--peer-ca`), presents it on every peer connection, dials and accepts, and
requires the other side's. The certificate is the node's credential, so it names the node:

    subjectAltName DNS:raftq-node-<id>      (e.g. DNS:raftq-node-3)

(or, for certificates made without a SAN, the subject's commonName `raftq-node-<id>`).
A certificate that names no node, or two different ones, identifies nobody and is refused.

Why not the usual hostname check: a peer's address says where a node runs, not which node
it is (a node moves, a proxy or NAT sits in between, several nodes share a host), and the
Raft handshake already claims an id. What must hold is that the id a peer claims is the one
its certificate names, so the acceptor compares the two (transport.py) and the dialer
checks that the node it reached is the one it meant to dial. Hostname checking is
therefore off on peer contexts; chain verification against the cluster CA is required.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any

#: The DNS SAN (or CN) prefix that names a node in its peer certificate.
PEER_NAME_PREFIX = "raftq-node-"
_PEER_NAME = re.compile(r"raftq-node-([1-9][0-9]{0,18})")


def peer_name(node_id: int) -> str:
    """The name a peer certificate of node `node_id` carries (DNS SAN or CN)."""
    return f"{PEER_NAME_PREFIX}{node_id}"


def cert_node_ids(peercert: dict[str, Any] | None) -> set[int]:
    """Every node id a verified certificate (as `SSLSocket.getpeercert()` gives it) names:
    its `raftq-node-<id>` DNS SANs, or without SANs its `raftq-node-<id>` commonName."""
    if not peercert:
        return set()
    names = [v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]
    if not names:
        names = [v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"]
    ids: set[int] = set()
    for name in names:
        match = _PEER_NAME.fullmatch(name) if isinstance(name, str) else None
        if match is not None:
            ids.add(int(match.group(1)))
    return ids


def cert_node_id(peercert: dict[str, Any] | None) -> int | None:
    """The one node id a certificate names; None when it names none or several."""
    ids = cert_node_ids(peercert)
    return next(iter(ids)) if len(ids) == 1 else None


def _context(purpose: ssl.Purpose, cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.check_hostname = False  # the certificate's node id is checked instead (module doc)
    ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: mutual TLS
    return ctx


@dataclass(frozen=True, slots=True)
class PeerTls:
    """The two sides of peer mTLS for one node: `server` accepts, `client` dials."""

    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def from_files(cls, cert: str, key: str, ca: str) -> PeerTls:
        """Load the node's certificate chain and key and the cluster CA (PEM files).

        Raises OSError or ssl.SSLError if a file is missing, unreadable or not PEM, or the
        key does not match the certificate.
        """
        return cls(
            server=_context(ssl.Purpose.CLIENT_AUTH, cert, key, ca),
            client=_context(ssl.Purpose.SERVER_AUTH, cert, key, ca),
        )


__all__ = ["PEER_NAME_PREFIX", "PeerTls", "cert_node_id", "cert_node_ids", "peer_name"]
