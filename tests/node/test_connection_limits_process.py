"""A real 3-node cluster under a connection flood on the leader's binary port: 1,000 idle
connections from one address and a slow-loris client from another, while a legitimate
client sends and receives as usual and the leader keeps its term (its heartbeats went
out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import urllib.request

import pytest

from cluster.client import AsyncClient
from common.binwire import MAGIC

pytestmark = pytest.mark.integration


def _cluster_view(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v1/cluster", timeout=5) as answer:
        return json.load(answer)


async def test_a_flood_of_idle_and_slow_connections_leaves_the_cluster_serving(cluster3) -> None:
    leader = cluster3.wait_for_leader(timeout_s=30)
    term = _cluster_view(leader.url)["term"]
    port = int(cluster3.binary_url(leader.id).rsplit(":", 1)[1])
    flood: list[asyncio.StreamWriter] = []
    try:
        for _ in range(1000):  # one address: the node keeps its share, closes the rest
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.2", 0)
                )
                w.write(MAGIC)
                flood.append(w)
        _r, loris = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        flood.append(loris)
        loris.write(MAGIC + struct.pack(">I", 1000) + b"\x94")  # and then a byte now and then

        async with AsyncClient(cluster3.binary_servers, timeout_s=10) as client:
            q = client.queue("flooded")
            await q.create()
            started = time.monotonic()
            sent = await q.send("still served")
            got = await q.receive(wait_s=5)
            took = time.monotonic() - started
            assert got is not None and got.id == sent
            assert await q.acknowledge(got)
        assert took < 5.0, f"a send and a receive took {took:.2f} s under the flood"
        loris.write(b"\x00")
        view = _cluster_view(leader.url)
        assert view["term"] == term and view["leader"]["id"] == leader.id
        refused = [
            json.loads(line)["refused_total"]
            for line in cluster3.specs[leader.id].log_path.read_text().splitlines()
            if '"binary.connection_refused"' in line
        ]
        assert refused and max(refused) >= 512  # 1,000 - 256 held: logged at 1, 2, 4 ... 512
    finally:
        for w in flood:
            w.close()
