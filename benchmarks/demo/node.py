"""The demo node process: a `RaftNode` on the KV state machine, served on a control port.

    python -m benchmarks.demo.node --id 1 --raft 127.0.0.1:7001 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \\
        --data-dir /tmp/n1 --control 127.0.0.1:8001

The control interface binds loopback only (`benchmarks.demo.protocol`). The node exits 0 on
SIGTERM/SIGINT after handing leadership over, 1 if the driver failed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog

from benchmarks.demo.control_server import ControlServer
from benchmarks.demo.kv_state_machine import KvStateMachine
from benchmarks.demo.protocol import Address
from common import logging_setup
from raft.driver import RaftNode
from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import LmdbStorage
from raft.messages import ConfState

log = structlog.get_logger("benchmarks.demo.node")


def parse_addr(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_peers(text: str) -> dict[int, Address]:
    peers: dict[int, Address] = {}
    for part in text.split(","):
        node_id, sep, addr = part.partition("=")
        if not sep or not node_id.isdigit() or int(node_id) <= 0:
            raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, got {part!r}")
        peers[int(node_id)] = parse_addr(addr)
    return peers


def configure_logging(level: str) -> None:
    """JSON lines on stderr, filtered at `level` (the shared setup of every raftq process)."""
    logging_setup.configure_logging("json", level)


async def run_node(args: argparse.Namespace) -> int:
    peers: dict[int, Address] = args.peers
    if args.id not in peers:
        peers[args.id] = args.raft
    env = LmdbEnv(args.data_dir, sync=not args.no_fsync)
    storage = LmdbStorage(
        env,
        initial_conf=ConfState(tuple(sorted(peers))),
        cluster_id=args.cluster_id,
        node_id=args.id,
    )
    sm = KvStateMachine(env)
    node = RaftNode(
        args.id,
        peers,
        storage,
        sm,
        cluster_id=args.cluster_id,
        shared_txn=True,  # the KV state lives in the log's LMDB env
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        listen=args.raft,
    )
    await node.start()
    control = ControlServer(node, sm, storage)
    bound = await control.start(args.control)
    log.info("demo_node.ready", node_id=args.id, control=f"{bound[0]}:{bound[1]}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = loop.create_task(stop.wait())
    closed = loop.create_task(node.wait_closed())
    await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
    failed = node.failure is not None
    closed.cancel()
    waiter.cancel()
    await control.stop()
    await node.stop(transfer=not failed)
    storage.close()
    env.close()
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo.node")
    parser.add_argument("--id", type=int, required=True)
    parser.add_argument("--raft", type=parse_addr, required=True, help="peer listen HOST:PORT")
    parser.add_argument("--peers", type=parse_peers, required=True, help="ID=HOST:PORT,...")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--control", type=parse_addr, required=True, help="control HOST:PORT")
    parser.add_argument("--cluster-id", default="raftq-demo")
    parser.add_argument("--tick-ms", type=int, default=50)
    parser.add_argument("--election-ticks", type=int, default=10)
    parser.add_argument("--no-fsync", action="store_true", help="benchmark comparison only")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.control[0] not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the control interface binds loopback only")
    configure_logging(args.log_level)
    return asyncio.run(run_node(args))


if __name__ == "__main__":
    raise SystemExit(main())
