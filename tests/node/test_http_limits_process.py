"""A real 3-node cluster under a connection flood on the leader's HTTP port: 1,000 idle
connections from one address, a slow-loris client trickling its headers and another its
body, while a legitimate client (at its own address) sends, receives and acks as usual and
the leader keeps its term (its heartbeats went out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.client import AsyncClient

pytestmark = pytest.mark.integration

#: The cap the flood meets (the default, 1024, would hold all 1,000), and a read timeout
#: short enough for the test to see the slow-loris cut off.
LIMITS = "[limits]\nmax_http_connections_per_address = 256\nread_timeout_s = 2.0\n"


def _cluster_view(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v1/cluster", timeout=5) as answer:
        return json.load(answer)


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (ln.rpartition(" ") for ln in lines if not ln.startswith("#"))
    }


def _events(log_path: Path, name: str) -> list[dict]:
    return [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if f'"{name}"' in line and line.startswith("{")
    ]


async def _trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Write `data` a byte at a time until the node closes the connection (bounded)."""
    for byte in data[:60]:
        if writer.is_closing():
            return
        with contextlib.suppress(ConnectionError):
            writer.write(bytes([byte]))
            await writer.drain()
        await asyncio.sleep(every_s)


async def test_a_flood_of_idle_and_slow_http_connections_leaves_the_cluster_serving(
    make_cluster, tmp_path: Path
) -> None:
    config = tmp_path / "limits.toml"
    config.write_text(LIMITS)
    cluster = make_cluster(3, extra_args=("--config", str(config)))
    leader = cluster.wait_for_leader(timeout_s=30)
    term = _cluster_view(leader.url)["term"]
    port = int(leader.url.rsplit(":", 1)[1])
    flood: list[asyncio.StreamWriter] = []
    trickles: list[asyncio.Task[None]] = []
    try:
        for _ in range(1000):  # one address: the node keeps its share, closes the rest
            with contextlib.suppress(OSError):
                _r, w = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.2", 0)
                )
                flood.append(w)
        slow_headers = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        slow_body = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
        for _r, w in (slow_headers, slow_body):
            flood.append(w)
        head = b"POST /v1/queues/flooded/messages HTTP/1.1\r\nHost: x\r\n"
        slow_body[1].write(head + b"Content-Length: 60\r\n\r\n")
        trickles = [
            asyncio.ensure_future(_trickle(slow_headers[1], head + b"X-Pad: " * 20, 0.2)),
            asyncio.ensure_future(_trickle(slow_body[1], b'{"messages": [' + b" " * 46, 0.2)),
        ]

        async with AsyncClient(cluster.urls, timeout_s=10) as client:  # http://: over HTTP
            q = client.queue("flooded")
            await q.create()
            started = time.monotonic()
            sent = await q.send("still served")
            got = await q.receive(wait_s=5)
            assert got is not None and got.id == sent
            assert await q.acknowledge(got)
            took = time.monotonic() - started
        assert took < 5.0, f"a send, a receive and an ack took {took:.2f} s under the flood"

        # Both slow-loris clients are cut off after read_timeout_s (2 s), not served.
        assert await asyncio.wait_for(slow_headers[0].read(), 10) == b""
        answer = await asyncio.wait_for(slow_body[0].read(), 10)
        assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer

        view = _cluster_view(leader.url)
        assert view["term"] == term and view["leader"]["id"] == leader.id
        log_path = cluster.specs[leader.id].log_path
        refused = [e["refused_total"] for e in _events(log_path, "http.connection_refused")]
        assert refused and max(refused) >= 512  # 1,000 - 256 held: logged at 1, 2, 4 ... 512
        assert len(refused) <= 11  # sampled, not one line per refusal
        # (the 408's connection too: the rest of its body kept trickling in)
        slow = {e["remote"].split(":")[0] for e in _events(log_path, "http.slow_request")}
        assert slow == {"127.0.0.3"}
        figures = _metrics(leader.url)  # and /metrics counts them
        assert figures['raftq_connections_refused_total{port="http"}'] >= 1000 - 256
        assert figures["raftq_slow_requests_total"] >= 1
        assert figures["raftq_long_polls"] == 0 and figures["raftq_request_bytes_in_flight"] == 0
    finally:
        for task in trickles:
            task.cancel()
        for w in flood:
            w.close()
