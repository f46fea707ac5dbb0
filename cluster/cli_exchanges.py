"""`raftq exchange ...`: exchanges from the shell.

    raftq exchange create orders --type topic [--alternate-queue unrouted]
    raftq exchange bind orders payments --pattern 'order.created.#'
    raftq exchange publish orders '{"id": 7}' --routing-key order.created.eu
    raftq exchange list | show NAME | unbind NAME QUEUE ... | delete NAME

Why a module of its own: cluster/cli.py holds the queue and cluster commands; this one
only adds its parser (`add_exchange_parsers`) and its command (`cmd_exchange`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Protocol

from cluster.exchanges import PublishMessage
from cluster.sync_client import Client

ACTIONS = ("create", "list", "show", "delete", "bind", "unbind", "publish")
TYPES = ("direct", "fanout", "topic", "headers")


class _Output(Protocol):
    as_json: bool

    def json(self, doc: Any) -> None: ...
    def line(self, text: str = "") -> None: ...
    def note(self, text: str) -> None: ...


class ExchangeUsage(ValueError):
    """The exchange command's arguments do not fit (cli.py maps it to a usage error)."""


def add_exchange_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    ep = sub.add_parser(
        "exchange",
        parents=[common],
        help="exchanges: create NAME --type T | list | show NAME | delete NAME | "
        "bind NAME QUEUE | unbind NAME QUEUE | publish NAME BODY...",
    )
    ep.add_argument("action", choices=ACTIONS)
    ep.add_argument("name", nargs="?", help="the exchange")
    ep.add_argument("rest", nargs="*", metavar="QUEUE|BODY", help="bind/unbind: the queue; "
                    "publish: the message bodies")  # fmt: skip
    ep.add_argument("--type", choices=TYPES, help="create: the exchange type")
    ep.add_argument("--alternate-queue", metavar="QUEUE", help="create: unroutable go here")
    ep.add_argument("--routing-key", metavar="KEY", help="direct binding / publish key")
    ep.add_argument("--pattern", metavar="PATTERN", help="topic binding (* one word, # any)")
    ep.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="headers binding pair / published header (repeatable)",
    )
    ep.add_argument("--match", choices=["all", "any"], help="headers binding: all or any")
    ep.add_argument("--dedup-id", metavar="ID", help="publish: one message's dedup id")


def _headers(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ExchangeUsage(f"--header takes K=V, not {pair!r}")
        out[key] = value
    return out


def _body(text: str) -> Any:
    """A JSON body when the text is JSON, else the text itself (as `raftq send`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "routing_key": args.routing_key,
        "pattern": args.pattern,
        "headers": _headers(args.header),
        "match": args.match,
    }


def _print(out: _Output, doc: dict[str, Any]) -> None:
    width = max((len(k) for k in doc), default=0)
    for key, value in doc.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        out.line(f"{key:<{width}}  {shown}")


def cmd_exchange(args: argparse.Namespace, client: Client, out: _Output) -> int:
    action, name, rest = args.action, args.name, list(args.rest)
    if action == "list":
        if name:
            raise ExchangeUsage("exchange list takes no name")
        found = client.exchanges()
        if out.as_json:
            out.json({"exchanges": found})
        elif not found:
            out.note("(no exchanges)")
        for e in [] if out.as_json else found:
            out.line(
                f"{e['name']}  {e['type']}  bindings={e['binding_count']}  "
                f"routed={e['routed_total']}  unroutable={e['unroutable_total']}"
            )
        return 0
    if not name:
        raise ExchangeUsage(f"exchange {action} needs an exchange NAME")
    ex = client.exchange(name)
    if action in ("bind", "unbind"):
        if len(rest) != 1:
            raise ExchangeUsage(f"exchange {action} needs one QUEUE after the exchange")
        call = ex.bind if action == "bind" else ex.unbind
        result = call(rest[0], **_spec(args))
    elif action == "publish":
        if not rest:
            raise ExchangeUsage("exchange publish needs at least one BODY")
        if args.dedup_id and len(rest) > 1:
            raise ExchangeUsage("--dedup-id names one message: give one BODY")
        messages = [
            PublishMessage(
                _body(text),
                routing_key=args.routing_key or "",
                headers=_headers(args.header) or {},
                dedup_id=args.dedup_id,
            )
            for text in rest
        ]
        published = ex.publish_many(messages)
        result = {
            "messages": [
                {"routed_to": p.routed_to, "ids": p.ids, "unroutable": p.unroutable}
                for p in published
            ]
        }
        if not out.as_json:
            for p in published:
                where = ", ".join(p.routed_to) or "(nowhere)"
                out.line(f"routed to {where}" + ("  [unroutable]" if p.unroutable else ""))
            return 0
    elif rest:
        raise ExchangeUsage(f"exchange {action} takes only the exchange NAME")
    elif action == "create":
        if args.type is None:
            raise ExchangeUsage("exchange create needs --type direct|fanout|topic|headers")
        result = ex.declare(args.type, alternate_queue=args.alternate_queue)
    elif action == "show":
        result = ex.info()
    else:
        result = ex.delete()
    out.json(result) if out.as_json else _print(out, result)
    return 0
