"""The client over the binary protocol: the connection alone (against a scripted server)
and the whole client against real clusters (redirects, failover, the CLI)."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import msgpack
import pytest

from cluster import AsyncClient, LocalCluster
from cluster.binary_client import BinaryConnection, parse_binary_url
from cluster.cli import main as raftq
from cluster.discovery import DEFAULT_SERVERS, normalize_server, resolve_servers
from common.binwire import MAGIC, decode_request, encode_answer

# ---------------------------------------------------------------- scripted server

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[int, str, str, bytes | None]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return decode_request(await reader.readexactly(length))


def _answer(request_id: int, body: object, status: int = 200) -> bytes:
    return encode_answer(request_id, status, None, msgpack.packb(body, use_bin_type=True))


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                assert await reader.readexactly(4) == MAGIC
                await script(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"raftq://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    try:
        yield start
    finally:
        for server in servers:
            server.close()


async def test_answers_are_matched_by_id_in_any_order(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await _read_request(reader)
        second = await _read_request(reader)
        writer.write(_answer(second[0], {"path": second[2]}))  # the later one first
        writer.write(_answer(first[0], {"path": first[2]}, status=201))
        await writer.drain()
        await reader.read()  # until the client closes

    conn = BinaryConnection(await serve(script))
    try:
        a, b = await asyncio.gather(
            conn.request("GET", "/a", None, 5), conn.request("GET", "/b", None, 5)
        )
        assert a == (201, {}, {"path": "/a"}) and b == (200, {}, {"path": "/b"})
    finally:
        await conn.close()


async def test_a_timeout_gives_up_only_that_call(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)  # /slow: never answered
        fast = await _read_request(reader)
        await asyncio.sleep(0.5)  # answered after /slow gave up
        writer.write(_answer(fast[0], "ok"))
        await writer.drain()
        await reader.read()

    conn = BinaryConnection(await serve(script))
    try:
        slow = asyncio.ensure_future(conn.request("GET", "/slow", None, 0.2))
        await asyncio.sleep(0.05)
        fast = asyncio.ensure_future(conn.request("GET", "/fast", None, 5))
        with pytest.raises(TimeoutError):
            await slow
        assert await fast == (200, {}, "ok")
        assert conn.connected
    finally:
        await conn.close()


async def test_a_lost_connection_fails_every_waiting_call_and_the_next_reconnects(
    serve,  # type: ignore[no-untyped-def]
) -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await _read_request(reader)
            await _read_request(reader)
            return  # close with both unanswered
        request = await _read_request(reader)
        writer.write(_answer(request[0], "again"))
        await writer.drain()
        await reader.read()

    conn = BinaryConnection(await serve(script))
    try:
        results = await asyncio.gather(
            conn.request("GET", "/1", None, 5),
            conn.request("GET", "/2", None, 5),
            return_exceptions=True,
        )
        assert all(isinstance(r, ConnectionError) for r in results), results
        assert await conn.request("GET", "/3", None, 5) == (200, {}, "again")
        assert connections == 2
    finally:
        await conn.close()


async def test_a_refused_connection_is_an_oserror() -> None:
    from cluster.launcher import free_ports

    conn = BinaryConnection(f"raftq://127.0.0.1:{free_ports(1)[0]}")
    with pytest.raises(OSError):
        await conn.request("GET", "/v1/health", None, 5)


def test_raftq_urls_are_server_urls() -> None:
    assert normalize_server("raftq://h:7201/") == "raftq://h:7201"
    assert resolve_servers("raftq://a:1,http://b:2") == ("raftq://a:1", "http://b:2")
    assert tuple(f"raftq://127.0.0.1:{7200 + i}" for i in (1, 2, 3)) == DEFAULT_SERVERS
    assert parse_binary_url("raftq://[::1]:7201") == ("::1", 7201)
    for bad in ("raftq://h", "ftp://h:1"):
        with pytest.raises(ValueError):
            normalize_server(bad)


# ---------------------------------------------------------------- real clusters


@pytest.mark.integration
async def test_client_pointed_at_a_follower_first_finds_and_uses_the_leaders_binary_port(
    cluster3: LocalCluster,
) -> None:
    leader = cluster3.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster3.ids if i != leader.id)
    servers = [cluster3.binary_url(follower)] + [
        cluster3.binary_url(i) for i in cluster3.ids if i != follower
    ]
    async with AsyncClient(servers, timeout_s=30) as client:
        q = client.queue("bin-redirect")
        await q.create()
        mid = await q.send("through the redirect")
        router = client._router
        assert router.leader_url == cluster3.url(leader.id)
        for _ in range(50):  # the leader's own /v1/cluster answer may land after the first send
            if router.route_url(router.leader_url).startswith("raftq://"):
                break
            await asyncio.sleep(0.1)
        assert router.route_url(router.leader_url) == cluster3.binary_url(leader.id)

        def no_http() -> None:
            raise AssertionError("a call went over HTTP")

        router._get_session = no_http  # type: ignore[method-assign]
        msg = await q.receive(wait_s=5)
        assert msg is not None and msg.id == mid and msg.body == "through the redirect"
        assert await q.acknowledge(msg)


@pytest.mark.integration
async def test_client_follows_a_followers_307_over_binary(cluster3: LocalCluster) -> None:
    """Only a follower listed: its 307 names the leader by HTTP URL; the client goes
    there (HTTP, since it never learned the leader's raftq URL) and the call succeeds."""
    leader = cluster3.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster3.ids if i != leader.id)
    async with AsyncClient([cluster3.binary_url(follower)], timeout_s=30) as client:
        q = client.queue("bin-follower-only")
        await q.create()
        assert await q.send("x")
        assert client.leader_url == cluster3.url(leader.id)


@pytest.mark.integration
def test_cli_over_raftq_urls(cluster3: LocalCluster) -> None:
    """`raftq --servers raftq://...`: send, then receive as JSON (bodies as JSON text)."""
    args = ["--servers", cluster3.binary_servers, "--timeout", "15"]
    assert raftq([*args, "queue", "create", "bin-cli"]) == 0
    assert raftq([*args, "send", "bin-cli", "hello"]) == 0
    out = io.StringIO()
    code = raftq([*args, "recv", "bin-cli", "--json"], stdout=out, stderr=io.StringIO())
    assert code == 0 and '"body": "hello"' in out.getvalue()
