"""The client's TLS options: a CA bundle and a client certificate, from arguments or the
environment, as one `ssl.SSLContext` for https:// and raftqs:// servers.

Why the environment too: `RAFTQ_SERVERS` already tells scripts and the CLI where the
cluster is; a TLS cluster also needs to say which CA it is signed by (and, when its
client ports require one, which certificate to present), and the same three variables
serve the library, the CLI and the examples alike:

    RAFTQ_CA_FILE     the CA bundle that verifies the nodes (default: the system's)
    RAFTQ_CERT_FILE   a client certificate (chain), PEM
    RAFTQ_KEY_FILE    its private key, PEM

An argument wins over its variable. Files only: never key material in arguments.
"""

from __future__ import annotations

import os
import ssl

from common.tls import client_context

CA_FILE_ENV = "RAFTQ_CA_FILE"
CERT_FILE_ENV = "RAFTQ_CERT_FILE"
KEY_FILE_ENV = "RAFTQ_KEY_FILE"


def client_ssl_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ssl.SSLContext | None:
    """The context the client verifies nodes with and presents its certificate from;
    None when nothing is configured (https/raftqs servers are then verified against the
    system's trust store). A given `ssl_context` is used as is.

    Raises ValueError naming the setting when a file is missing, unreadable or not PEM,
    or when only half of the client certificate pair is given.
    """
    if ssl_context is not None:
        return ssl_context
    ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
    cert_file = cert_file or os.environ.get(CERT_FILE_ENV) or None
    key_file = key_file or os.environ.get(KEY_FILE_ENV) or None
    if ca_file is None and cert_file is None and key_file is None:
        return None
    if (cert_file is None) != (key_file is None):
        raise ValueError(
            "a client certificate needs both cert_file and key_file "
            f"(--cert and --key, or {CERT_FILE_ENV} and {KEY_FILE_ENV})"
        )
    try:
        return client_context(ca_file, cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (ca_file, cert_file, key_file) if f)
        raise ValueError(f"cannot use the TLS files {files}: {exc}") from exc


__all__ = ["CA_FILE_ENV", "CERT_FILE_ENV", "KEY_FILE_ENV", "client_ssl_context"]
