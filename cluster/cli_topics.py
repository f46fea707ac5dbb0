"""`raftq topic ...`, `raftq publish`, `raftq subscribe`, `raftq group show`: topics and
consumer groups from the shell.

Why a module of its own: cluster/cli.py holds the queue and cluster commands; topics are
a second data model with their own output (records are printed one a line as
`PARTITION OFFSET KEY VALUE`, so a pipeline can read them as they come).
"""

from __future__ import annotations

import argparse
import threading
from typing import Any, Protocol, TextIO

from cluster.sync_client import Client
from cluster.topics import TopicRecord


class _Output(Protocol):
    as_json: bool

    def json(self, doc: Any) -> None: ...
    def line(self, text: str = "") -> None: ...
    def note(self, text: str) -> None: ...


class TopicUsageProblem(ValueError):
    """The topic command's arguments do not fit (cli.py maps it to a usage error)."""


def add_topic_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    tp = sub.add_parser(
        "topic",
        parents=[common],
        help="topics: create NAME [--partitions N] | list | show NAME | delete NAME",
    )
    tp.add_argument("action", choices=["create", "list", "show", "delete"])
    tp.add_argument("name", nargs="?")
    tp.add_argument("--partitions", type=int, metavar="N", help="partitions (grow only)")
    tp.add_argument("--retention", type=int, metavar="S", help="retention_s (seconds)")
    tp.add_argument("--retention-bytes", type=int, metavar="B", help="per-partition bytes")

    pp = sub.add_parser("publish", parents=[common], help="append VALUE... to a topic")
    pp.add_argument("topic")
    pp.add_argument("values", nargs="*", metavar="VALUE", help="values (default: stdin lines)")
    pp.add_argument("--record-key", help="the records' key (partition by its hash)")
    pp.add_argument("--partition", type=int, metavar="P", help="this partition")

    sp = sub.add_parser(
        "subscribe", parents=[common], help="consume TOPIC as a member of --group G"
    )
    sp.add_argument("topic")
    sp.add_argument("--group", required=True, metavar="G")
    sp.add_argument("--member-id", metavar="ID")
    sp.add_argument("--start", choices=["earliest", "latest"], default="earliest")
    sp.add_argument("--max", type=int, default=0, metavar="N", help="stop after N records")

    gp = sub.add_parser("group", parents=[common], help="consumer groups: show G")
    gp.add_argument("action", choices=["show"])
    gp.add_argument("name", metavar="G")


def _table(rows: list[list[Any]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def cmd_topic(args: argparse.Namespace, client: Client, out: _Output) -> int:
    action, name = args.action, args.name
    if action == "list":
        topics = client.topics()
        if out.as_json:
            out.json({"topics": topics})
        elif topics:
            rows: list[list[Any]] = [["NAME", "PARTITIONS", "RECORDS", "RETENTION_S"]]
            for t in topics:
                kept = sum(p["high_watermark"] - p["log_start"] for p in t["partition_stats"])
                rows.append([t["name"], t["partitions"], kept, t["retention_s"]])
            out.line(_table(rows))
        else:
            out.note("(no topics)")
        return 0
    if not name:
        raise TopicUsageProblem(f"topic {action} needs a topic NAME")
    topic = client.topic(name)
    if action == "create":
        config = {
            k: v
            for k, v in (
                ("partitions", args.partitions),
                ("retention_s", args.retention),
                ("retention_bytes", args.retention_bytes),
            )
            if v is not None
        }
        result = topic.create(**config)
        out.json(result) if out.as_json else out.line(f"{name}: {result['partitions']} partitions")
    elif action == "show":
        info = topic.info()
        if out.as_json:
            out.json(info)
        else:
            out.line(
                f"{name}: retention_s={info['retention_s']} "
                f"retention_bytes={info['retention_bytes']}"
            )
            rows = [["PARTITION", "LOG_START", "HIGH_WATERMARK", "BYTES"]]
            rows += [
                [p["partition"], p["log_start"], p["high_watermark"], p["bytes"]]
                for p in info["partition_stats"]
            ]
            out.line(_table(rows))
    else:
        result = topic.delete()
        out.json(result) if out.as_json else out.line(f"deleted {name}")
    return 0


def cmd_publish(args: argparse.Namespace, client: Client, out: _Output, stdin: TextIO) -> int:
    """Append each VALUE (or each non-empty stdin line) as one record; print where."""
    values = args.values or [line.rstrip("\n") for line in stdin if line.strip()]
    topic = client.topic(args.topic)
    placed = [topic.publish(v, key=args.record_key, partition=args.partition) for v in values]
    if out.as_json:
        out.json({"records": [{"partition": p, "offset": o} for p, o in placed]})
    else:
        for p, o in placed:
            out.line(f"{p} {o}")
    return 0


def cmd_subscribe(args: argparse.Namespace, client: Client, out: _Output) -> int:
    """Print each record as it is handled (committed after printing) until Ctrl-C, or
    until --max records."""
    stop = threading.Event()
    seen = 0

    def handle(record: TopicRecord) -> None:
        nonlocal seen
        try:
            value: Any = record.text
        except UnicodeDecodeError:
            value = record.value.hex()
        if out.as_json:
            out.json(
                {
                    "partition": record.partition,
                    "offset": record.offset,
                    "key": record.key,
                    "value": value,
                }
            )
        else:
            out.line(f"{record.partition} {record.offset} {record.key or '-'} {value}")
        seen += 1
        if args.max and seen >= args.max:
            stop.set()

    options: dict[str, Any] = {"start": args.start}
    if args.member_id:
        options["member_id"] = args.member_id
    client.subscribe(args.topic, args.group, handle, stop_event=stop, **options)
    return 0


def cmd_group(args: argparse.Namespace, client: Client, out: _Output) -> int:
    info = client.group(args.name)
    if out.as_json:
        out.json(info)
        return 0
    out.line(
        f"{info['group']}: topic {info['topic']}, generation {info['generation']}, "
        f"{len(info['members'])} member(s), {info['assignment']} assignment"
    )
    for m in info["members"]:
        out.line(f"  {m['member_id']}: partitions {m['partitions']}")
    rows = [["PARTITION", "COMMITTED", "LOG_START", "HIGH_WATERMARK", "LAG"]]
    rows += [
        [
            o["partition"],
            "-" if o["committed"] is None else o["committed"],
            o["log_start"],
            o["high_watermark"],
            o["lag"],
        ]
        for o in info["offsets"]
    ]
    out.line(_table(rows))
    return 0
