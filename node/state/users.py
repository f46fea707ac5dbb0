"""Users of the client API: a name, a hashed token and permissions, in node.users.

Why in the replicated state: every node must answer 401/403 alike, and a user added or a
token rotated on the leader must hold on every node without copying files around. Only
the token's hash travels in the Raft log and snapshots: the leader hashes the token
before it proposes (node/auth.py), so the command is deterministic and the token itself
never reaches a disk.

Layout in node.users:
  name (UTF-8) -> {"salt", "hash", "iterations", "permissions", "created_ms", "token_ms"}

`permissions` maps each of read / write / admin to a list of name patterns (`*` and `?`
wildcards, as fnmatch; see node/auth.py for what each permission allows).
"""

from __future__ import annotations

import re
from typing import Any

from common.tokens import USER_NAME_PATTERN
from node.errors import BadRequest, Conflict, NotFound
from node.state import fields
from node.state.tables import META_USERS_BOOTSTRAPPED, Ctx, unpack

USER_NAME_RE = re.compile(USER_NAME_PATTERN)
PERMISSIONS = ("read", "write", "admin")
PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?-]{1,128}")
MAX_PATTERNS = 64
SALT_BYTES = 16
HASH_BYTES = 32
MIN_ITERATIONS = 10_000
MAX_ITERATIONS = 10_000_000


def valid_user_name(value: Any) -> bool:
    return isinstance(value, str) and USER_NAME_RE.fullmatch(value) is not None


def check_user_name(value: Any, field: str = "name") -> str:
    if not valid_user_name(value):
        raise BadRequest(f"{field} must match [A-Za-z0-9_-]{{1,64}}", field=field)
    return value


def check_permissions(value: Any, field: str = "permissions") -> dict[str, list[str]]:
    """`{"read": [...], "write": [...], "admin": [...]}`, each list of name patterns;
    missing keys are empty lists. Order is kept and duplicates dropped (deterministic)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{field} must be an object {{read, write, admin}}", field=field)
    unknown = sorted(k for k in value if k not in PERMISSIONS)
    if unknown:
        raise BadRequest(f"{field} has unknown permission(s) {unknown}", field=field)
    out: dict[str, list[str]] = {}
    for perm in PERMISSIONS:
        patterns = value.get(perm, [])
        where = f"{field}.{perm}"
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise BadRequest(
                f"{where} must be a list of at most {MAX_PATTERNS} patterns", field=where
            )
        kept: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or PATTERN_RE.fullmatch(pattern) is None:
                raise BadRequest(
                    f"{where} holds {pattern!r}: a pattern is 1..128 of [A-Za-z0-9_.-] and "
                    "the wildcards * and ?",
                    field=where,
                )
            if pattern not in kept:
                kept.append(pattern)
        out[perm] = kept
    return out


def _check_credential(cmd: dict[str, Any]) -> dict[str, Any]:
    salt, digest = cmd.get("salt"), cmd.get("hash")
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise BadRequest(f"salt must be {SALT_BYTES} bytes", field="salt")
    if not isinstance(digest, bytes) or len(digest) != HASH_BYTES:
        raise BadRequest(f"hash must be {HASH_BYTES} bytes", field="hash")
    iterations = fields.int_field(
        cmd.get("iterations"), "iterations", MIN_ITERATIONS, MAX_ITERATIONS
    )
    return {"salt": salt, "hash": digest, "iterations": iterations}


def public(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """What the API shows of a user: never the hash or salt."""
    return {
        "name": name,
        "permissions": record["permissions"],
        "created_ms": record["created_ms"],
        "token_ms": record["token_ms"],
    }


def get_user(ctx: Ctx, name: str) -> dict[str, Any] | None:
    if not valid_user_name(name):
        return None
    return ctx.get(ctx.tables.users, name.encode())


def all_users(ctx: Ctx) -> list[tuple[str, dict[str, Any]]]:
    cursor = ctx.txn.cursor(db=ctx.tables.users)
    return [(k.decode(), unpack(v)) for k, v in cursor]


def bootstrapped(ctx: Ctx) -> bool:
    return ctx.get_int(META_USERS_BOOTSTRAPPED) != 0


def user_add(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """A new user. With `bootstrap` set it is added once in the cluster's life (the first
    start's admin, proposed by whichever node with a bootstrap token leads: the first one
    applied wins, later ones answer `added: false`), so deleting that user later is not
    undone by a node that restarts with the old token file."""
    name = check_user_name(cmd.get("name"))
    bootstrap = fields.bool_field(cmd.get("bootstrap", False), "bootstrap")
    credential = _check_credential(cmd)
    permissions = check_permissions(cmd.get("permissions"))
    exists = ctx.get(ctx.tables.users, name.encode()) is not None
    if bootstrap:
        if bootstrapped(ctx) or exists:
            ctx.put_int(META_USERS_BOOTSTRAPPED, 1)
            return {"added": False, "name": name}
        ctx.put_int(META_USERS_BOOTSTRAPPED, 1)
    elif exists:
        raise Conflict(f"user {name!r} exists; rotate its token or change its permissions")
    record = {
        **credential,
        "permissions": permissions,
        "created_ms": ctx.now_ms,
        "token_ms": ctx.now_ms,
    }
    ctx.put(ctx.tables.users, name.encode(), record)
    return {"added": True, "user": public(name, record)}


def user_update(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """New permissions, or a new token (rotation: the old token stops working on every
    node once this applies there), or both."""
    name = check_user_name(cmd.get("name"))
    record = ctx.get(ctx.tables.users, name.encode())
    if record is None:
        raise NotFound(f"user {name!r} does not exist")
    changed = False
    if "permissions" in cmd:
        record["permissions"] = check_permissions(cmd["permissions"])
        changed = True
    if "hash" in cmd:
        record.update(_check_credential(cmd))
        record["token_ms"] = ctx.now_ms
        changed = True
    if not changed:
        raise BadRequest("give permissions, a new token, or both", field="permissions")
    ctx.put(ctx.tables.users, name.encode(), record)
    return {"user": public(name, record)}


def user_delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    name = check_user_name(cmd.get("name"))
    if not ctx.txn.delete(name.encode(), db=ctx.tables.users):
        raise NotFound(f"user {name!r} does not exist")
    return {"deleted": name}
