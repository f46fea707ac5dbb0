"""The client token format, shared by the node (which checks tokens) and the tools that
make or carry them (`raftq token new`, `raftq up --auth`, LocalCluster).

A token is `rq1.{user}.{secret}`: the version prefix makes a leaked token easy to spot
(secret scanners match on it), the user name lets a node find the one record to check,
and the secret is 32 random bytes in unpadded base64url (256 bits: it cannot be guessed,
so a token is not a password).
"""

from __future__ import annotations

import base64
import re
import secrets

TOKEN_PREFIX = "rq1"
USER_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
TOKEN_RE = re.compile(rf"{TOKEN_PREFIX}\.({USER_NAME_PATTERN})\.([A-Za-z0-9_-]{{43}})")
SECRET_BYTES = 32


def new_token(user: str) -> str:
    """A fresh token for `user` (ValueError if the name is not a valid user name)."""
    if re.fullmatch(USER_NAME_PATTERN, user) is None:
        raise ValueError(f"a user name matches {USER_NAME_PATTERN}, got {user!r}")
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")
    return f"{TOKEN_PREFIX}.{user}.{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(user, secret) of a well-formed token, else None."""
    found = TOKEN_RE.fullmatch(token)
    return None if found is None else (found.group(1), found.group(2))
