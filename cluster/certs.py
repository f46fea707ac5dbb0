"""Certificates for a local TLS cluster (`raftq up --tls`): one CA, and per node a
client-port certificate and a peer certificate, written once into a directory and reused.

Why in the launcher's package and not in the node: a production cluster gets its
certificates from its operator's CA (docs/API.md "TLS"); this only spares a developer
the OpenSSL commands for a cluster on one machine. It needs the `cryptography` package
(`pip install 'raftq[tls]'`), imported only when asked for, so the node and the client
keep depending on the standard `ssl` module alone.

Keys are written owner-only (0600). Peer certificates name their node as the DNS SAN
`raftq-node-<id>` (the convention of raft/peer_tls.py, which `cluster` may not import).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cluster.launcher import ClusterTls, NodeTls

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
VALID_DAYS = 825


class CertificatesUnavailable(RuntimeError):
    """`cryptography` is not installed: say how to get it."""


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise CertificatesUnavailable(
            "making certificates needs the cryptography package: pip install 'raftq[tls]'"
        ) from exc
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _san(names: Iterable[str], x509: Any) -> list[Any]:
    out = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_cluster_tls(directory: Path, ids: Iterable[int], host: str = "127.0.0.1") -> ClusterTls:
    """The files of a TLS cluster of nodes `ids` serving on `host`, made in `directory`
    on first use and reused after (so clients keep trusting the same CA)."""
    x509, hashes, serialization, ec, eku, oid = _crypto()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_path, ca_key_path = directory / CA_FILE, directory / CA_KEY_FILE
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    if ca_path.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(oid.COMMON_NAME, "raftq local cluster CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, pem_key(ca_key), private=True)
        _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)

    def leaf(stem: str, common_name: str, names: list[str]) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(oid.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(_san(names, x509)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([eku.SERVER_AUTH, eku.CLIENT_AUTH]), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(key_path, pem_key(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
        return cert_path, key_path

    nodes = {}
    hosts = list(dict.fromkeys([host, "127.0.0.1", "localhost"]))
    for node_id in ids:
        cert, key = leaf(f"node-{node_id}", host, hosts)
        peer_cert, peer_key = leaf(
            f"peer-{node_id}", f"raftq-node-{node_id}", [f"raftq-node-{node_id}"]
        )
        nodes[node_id] = NodeTls(cert=cert, key=key, peer_cert=peer_cert, peer_key=peer_key)
    return ClusterTls(ca=ca_path, nodes=nodes)


__all__ = ["CertificatesUnavailable", "make_cluster_tls"]
