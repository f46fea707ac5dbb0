"""TLS contexts of the client ports (HTTP and binary), for both ends.

Why in `common`: the node serves these ports (and calls other nodes' when it forwards to
the leader or joins a cluster) and the client library calls them; both must build their
contexts by the same rules, and `cluster` may not import `node`. The peer port has its own,
mutual, contexts in raft/peer_tls.py: there the certificate names a node, here a host.

The rules: TLS 1.2 at least; a client verifies the server's chain (a given CA bundle, else
the system's trust store) and its hostname, as any https client does; a server asked to
(`client_ca`) requires and verifies a client certificate. Keys and certificates come from
PEM files only, never from command lines.
"""

from __future__ import annotations

import ssl


def server_context(cert_file: str, key_file: str, client_ca: str | None = None) -> ssl.SSLContext:
    """What a client port serves with: its certificate chain and key, and, with
    `client_ca`, a required client certificate signed by that CA bundle.

    Raises OSError / ssl.SSLError for a missing or unreadable file, a file that is not
    PEM, or a key that does not match the certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """What a caller of a client port verifies with (`ca_file`, else the system's CAs) and
    presents (`cert_file`/`key_file`, when the port requires a client certificate).

    Raises ValueError when only one of `cert_file`/`key_file` is given, OSError /
    ssl.SSLError when a file cannot be used.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both a certificate file and a key file")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


__all__ = ["client_context", "server_context"]
