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
        idle = 0
        while idle < 5:
            n = await consume_exactly_once(
                q,
                lambda msg: msg.body.upper(),
                output=out_queue,
                max_messages=50,
                batch=10,
                wait_s=1.0,
                visibility_timeout_s=3,
            )
            idle = idle + 1 if n == 0 else 0


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
