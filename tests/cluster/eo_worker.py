"""A consume-transform-produce worker process for the exactly-once pipeline test.

Usage: python eo_worker.py SERVERS IN_QUEUE OUT_QUEUE
Transforms each body to upper case and commits ack(in) + send(out) as one transaction.
Exits after several consecutive empty polls; the test kills it with SIGKILL at random.
"""

from __future__ import annotations

import asyncio
import sys

from cluster import AsyncClient
from cluster.transactions import consume_exactly_once


async def main(servers: str, in_queue: str, out_queue: str) -> None:
    async with AsyncClient(servers, timeout_s=60) as client:
        q = client.queue(in_queue)
        stop = asyncio.Event()

        async def stop_when_drained() -> None:
            idle = 0
            while idle < 3:
                await asyncio.sleep(1.0)
                info = await q.info()
                idle = idle + 1 if info["depth"] + info["in_flight"] + info["delayed"] == 0 else 0
            stop.set()

        watcher = asyncio.create_task(stop_when_drained())
        await consume_exactly_once(
            q,
            lambda msg: msg.body.upper(),
            output=out_queue,
            concurrency=4,
            visibility_timeout_s=3,
            poll_wait_s=1.0,
            stop_event=stop,
            handle_signals=False,
        )
        watcher.cancel()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
