"""A node's TLS settings: checked once at start, turned into the contexts it serves with.

Three independent parts, each off unless configured (docs/API.md "TLS"):

- the client ports (HTTP and binary) serve TLS with `--tls-cert`/`--tls-key`; with
  `--tls-client-ca` they also require a client certificate signed by that CA bundle;
- the node's own calls to other nodes' client ports (forwarding to the leader, `--join`)
  verify them against `--tls-ca` (else the system's trust store), and present the node's
  `--tls-cert` as a client certificate when the cluster's client ports require one
  (`--tls-client-ca`: the nodes of one cluster share their settings). Why a flag of its
  own and not `--peer-ca`: a client port may carry a certificate from a public or company
  CA that clients already trust, while the peer CA is private to the cluster;
- the peer port speaks mutual TLS with `--peer-cert`/`--peer-key`/`--peer-ca`
  (raft/peer_tls.py: the certificate names the node).

Why check here, at configuration time: a missing file, half a pair, a key that does not
match its certificate or a file that is not PEM should stop the node with one clear
message before it opens its data dir, not surface as a handshake failure later.
"""

from __future__ import annotations

import os
import ssl

from common.tls import client_context, server_context
from raft.peer_tls import PeerTls


class TlsSettingsError(ValueError):
    """The TLS settings are incomplete or a file cannot be used; the message says which."""


def _check_path(flag: str, path: str) -> None:
    """A path to a readable regular file; key material given inline is refused."""
    if "-----BEGIN" in path or "\n" in path:
        raise TlsSettingsError(
            f"{flag} takes the path of a PEM file, not its contents: command lines and "
            "config files are readable by others"
        )
    if not os.path.isfile(path):
        raise TlsSettingsError(f"{flag}: no such file {path}")
    if not os.access(path, os.R_OK):
        raise TlsSettingsError(f"{flag}: {path} is not readable by this user")


def check_settings(
    *,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    tls_ca: str | None,
    peer_cert: str | None,
    peer_key: str | None,
    peer_ca: str | None,
) -> None:
    """Raise TlsSettingsError unless the settings are complete and every file loads."""
    given = {
        "--tls-cert": tls_cert,
        "--tls-key": tls_key,
        "--tls-client-ca": tls_client_ca,
        "--tls-ca": tls_ca,
        "--peer-cert": peer_cert,
        "--peer-key": peer_key,
        "--peer-ca": peer_ca,
    }
    for flag, path in given.items():
        if path is not None:
            _check_path(flag, path)
    if (tls_cert is None) != (tls_key is None):
        raise TlsSettingsError(
            "--tls-cert and --tls-key go together: the client ports' certificate and its key"
        )
    if tls_client_ca is not None and tls_cert is None:
        raise TlsSettingsError(
            "--tls-client-ca requires client certificates on TLS client ports: give "
            "--tls-cert and --tls-key too"
        )
    peer = {"--peer-cert": peer_cert, "--peer-key": peer_key, "--peer-ca": peer_ca}
    if any(v is not None for v in peer.values()) and any(v is None for v in peer.values()):
        missing = ", ".join(flag for flag, v in peer.items() if v is None)
        raise TlsSettingsError(
            f"peer TLS needs --peer-cert, --peer-key and --peer-ca together (missing: {missing})"
        )
    try:
        if tls_cert is not None and tls_key is not None:
            server_context(tls_cert, tls_key, tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSettingsError(f"--tls-cert/--tls-key/--tls-client-ca: {exc}") from exc
    try:
        if tls_ca is not None:
            client_context(tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSettingsError(f"--tls-ca {tls_ca}: {exc}") from exc
    try:
        if peer_cert is not None and peer_key is not None and peer_ca is not None:
            PeerTls.from_files(peer_cert, peer_key, peer_ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsSettingsError(f"--peer-cert/--peer-key/--peer-ca: {exc}") from exc


def client_port_context(
    tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None
) -> ssl.SSLContext | None:
    """What the HTTP and binary ports serve with; None: plain TCP."""
    if tls_cert is None or tls_key is None:
        return None
    return server_context(tls_cert, tls_key, tls_client_ca)


def outgoing_context(
    tls_ca: str | None, tls_cert: str | None, tls_key: str | None, tls_client_ca: str | None
) -> ssl.SSLContext | None:
    """How this node calls another node's https client port (forwarding, `--join`); None
    when it has no TLS setting at all (aiohttp's defaults then serve https URLs)."""
    if tls_ca is None and tls_cert is None:
        return None
    present = tls_client_ca is not None and tls_cert is not None
    return client_context(tls_ca, tls_cert if present else None, tls_key if present else None)


def peer_tls(peer_cert: str | None, peer_key: str | None, peer_ca: str | None) -> PeerTls | None:
    """The peer port's mutual TLS; None: plain TCP (HMAC secret or nothing)."""
    if peer_cert is None or peer_key is None or peer_ca is None:
        return None
    return PeerTls.from_files(peer_cert, peer_key, peer_ca)


__all__ = [
    "TlsSettingsError",
    "check_settings",
    "client_port_context",
    "outgoing_context",
    "peer_tls",
]
