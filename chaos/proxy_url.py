"""Which Toxiproxy server the chaos tools talk to: `--toxiproxy-url`, else `$TOXIPROXY_URL`,
else the local default.

Why apart from the client: the command line needs the option (and `--list`, `proxy` need
nothing else) without importing toxiproxy-python, which is optional (the `chaos` extra);
only a run, through `chaos.proxy_client`, needs the library itself.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_URL = "http://127.0.0.1:8474"
ENV_VAR = "TOXIPROXY_URL"


def resolve_url(url: str | None = None) -> str:
    """The server URL: the explicit one, else $TOXIPROXY_URL, else http://127.0.0.1:8474."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def add_toxiproxy_url_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--toxiproxy-url` (default: $TOXIPROXY_URL, else the local default)."""
    parser.add_argument(
        "--toxiproxy-url",
        default=None,
        help=f"Toxiproxy API URL (default: ${ENV_VAR} or {DEFAULT_URL})",
    )
