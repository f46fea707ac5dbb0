"""`raftq user ...` and `raftq token new`: users, permissions and tokens from the shell.

Why a module of its own: cluster/cli.py holds the queue and cluster commands; users are a
separate concern with their own output (a token is printed once, alone on stdout, so a
script can capture it: `raftq user add app --write 'orders*' > app.token`).
"""

from __future__ import annotations

import argparse
from typing import Any, Protocol

from cluster.sync_client import Client
from common.tokens import new_token

PERMISSION_FLAGS = ("read", "write", "admin")


class _Output(Protocol):
    as_json: bool

    def json(self, doc: Any) -> None: ...
    def line(self, text: str = "") -> None: ...
    def note(self, text: str) -> None: ...


class UsageProblem(ValueError):
    """The user command's arguments do not fit (cli.py maps it to a usage error)."""


def add_user_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "user",
        parents=[common],
        help="users and permissions: list | show NAME | add NAME | remove NAME | "
        "token NAME (rotate) | grant NAME (replace permissions) | whoami",
    )
    up.add_argument("action", choices=["list", "show", "add", "remove", "token", "grant", "whoami"])
    up.add_argument("name", nargs="?")
    for perm in PERMISSION_FLAGS:
        up.add_argument(
            f"--{perm}",
            action="append",
            default=[],
            metavar="PATTERN",
            help=f"a queue-name pattern ('*', 'orders.*') the user may {perm} (repeatable)",
        )
    tp = sub.add_parser("token", parents=[common], help="new USER: print a fresh token (local)")
    tp.add_argument("action", choices=["new"])
    tp.add_argument("name", metavar="USER")


def _permissions(args: argparse.Namespace) -> dict[str, list[str]]:
    return {perm: list(getattr(args, perm)) for perm in PERMISSION_FLAGS}


def _print_user(out: _Output, user: dict[str, Any]) -> None:
    perms = user.get("permissions") or {}
    text = "  ".join(f"{p}={','.join(perms.get(p) or []) or '-'}" for p in PERMISSION_FLAGS)
    out.line(f"{user.get('name')}  {text}")


def cmd_user(args: argparse.Namespace, client: Client, out: _Output) -> int:
    """Users of a cluster with auth (every action but whoami needs admin on '*')."""
    action, name = args.action, args.name
    if action in ("list", "whoami") and name:
        raise UsageProblem(f"user {action} takes no name")
    if action not in ("list", "whoami") and not name:
        raise UsageProblem(f"user {action} needs a user NAME")
    if action == "list":
        users = client.users()
        if out.as_json:
            out.json({"users": users})
        for user in [] if out.as_json else users:
            _print_user(out, user)
    elif action == "whoami":
        me = client.whoami()
        if out.as_json:
            out.json(me)
        elif me.get("user") is None:
            out.line("auth is off on this cluster: every client may do everything")
        else:
            _print_user(out, {"name": me["user"], "permissions": me.get("permissions")})
    elif action == "show":
        user = client.request("GET", f"/v1/users/{name}")
        out.json(user) if out.as_json else _print_user(out, user)
    elif action == "add":
        user, token = client.add_user(name, _permissions(args))
        _print_token(out, user, token)
    elif action == "token":
        _print_token(out, {"name": name}, client.rotate_token(name))
    elif action == "grant":
        user = client.set_permissions(name, _permissions(args))
        out.json(user) if out.as_json else _print_user(out, user)
    else:
        removed = client.remove_user(name)
        out.json(removed) if out.as_json else out.line(f"removed {name}")
    return 0


def _print_token(out: _Output, user: dict[str, Any], token: str) -> None:
    """The token alone on stdout (capturable); the rest on stderr."""
    if out.as_json:
        out.json({"user": user, "token": token})
        return
    out.line(token)
    out.note(f"raftq: the token of {user.get('name')}: shown once, only its hash is kept")


def cmd_token(args: argparse.Namespace, out: _Output) -> int:
    """A fresh token, made here (for a node's --admin-token-file): no cluster involved."""
    try:
        token = new_token(args.name)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    out.json({"token": token}) if out.as_json else out.line(token)
    return 0
