"""The peer benchmark's adapter over raftq's client: every method, on a real cluster."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.peer_adapter import ClientAdapter
from cluster.launcher import LocalCluster


@pytest.mark.parametrize("protocol", ["binary", "http"])
def test_the_adapter_sends_and_drains_through_the_client(
    cluster3: LocalCluster, protocol: str
) -> None:
    urls = cluster3.binary_urls if protocol == "binary" else cluster3.urls

    async def scenario() -> tuple[list[bytes], int, dict]:
        adapter = ClientAdapter(servers=",".join(urls), queue=f"pb-adapter-{protocol}")
        await adapter.connect()
        try:
            await adapter.reset()
            await adapter.produce(b"\x00first")
            await adapter.produce_pipelined(b"\xffrest", 300, 64)
            seen: list[bytes] = []
            ready = asyncio.Event()
            await asyncio.wait_for(adapter.consume_ack(301, seen.append, ready), 60)
            assert ready.is_set()
            await adapter.reset()  # an existing queue is emptied
            await adapter.produce(b"again")
            await asyncio.wait_for(adapter.consume_ack(1), 30)
            info = await adapter._q().info()
            return seen, info["depth"] + info["in_flight"], adapter.describe()
        finally:
            await adapter.close()

    seen, left, facts = asyncio.run(scenario())
    assert sorted(seen) == sorted([b"\x00first"] + [b"\xffrest"] * 300)
    assert left == 0
    assert facts["client"].startswith("raftq AsyncClient") and facts["protocol"] == protocol


def test_the_adapter_speaks_binary_by_default() -> None:
    assert ClientAdapter().describe()["protocol"] == "binary"
