"""A stand-in for `python -m node` used by launcher and `raftq up` tests.

Invoked as `fake_node.py -m node --id N --http H:P --raft H:P --peers ... --data-dir D
[--ignore-sigterm]`. It serves /v1/health, /v1/ready and /v1/cluster (node 1 always
leads), logs what it was given, and exits 0 on SIGTERM unless told to ignore it: enough to
test process management without a Raft node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from aiohttp import web


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("-m")
    p.add_argument("-P", action="store_true")  # the interpreter flag the launcher passes
    p.add_argument("--id", type=int, required=True)
    p.add_argument("--http", required=True)
    p.add_argument("--raft", required=True)
    p.add_argument("--peers", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--secret-file")  # the launcher's peer secret: read, as a node does
    p.add_argument("--auth", choices=["on", "off"])
    p.add_argument("--admin-token-file")
    p.add_argument("--ignore-sigterm", action="store_true")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    peers = {}
    for item in args.peers.split(","):
        node_id, rest = item.split("=", 1)
        peers[int(node_id)] = rest.split("@")[0]
    leader = {"id": 1, "url": peers[1]}

    async def cluster(_: web.Request) -> web.Response:
        nodes = [
            {"id": i, "url": u, "role": "leader" if i == 1 else "follower", "match_index": 0}
            for i, u in peers.items()
        ]
        return web.json_response(
            {
                "cluster_id": "raftq",
                "node_id": args.id,
                "leader": leader,
                "term": 1,
                "commit_index": 5,
                "applied_index": 5,
                "nodes": nodes,
            }
        )

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node_id": args.id})

    app = web.Application()
    app.router.add_get("/v1/cluster", cluster)
    app.router.add_get("/v1/health", ok)
    app.router.add_get("/v1/ready", ok)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    host, port = args.http.rsplit(":", 1)
    await web.TCPSite(runner, host, int(port)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if args.ignore_sigterm:
        loop.add_signal_handler(signal.SIGTERM, lambda: print("ignoring SIGTERM", flush=True))
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(f"fake node {args.id} started pid={os.getpid()} peers={args.peers}", flush=True)
    await stop.wait()
    print(f"fake node {args.id} stopping", flush=True)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(parse(sys.argv[1:])))
