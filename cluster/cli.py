"""`raftq`: the command line of a raftq cluster.

    raftq up                                   # local 3-node cluster in the foreground
    raftq status                               # who leads, terms, commit/applied indexes
    raftq queue create tasks --visibility-timeout 30
    raftq send tasks 'hello' 'world'           # or: producer | raftq send tasks
    raftq recv tasks --max 10 --ack --json
    raftq member list                          # voters and learners; add / remove / promote
    raftq leader transfer --to 2               # hand leadership over (default: best voter)
    raftq node --id 4 ... --join http://127.0.0.1:7001   # a new node joins by itself

Human tables by default, `--json` for scripts. Exit codes: 0 ok, 1 error (the cluster
said no), 2 usage, 3 cluster unavailable (no leader reachable within `--timeout`).
Servers come from `--servers URL,URL`, else `$RAFTQ_SERVERS`, else 127.0.0.1:7001-7003.
A TLS cluster (https://, raftqs:// servers): `--ca FILE` (else `$RAFTQ_CA_FILE`) verifies
it; `--cert FILE --key FILE` (else `$RAFTQ_CERT_FILE`, `$RAFTQ_KEY_FILE`) is the client
certificate for nodes that require one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import structlog

from cluster.cli_exchanges import ExchangeUsage, add_exchange_parsers, cmd_exchange
from cluster.cli_topics import (
    TopicUsageProblem,
    add_topic_parsers,
    cmd_group,
    cmd_publish,
    cmd_subscribe,
    cmd_topic,
)
from cluster.cli_users import UsageProblem, add_user_parsers, cmd_token, cmd_user
from cluster.errors import ClusterUnavailable, RaftqError
from cluster.launcher import ClusterStartError, LocalCluster
from cluster.message import Message, OutgoingMessage
from cluster.sync_client import Client
from common.logging_setup import configure_logging

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

#: Commands handed whole to another program (`python -m <module> args...`).
PASSTHROUGH = {"node": "node", "chaos": "chaos", "bench": "benchmarks.queue_bench"}
_GLOBAL_OPTIONS_WITH_VALUE = {
    "--servers",
    "--timeout",
    "--token-file",
    "--ca",
    "--cert",
    "--key",
}
#: The TLS options of client commands, and the variables that carry them into pass-through
#: commands (cluster/tls.py reads the same ones).
TLS_OPTIONS = {"--ca": "RAFTQ_CA_FILE", "--cert": "RAFTQ_CERT_FILE", "--key": "RAFTQ_KEY_FILE"}
SEND_BATCH = 256


class UsageError(Exception):
    """Bad command-line input found after parsing (exit code 2)."""


# --- output helpers ----------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned text table with a header row; None prints as '-'."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip())
    return "\n".join(lines)


def _one_line(text: str, limit: int = 80) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Output:
    """Where a command writes: JSON documents or human text on stdout, notes on stderr."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.err = err

    def json(self, doc: Any) -> None:
        self.out.write(json.dumps(doc, sort_keys=True) + "\n")

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def note(self, text: str) -> None:
        self.err.write(text + "\n")


# --- commands ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Every node's own view: role, term, commit/applied index; the leader marked *."""
    views = client.cluster_views(timeout_s=min(args.timeout, 3.0))
    rows: list[dict[str, Any]] = []
    leader: dict[str, Any] | None = None
    leader_term = -1
    for url, view in views.items():
        if isinstance(view, Exception):
            rows.append({"id": None, "url": url, "role": "unreachable", "error": str(view)})
            continue
        node_id = view.get("node_id")
        role = view.get("role") or next(
            (
                n.get("role")
                for n in view.get("nodes") or []
                if isinstance(n, dict) and n.get("id") == node_id
            ),
            None,
        )
        rows.append(
            {
                "id": node_id,
                "url": url,
                "role": role,
                "term": view.get("term"),
                "commit_index": view.get("commit_index"),
                "applied_index": view.get("applied_index"),
                "leader_id": (view.get("leader") or {}).get("id"),
                "cluster_id": view.get("cluster_id"),
            }
        )
        term = int(view.get("term") or 0)
        if view.get("leader") and term > leader_term:
            leader, leader_term = view["leader"], term
    rows.sort(key=lambda r: (r["id"] is None, r["id"] or 0, r["url"]))
    reachable = any("error" not in r for r in rows)
    if out.as_json:
        out.json({"leader": leader, "nodes": rows})
    else:
        leader_id = (leader or {}).get("id")
        table = [
            (
                f"{r['id']}*" if r["id"] is not None and r["id"] == leader_id else r["id"],
                r["url"],
                r["role"],
                r.get("term"),
                r.get("commit_index"),
                r.get("applied_index"),
            )
            for r in rows
        ]
        out.line(format_table(["ID", "URL", "ROLE", "TERM", "COMMIT", "APPLIED"], table))
        if leader:
            out.line(f"leader: node {leader.get('id')} ({leader.get('url')})")
        else:
            out.line("leader: none known")
        for r in rows:
            if "error" in r:
                out.note(f"raftq: {r['url']}: {r['error']}")
    return EXIT_OK if reachable else EXIT_UNAVAILABLE


def _queue_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.fifo:
        config["fifo"] = True
    for attr, key in (
        ("visibility_timeout", "visibility_timeout_s"),
        ("max_receives", "max_receives"),
        ("dlq", "dead_letter_queue"),
        ("delay", "delay_s"),
        ("retention", "retention_s"),
        ("dedup_window", "dedup_window_s"),
        ("max_message_bytes", "max_message_bytes"),
        ("expires", "expires_s"),
    ):
        value = getattr(args, attr)
        if value is not None:
            config[key] = value
    return config


def _print_mapping(out: Output, doc: dict[str, Any]) -> None:
    width = max((len(k) for k in doc), default=0)
    for key, value in doc.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        out.line(f"{key.ljust(width)}  {'-' if shown is None else shown}")


def cmd_queue(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Queue admin: create | list | show | delete | purge | redrive."""
    action = args.action
    if action == "list":
        queues = client.queues()
        if out.as_json:
            out.json({"queues": queues})
        elif not queues:
            out.note("(no queues)")
        else:
            rows = [
                (q.get("name"), q.get("depth"), q.get("in_flight"), q.get("delayed"))
                for q in queues
            ]
            out.line(format_table(["NAME", "DEPTH", "IN_FLIGHT", "DELAYED"], rows))
        return EXIT_OK
    if not args.name:
        raise UsageError(f"queue {action} needs a queue NAME")
    q = client.queue(args.name)
    if action == "create":
        result = q.create(**_queue_config(args))
    elif action == "show":
        result = q.info()
    elif action == "delete":
        q.delete()
        result = {"deleted": args.name}
    elif action == "purge":
        result = q.purge()
    elif action == "redrive":
        result = q.redrive()
    else:  # pragma: no cover - argparse restricts the choices
        raise UsageError(f"unknown queue action {action!r}")
    if out.as_json:
        out.json(result or {})
    elif action == "delete":
        out.line(f"deleted queue {args.name}")
    else:
        _print_mapping(out, result or {})
    return EXIT_OK


def _parse_attrs(pairs: Sequence[str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--attr expects key=value, got {pair!r}")
        attrs[key] = value
    return attrs


def _stdin_bodies(stream: TextIO) -> Iterator[str]:
    for line in stream:
        body = line.rstrip("\r\n")
        if body:
            yield body


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_send(args: argparse.Namespace, client: Client, out: Output, stdin: TextIO) -> int:
    """Send each BODY (or each non-empty stdin line) as one message; print the ids."""
    attrs = _parse_attrs(args.attr)
    if not args.bodies and stdin.isatty():
        out.note("raftq: reading messages from stdin, one per line (Ctrl-D to end)")
    bodies: Iterable[str] = args.bodies if args.bodies else _stdin_bodies(stdin)
    if args.dedup_id is not None and len(args.bodies) != 1:
        raise UsageError("--dedup-id needs exactly one BODY argument")
    q = client.queue(args.queue)
    sent: list[dict[str, Any]] = []
    for batch in _batches(bodies, SEND_BATCH):
        msgs = [
            OutgoingMessage(
                body,
                attributes=attrs,
                dedup_id=args.dedup_id,
                delay_s=args.delay,
                group_id=args.group,
                priority=args.priority,
            )
            for body in batch
        ]
        for result in q.send_many(msgs):
            item = {"id": result.id, "duplicate": result.duplicate, "dedup_id": result.dedup_id}
            sent.append(item)
            if not out.as_json:
                out.line(result.id + ("  (duplicate)" if result.duplicate else ""))
    if out.as_json:
        out.json({"messages": sent})
    elif not sent:
        out.note("(nothing to send)")
    return EXIT_OK


def _message_doc(msg: Message) -> dict[str, Any]:
    doc = dict(msg.raw)
    doc.setdefault("id", msg.id)
    doc.setdefault("receipt", msg.receipt)
    doc.setdefault("receive_count", msg.receive_count)
    return doc


def cmd_recv(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Receive up to --max messages; print them; with --ack, ack them after printing."""
    q = client.queue(args.queue)
    msgs = q.receive(args.max, wait_s=args.wait, visibility_timeout_s=args.visibility_timeout)
    if not out.as_json:
        if msgs:
            headers = ["ID", "COUNT", "BODY"] if args.ack else ["ID", "COUNT", "RECEIPT", "BODY"]
            rows = [
                (m.id, m.receive_count, _one_line(m.body))
                if args.ack
                else (m.id, m.receive_count, m.receipt, _one_line(m.body))
                for m in msgs
            ]
            out.line(format_table(headers, rows))
        else:
            out.note("(no messages)")
        out.out.flush()
    acked = 0
    stale: list[str] = []
    if args.ack and msgs:
        result = q.acknowledge_many(msgs)
        acked, stale = result.acked, list(result.stale)
    if out.as_json:
        doc: dict[str, Any] = {"messages": [_message_doc(m) for m in msgs]}
        if args.ack:
            doc["acked"] = acked
            doc["stale"] = stale
        out.json(doc)
    elif stale:
        out.note(f"raftq: {len(stale)} receipt(s) were stale: {', '.join(stale)}")
    return EXIT_OK


def cmd_ack(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Ack receipts printed by an earlier `raftq recv`."""
    result = client.queue(args.queue).acknowledge_many(args.receipts)
    if out.as_json:
        out.json({"acked": result.acked, "stale": list(result.stale)})
    else:
        out.line(f"acked {result.acked}")
        for receipt in result.stale:
            out.note(f"stale: {receipt}")
    return EXIT_OK if not result.stale else EXIT_ERROR


def _print_members(out: Output, conf: dict[str, Any]) -> None:
    if out.as_json:
        out.json(conf)
        return
    rows = [
        (
            m.get("id"),
            "voter" if m.get("voter") else "learner",
            m.get("url"),
            m.get("raft_addr"),
            m.get("incarnation"),
        )
        for m in conf.get("members") or []
    ]
    out.line(format_table(["ID", "ROLE", "URL", "RAFT", "INCARNATION"], rows))


def cmd_member(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Membership: list | add ID URL RAFT_ADDR [--learner] | remove ID | promote ID."""
    action = args.action
    if action == "list":
        if args.target:
            raise UsageError("member list takes no arguments")
        conf = client.members()
    elif action == "add":
        if len(args.target) != 3:
            raise UsageError("member add needs ID URL RAFT_ADDR (e.g. 4 http://h:7004 h:7104)")
        conf = client.add_member(
            _node_id(args.target[0]), args.target[1], args.target[2], voter=not args.learner
        )
    else:
        if len(args.target) != 1:
            raise UsageError(f"member {action} needs one node ID")
        node_id = _node_id(args.target[0])
        if action == "remove":
            conf = client.remove_member(node_id)
        else:
            conf = client.promote_member(node_id)
    _print_members(out, conf)
    return EXIT_OK


def _node_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"a node ID is a positive integer, got {text!r}")
    return int(text)


def cmd_leader(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Leadership: transfer [--to ID] (default: the most caught-up other voter)."""
    result = client.transfer_leader(args.to)
    if out.as_json:
        out.json(result)
    else:
        verb = "now leads" if result.get("transferred") else "already led"
        out.line(f"node {result.get('leader_id')} {verb}")
    return EXIT_OK


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    """Run a local cluster in the foreground until Ctrl-C / SIGTERM, then stop every node."""
    tls = None
    if args.tls:
        from cluster.certs import CertificatesUnavailable, make_cluster_tls

        try:
            tls = make_cluster_tls(
                Path(args.data_dir) / "tls", range(1, args.nodes + 1), host=args.host
            )
        except CertificatesUnavailable as exc:
            out.note(f"raftq: error: {exc}")
            return EXIT_ERROR
    cluster = LocalCluster(
        nodes=args.nodes,
        data_dir=args.data_dir,
        http_port=args.http_port,
        raft_port=args.raft_port,
        host=args.host,
        binary_port=args.binary_port,
        extra_args=tuple(args.node_args or ()),
        python=args.python,
        auth=args.auth,
        tls=tls,
    )

    def on_term(signum: int, frame: Any) -> NoReturn:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        cluster.start()
        started = time.monotonic()
        try:
            leader = cluster.wait_for_leader(args.leader_timeout)
        except ClusterStartError as exc:
            out.note(f"raftq: error: {exc}")
            return EXIT_ERROR
        for node_id in cluster.ids:  # every node serving and caught up, not just the leader
            try:
                remaining_s = args.leader_timeout - (time.monotonic() - started)
                cluster.wait_ready(node_id, timeout_s=max(1.0, remaining_s))
            except TimeoutError:
                out.note(f"raftq: warning: node {node_id} is not ready yet")
        if out.as_json:
            out.json(
                {
                    "nodes": [
                        {
                            "id": s.id,
                            "url": s.url,
                            "binary_url": s.binary_url,
                            "raft": s.raft_addr,
                            "pid": cluster.pids.get(s.id),
                        }
                        for s in cluster.specs.values()
                    ],
                    "leader": {"id": leader.id, "url": leader.url, "term": leader.term},
                    "data_dir": str(cluster.data_dir),
                    "peer_secret_file": str(cluster.secret_path),
                    "admin_token_file": (
                        str(cluster.admin_token_path) if cluster.admin_token_path else None
                    ),
                    "ca_file": str(tls.ca) if tls is not None else None,
                }
            )
        else:
            out.line(f"raftq: {len(cluster.specs)} nodes running, data in {cluster.data_dir}")
            out.line(f"peers authenticate with the secret in {cluster.secret_path}")
            for s in cluster.specs.values():
                out.line(
                    f"  node {s.id}  {s.binary_url}  {s.url}  raft {s.raft_addr}  "
                    f"pid {cluster.pids.get(s.id)}  log {s.log_path}"
                )
            out.line(f"leader: node {leader.id} ({leader.url}), term {leader.term}")
            # the binary protocol, what the client speaks by default (HTTP: the urls above)
            out.line(f"export RAFTQ_SERVERS={cluster.binary_servers}")
            if cluster.admin_token_path is not None:
                out.line(f"export RAFTQ_TOKEN_FILE={cluster.admin_token_path}  # the admin")
            else:
                out.line("client auth is OFF (loopback only); `raftq up --auth` turns it on")
            if tls is not None:  # clients verify the nodes with the CA raftq up made
                out.line(f"export RAFTQ_CA_FILE={tls.ca}")
            out.line("Press Ctrl-C to stop.")
        out.out.flush()
        reported: set[int] = set()
        while True:
            time.sleep(0.5)
            for node_id, code in cluster.returncodes().items():
                if code is not None and node_id not in reported:
                    reported.add(node_id)
                    reason = cluster.exit_reason(node_id)
                    out.note(
                        f"raftq: node {node_id} exited with code {code}"
                        + (f" ({reason})" if reason else "")
                        + f"; see {cluster.specs[node_id].log_path}"
                    )
    except KeyboardInterrupt:
        out.note("raftq: stopping all nodes")
        return EXIT_OK
    finally:
        cluster.stop_all()
        signal.signal(signal.SIGTERM, previous)


# --- parsing -----------------------------------------------------------------------------


def seconds(text: str) -> int | float:
    """A duration argument: an int when it is whole (the API's configs take integers)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return int(value) if value.is_integer() else value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every command except the pass-through ones (node, chaos, bench)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    # The TLS options, also after the command (`raftq status --ca ca.pem`); SUPPRESS keeps
    # a value given before the command.
    for flag in TLS_OPTIONS:
        common.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="raftq",
        description="raftq: a replicated message queue cluster.",
        epilog="Also: raftq node ARGS (one node), raftq chaos ARGS, raftq bench ARGS.",
    )
    parser.add_argument(
        "--servers",
        default=None,
        help="comma-separated node URLs (default $RAFTQ_SERVERS or http://127.0.0.1:7001-7003)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="deadline of each call in seconds (30)"
    )
    parser.add_argument(
        "--token-file",
        default=None,
        help="file holding this client's token (default $RAFTQ_TOKEN, else the file named "
        "by $RAFTQ_TOKEN_FILE); needed where the cluster has auth on",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        default=None,
        help="CA bundle that verifies https:// and raftqs:// servers (default $RAFTQ_CA_FILE, "
        "else the system's)",
    )
    parser.add_argument(
        "--cert",
        metavar="FILE",
        default=None,
        help="client certificate for nodes that require one (default $RAFTQ_CERT_FILE)",
    )
    parser.add_argument(
        "--key", metavar="FILE", default=None, help="its private key (default $RAFTQ_KEY_FILE)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log client events")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", parents=[common], help="run a local N-node cluster in the foreground")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--data-dir", default="./data")
    up.add_argument("--http-port", type=int, default=7001)
    up.add_argument("--raft-port", type=int, default=7101)
    up.add_argument(
        "--binary-port",
        type=int,
        default=None,
        help="first binary-protocol port (raftq:// URLs); default: each node's HTTP port + 200",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--auth",
        action="store_true",
        help="client auth on: an admin token is made in DATA_DIR/admin-token (without it, "
        "auth is off: fine on loopback, logged loudly by every node)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="serve https:// and raftqs:// and run peers over mutual TLS, with a CA and "
        "certificates made in DATA_DIR/tls on first use (needs the cryptography package)",
    )
    up.add_argument(
        "--leader-timeout", type=float, default=30.0, help="seconds to wait for a leader"
    )
    up.add_argument(
        "--python", default=sys.executable, help="interpreter that runs `-m node` (this one)"
    )
    up.add_argument(
        "--node-arg",
        dest="node_args",
        action="append",
        metavar="ARG",
        help="extra argument for every node (repeatable), e.g. --node-arg=--log-format=json",
    )

    sub.add_parser("status", parents=[common], help="nodes, roles, terms, indexes, leader")

    qp = sub.add_parser("queue", parents=[common], help="queue admin")
    qp.add_argument("action", choices=["create", "list", "show", "delete", "purge", "redrive"])
    qp.add_argument("name", nargs="?")
    qp.add_argument("--fifo", action="store_true", help="FIFO queue (ordered per group)")
    qp.add_argument("--visibility-timeout", type=seconds, metavar="S")
    qp.add_argument("--max-receives", type=int, metavar="N", help="deliveries before the DLQ")
    qp.add_argument("--dlq", metavar="NAME", help="dead-letter queue")
    qp.add_argument("--delay", type=seconds, metavar="S", help="default delivery delay")
    qp.add_argument("--retention", type=seconds, metavar="S")
    qp.add_argument("--dedup-window", type=seconds, metavar="S")
    qp.add_argument("--max-message-bytes", type=int, metavar="N")
    qp.add_argument("--expires", type=int, metavar="S", help="delete the queue once unused S s")

    sp = sub.add_parser("send", parents=[common], help="send messages (BODY args or stdin lines)")
    sp.add_argument("queue")
    sp.add_argument("bodies", nargs="*", metavar="BODY")
    sp.add_argument("--dedup-id", metavar="ID")
    sp.add_argument("--delay", type=seconds, metavar="S")
    sp.add_argument("--attr", action="append", default=[], metavar="K=V")
    sp.add_argument("--group", metavar="ID", help="message group (FIFO queues)")
    sp.add_argument("--priority", type=int, metavar="N")

    rp = sub.add_parser("recv", parents=[common], help="receive messages")
    rp.add_argument("queue")
    rp.add_argument("--max", type=int, default=1, metavar="N")
    rp.add_argument("--wait", type=seconds, default=0.0, metavar="S", help="long-poll seconds")
    rp.add_argument("--ack", action="store_true", help="ack after printing")
    rp.add_argument("--visibility-timeout", type=seconds, metavar="S")

    mp = sub.add_parser(
        "member",
        parents=[common],
        help="membership: list | add ID URL RAFT_ADDR | remove ID | promote ID",
    )
    mp.add_argument("action", choices=["list", "add", "remove", "promote"])
    mp.add_argument("target", nargs="*", metavar="ARG")
    mp.add_argument("--learner", action="store_true", help="add: keep the node a learner (no vote)")

    lp = sub.add_parser("leader", parents=[common], help="leadership: transfer [--to ID]")
    lp.add_argument("action", choices=["transfer"])
    lp.add_argument("--to", type=int, metavar="ID", help="the voter to hand over to")

    add_user_parsers(sub, common)
    add_exchange_parsers(sub, common)
    add_topic_parsers(sub, common)

    ap = sub.add_parser("ack", parents=[common], help="ack receipts printed by recv")
    ap.add_argument("queue")
    ap.add_argument("receipts", nargs="+", metavar="RECEIPT")
    return parser


def split_passthrough(argv: Sequence[str]) -> tuple[str, list[str], list[str]] | None:
    """If argv runs a pass-through command: (module, its args, global args before it)."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
            continue
        if token.startswith("-"):
            i += 1
            continue
        if token in PASSTHROUGH:
            return PASSTHROUGH[token], list(argv[i + 1 :]), list(argv[:i])
        return None
    return None


def exec_module(module: str, args: Sequence[str], env: dict[str, str] | None = None) -> NoReturn:
    """Replace this process with `python -m module args...`."""
    argv = [sys.executable, "-P", "-m", module, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    if env is None:
        os.execv(sys.executable, argv)
    os.execve(sys.executable, argv, env)


def _passthrough(module: str, args: list[str], global_args: list[str], err: TextIO) -> int:
    if importlib.util.find_spec(module) is None:
        err.write(f"raftq: error: `python -m {module}` is not available in this installation\n")
        return EXIT_ERROR
    env = dict(os.environ)
    if "--servers" in global_args:
        env["RAFTQ_SERVERS"] = global_args[global_args.index("--servers") + 1]
    if "--token-file" in global_args:
        env["RAFTQ_TOKEN_FILE"] = global_args[global_args.index("--token-file") + 1]
    for flag, variable in TLS_OPTIONS.items():
        if flag in global_args:
            env[variable] = global_args[global_args.index(flag) + 1]
    exec_module(module, args, env)


def configure_cli_logging(verbose: bool = False) -> None:
    """Client logs go to stderr (stdout is for results), and only with --verbose: the
    command itself reports failures in one line."""
    if structlog.is_configured():
        return
    configure_logging(
        "console", logging.DEBUG if verbose else logging.ERROR, cache_logger_on_first_use=False
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Entry point of the `raftq` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out_stream = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    passthrough = split_passthrough(argv)
    if passthrough is not None:
        return _passthrough(*passthrough, err=err_stream)
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out_stream), contextlib.redirect_stderr(err_stream):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    out = Output(getattr(args, "json", False), out_stream, err_stream)
    configure_cli_logging(args.verbose)
    if args.command == "up":
        return cmd_up(args, out)
    if args.command == "token":
        try:
            return cmd_token(args, out)
        except UsageProblem as exc:
            err_stream.write(f"raftq token: error: {exc}\n")
            return EXIT_USAGE
    try:
        token = None
        if args.token_file:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read(4096).strip()
        client = Client(
            args.servers,
            timeout_s=args.timeout,
            request_timeout_s=min(10.0, args.timeout),
            token=token,
            ca_file=args.ca,
            cert_file=args.cert,
            key_file=args.key,
        )
    except OSError as exc:
        err_stream.write(f"raftq: error: cannot read the token file: {exc}\n")
        return EXIT_USAGE
    except ValueError as exc:
        err_stream.write(f"raftq: error: {exc}\n")
        return EXIT_USAGE
    handlers: dict[str, Callable[[], int]] = {
        "status": lambda: cmd_status(args, client, out),
        "queue": lambda: cmd_queue(args, client, out),
        "send": lambda: cmd_send(args, client, out, stdin or sys.stdin),
        "recv": lambda: cmd_recv(args, client, out),
        "ack": lambda: cmd_ack(args, client, out),
        "member": lambda: cmd_member(args, client, out),
        "leader": lambda: cmd_leader(args, client, out),
        "user": lambda: cmd_user(args, client, out),
        "exchange": lambda: cmd_exchange(args, client, out),
        "topic": lambda: cmd_topic(args, client, out),
        "publish": lambda: cmd_publish(args, client, out, stdin or sys.stdin),
        "subscribe": lambda: cmd_subscribe(args, client, out),
        "group": lambda: cmd_group(args, client, out),
    }
    try:
        return handlers[args.command]()
    except (UsageError, UsageProblem, ExchangeUsage, TopicUsageProblem) as exc:
        err_stream.write(f"raftq {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except ClusterUnavailable as exc:
        err_stream.write(f"raftq: cluster unavailable: {exc.message}\n")
        return EXIT_UNAVAILABLE
    except RaftqError as exc:
        err_stream.write(f"raftq: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err_stream.write("raftq: interrupted\n")
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
