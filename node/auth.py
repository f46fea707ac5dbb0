"""Who is calling, and may they: bearer tokens checked against node.users, and permissions.

Why this shape:
- A token is `rq1.{user}.{secret}` (common/tokens.py): the user name finds the one record
  to check (no scan over every user's hash). Records hold PBKDF2-HMAC-SHA256 of the secret with a
  per-user salt (node/state/users.py), so a copy of a data dir, a snapshot or the Raft
  log gives no token.
- PBKDF2 costs ~20 ms by design, so a node checks each distinct token once: a keyed
  BLAKE2b of the token (a key of this process, never stored) maps to the user and the
  hash it matched. Later requests cost one BLAKE2b and two dict lookups (~1 µs). A token
  rotated or a user deleted fails at once: the cached hash must still be the record's.
  A wrong token is remembered as wrong until the next user change. The slow hash runs on
  a worker thread (hashlib releases the GIL), one at a time: heartbeats never wait on it
  and a flood of made-up tokens costs at most one core.
- Permissions are name patterns per kind (fnmatch `*` and `?`), as RabbitMQ's configure/
  write/read regexes per vhost: `read` receives, acks, nacks, extends and shows a queue;
  `write` sends to it; `admin` creates, deletes, purges and redrives it. Cluster-wide
  actions (membership, leader transfer, users, /v1/admin/*) need `admin` on `*` itself.
  No kind implies another.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

from common.tokens import new_token, parse_token
from node.http import ApiError

__all__ = ["Authenticator", "Principal", "credential_for", "new_token", "parse_token"]

SALT_BYTES = 16
#: PBKDF2 rounds for new tokens (each record keeps its own count, so this can grow).
ITERATIONS = 100_000
#: Distinct tokens remembered per node (a full cache is emptied and refilled).
MAX_CACHED_TOKENS = 10_000
#: Every permission on everything: the bootstrap admin's, and anyone's with auth off.
ALL_PERMISSIONS: dict[str, list[str]] = {"read": ["*"], "write": ["*"], "admin": ["*"]}
CLUSTER = "*"  # the resource name of cluster-wide actions

# What a route needs (node/api.py ROUTES): nothing at all, any valid token, a permission
# on the queue in the path (or cluster-wide when the path names none), or checks of its own
# in the handler (on what the body names) after a valid token.
OPEN, USER, READ, WRITE, ADMIN, IN_HANDLER = "open", "user", "read", "write", "admin", "handler"


class UserStore(Protocol):
    users_gen: int

    def user(self, name: str) -> dict[str, Any] | None: ...


def hash_secret(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode("ascii"), salt, iterations)


def credential_for(token: str) -> dict[str, Any]:
    """The command fields that store `token`: salt, hash and iterations (slow: ~20 ms)."""
    parsed = parse_token(token)
    if parsed is None:
        raise ValueError("not a raftq token (rq1.USER.SECRET)")
    salt = os.urandom(SALT_BYTES)
    return {
        "salt": salt,
        "hash": hash_secret(parsed[1], salt, ITERATIONS),
        "iterations": ITERATIONS,
    }


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: `name` None when auth is off (then everything is allowed
    and nothing is namespaced)."""

    name: str | None
    permissions: Mapping[str, Sequence[str]]

    def may(self, perm: str, resource: str) -> bool:
        patterns = self.permissions.get(perm, ())
        if resource == CLUSTER:
            return CLUSTER in patterns
        return any(fnmatchcase(resource, p) for p in patterns)

    def sees(self, name: str) -> bool:
        """Whether any permission names `name`: what list routes show this caller."""
        return any(self.may(perm, name) for perm in ("read", "write", "admin"))

    def may_any(self, perm: str) -> bool:
        return bool(self.permissions.get(perm))

    def require(self, perm: str, resource: str) -> None:
        """ApiError 403 unless this caller has `perm` on `resource`."""
        if not self.may(perm, resource):
            what = "the cluster" if resource == CLUSTER else repr(resource)
            raise ApiError(
                403,
                "forbidden",
                f"user {self.name!r} lacks the {perm} permission on {what}",
                permission=perm,
                resource=resource,
            )

    def scoped(self, client_id: str) -> str:
        """`client_id` (a producer or txn id) in this caller's own namespace, so one user
        can neither fence another's producer nor claim another's transaction id."""
        return client_id if self.name is None else f"{self.name}/{client_id}"

    def unscoped(self, stored_id: str) -> str:
        if self.name is None:
            return stored_id
        prefix = f"{self.name}/"
        return stored_id[len(prefix) :] if stored_id.startswith(prefix) else stored_id


ANYONE = Principal(None, ALL_PERMISSIONS)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="raftq"'}
    )


class Authenticator:
    """Turns an `Authorization` header into a Principal, or raises 401 (see module doc)."""

    def __init__(self, store: UserStore, enabled: bool) -> None:
        self.store = store
        self.enabled = enabled
        self._key = secrets.token_bytes(32)
        # token digest -> (user, the record hash it matched); a wrong one -> users_gen then
        self._known: dict[bytes, tuple[str, bytes]] = {}
        self._wrong: dict[bytes, int] = {}
        self._slow = asyncio.Semaphore(1)

    async def principal(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return ANYONE
        if not authorization:
            raise unauthorized("this node requires a token: Authorization: Bearer rq1.USER.SECRET")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("the Authorization header must be: Bearer rq1.USER.SECRET")
        return await self.verify(token.strip())

    async def verify(self, token: str) -> Principal:
        digest = hashlib.blake2b(
            token.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16
        ).digest()
        known = self._known.get(digest)
        if known is not None:
            record = self.store.user(known[0])
            if record is not None and record["hash"] == known[1]:
                return Principal(known[0], record["permissions"])
            del self._known[digest]  # rotated or deleted since: check again below
        if self._wrong.get(digest) == self.store.users_gen:
            raise self._refused()
        parsed = parse_token(token)
        record = None if parsed is None else self.store.user(parsed[0])
        gen = self.store.users_gen
        if parsed is not None and record is not None:
            async with self._slow:
                derived = await asyncio.to_thread(
                    hash_secret, parsed[1], record["salt"], record["iterations"]
                )
            if hmac.compare_digest(derived, record["hash"]):
                self._remember(self._known, digest, (parsed[0], record["hash"]))
                return Principal(parsed[0], record["permissions"])
        self._remember(self._wrong, digest, gen)
        raise self._refused()

    def _refused(self) -> ApiError:
        return unauthorized("the token is not valid (unknown user, wrong, or rotated)")

    @staticmethod
    def _remember(cache: dict[bytes, Any], digest: bytes, value: Any) -> None:
        if len(cache) >= MAX_CACHED_TOKENS:
            cache.clear()
        cache[digest] = value
