"""The fault proxy, driven as a separate process by the real toxiproxy-python client.

Control-API tests check exact statuses and error bodies (urllib, since the library turns
errors into exceptions); data-plane tests put an echo server behind a proxy on loopback and
measure what each toxic does to real TCP connections.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from chaos.proxy_client import ToxiproxyClient, resolve_url
from cluster.launcher import free_ports
from tests.chaos.conftest import (
    FAILURE_MARKERS,
    EchoServer,
    http,
    run_proxy_process,
)

pytestmark = pytest.mark.timeout(60)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def lib(toxi: ToxiproxyClient) -> Iterator[Toxiproxy]:
    """The library's own synchronous server object, pointed at the test proxy."""
    server = Toxiproxy()
    server.update_api_consumer(toxi.host, toxi.port)
    yield server


# ---- control API ------------------------------------------------------------------------


def test_version_and_empty_listing(lib: Toxiproxy, proxy_server: str) -> None:
    assert lib.running()
    assert b"version" in lib.version()
    assert lib.proxies() == {}
    status, body = http("GET", f"{proxy_server}/version")
    assert status == 200 and body["version"].startswith("raftq-chaos-proxy")


def test_proxy_lifecycle_with_the_real_client(lib: Toxiproxy, proxy_server: str) -> None:
    proxy = lib.create(upstream="127.0.0.1:9", name="db")
    assert proxy.enabled is True
    port = port_of(proxy.listen)
    assert port != 0 and not refuses(port)
    assert set(lib.proxies()) == {"db"}
    assert lib.get_proxy("db").listen == proxy.listen
    with pytest.raises(ProxyExists):
        lib.create(upstream="127.0.0.1:9", name="db")

    proxy.disable()
    assert lib.get_proxy("db").enabled is False
    assert refuses(port)
    proxy.enable()
    assert lib.get_proxy("db").enabled is True
    assert lib.get_proxy("db").listen == proxy.listen  # same port after re-enable
    assert not refuses(port)

    with proxy.down():
        assert refuses(port)
    assert not refuses(port)

    assert proxy.destroy() is True
    assert lib.get_proxy("db") is None
    assert refuses(port)
    with pytest.raises(NotFound):
        proxy.destroy()


def test_error_bodies_and_nothing_changes(lib: Toxiproxy, proxy_server: str) -> None:
    base = proxy_server
    body = {"name": "p", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"}
    status, created = http("POST", f"{base}/proxies", body)
    assert status == 201 and created["name"] == "p" and created["toxics"] == []
    assert http("POST", f"{base}/proxies", body) == (
        409,
        {"error": "proxy already exists: p", "status": 409},
    )
    assert http("GET", f"{base}/proxies/nope") == (
        404,
        {"error": "proxy not found: nope", "status": 404},
    )
    assert http("DELETE", f"{base}/proxies/nope")[0] == 404
    assert http("POST", f"{base}/proxies/nope", {"enabled": False})[0] == 404
    assert http("GET", f"{base}/proxies/nope/toxics")[0] == 404
    for bad in (
        {"name": "q"},  # no upstream
        {"name": "q", "upstream": "nohost"},
        {"name": "q", "upstream": "127.0.0.1:99999"},
        {"name": "", "upstream": "127.0.0.1:9"},
        {"name": "q", "upstream": "127.0.0.1:9", "enabled": "yes"},
        {"name": "q", "upstream": "127.0.0.1:9", "listen": "8.8.8.8:0"},
        ["not", "an", "object"],
    ):
        status, err = http("POST", f"{base}/proxies", bad)
        assert (status, err["status"]) == (400, 400), bad
        assert err["error"]
    status, err = http("POST", f"{base}/proxies", raw=b"{not json")
    assert status == 400 and "JSON" in err["error"]
    assert set(lib.proxies()) == {"p"}

    toxics = f"{base}/proxies/p/toxics"
    for bad in (
        {"type": "bogus"},
        {"type": "latency", "stream": "sideways"},
        {"type": "latency", "toxicity": 1.5},
        {"type": "latency", "attributes": {"latency": -1}},
        {"type": "latency", "attributes": {"nope": 1}},
        {"type": "bandwidth", "attributes": {"rate": 0}},
        {"type": "slicer", "attributes": {"average_size": 0}},
    ):
        status, err = http("POST", toxics, bad)
        assert (status, err["status"]) == (400, 400), bad
    assert http("GET", toxics) == (200, [])
    assert http("POST", toxics, {"type": "latency"})[0] == 200
    assert http("POST", toxics, {"type": "latency"}) == (
        409,
        {"error": "toxic already exists: latency_downstream", "status": 409},
    )
    assert http("GET", f"{toxics}/missing")[0] == 404
    assert http("DELETE", f"{toxics}/missing")[0] == 404
    assert http("POST", f"{toxics}/latency_downstream", {"attributes": {"x": 1}})[0] == 400
    assert http("POST", f"{toxics}/latency_downstream", {"stream": "upstream"})[0] == 400
    assert http("GET", f"{base}/no/such/route")[0] == 404
    assert http("GET", toxics)[1][0]["attributes"] == {"latency": 0, "jitter": 0}
    with pytest.raises(InvalidToxic):
        lib.get_proxy("p").add_toxic(type="bogus")


def test_toxic_crud_with_the_real_client(lib: Toxiproxy, proxy_server: str) -> None:
    proxy = lib.create(upstream="127.0.0.1:9", name="t")
    proxy.add_toxic(type="latency", attributes={"latency": 100, "jitter": 5})
    proxy.add_toxic(type="bandwidth", stream="upstream", name="bw", attributes={"rate": 50})
    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "bw"}
    latency = proxy.get_toxic("latency_downstream")
    assert (latency.type, latency.stream, latency.toxicity) == ("latency", "downstream", 1.0)
    assert latency.attributes == {"latency": 100, "jitter": 5}
    assert toxics["bw"].stream == "upstream"

    url = f"{proxy_server}/proxies/t/toxics/latency_downstream"
    status, updated = http("POST", url, {"attributes": {"latency": 250}, "toxicity": 0.5})
    assert status == 200
    assert updated["attributes"] == {"latency": 250, "jitter": 5}
    assert updated["toxicity"] == 0.5
    status, patched = http("PATCH", url, {"attributes": {"jitter": 0}})
    assert status == 200 and patched["attributes"] == {"latency": 250, "jitter": 0}
    assert http("GET", url) == (200, patched)
    assert lib.get_proxy("t") is not None
    assert http("GET", f"{proxy_server}/proxies/t")[1]["toxics"][0] == patched

    assert proxy.destroy_toxic("latency_downstream") is True
    assert http("DELETE", f"{proxy_server}/proxies/t/toxics/bw") == (204, None)
    assert proxy.toxics() == {}


def test_update_rebinds_listen_and_upstream(lib: Toxiproxy, proxy_server: str) -> None:
    proxy = lib.create(upstream="127.0.0.1:9", name="r")
    old_port = port_of(proxy.listen)
    (new_port,) = free_ports(1)
    status, body = http("PATCH", f"{proxy_server}/proxies/r", {"listen": f"127.0.0.1:{new_port}"})
    assert status == 200 and body["listen"] == f"127.0.0.1:{new_port}" and body["enabled"]
    assert refuses(old_port) and not refuses(new_port)
    status, body = http("POST", f"{proxy_server}/proxies/r", {"upstream": "127.0.0.1:10"})
    assert status == 200 and body["upstream"] == "127.0.0.1:10"
    # a bad update is refused and changes nothing
    assert http("POST", f"{proxy_server}/proxies/r", {"listen": "garbage"})[0] == 400
    assert http("GET", f"{proxy_server}/proxies/r")[1] == body
    # a busy address is refused (409) and the proxy keeps its old address
    busy = lib.create(upstream="127.0.0.1:9", name="busy")
    status, err = http("POST", f"{proxy_server}/proxies/r", {"listen": busy.listen})
    assert status == 409 and err["status"] == 409
    assert http("GET", f"{proxy_server}/proxies/r")[1] == body
    assert not refuses(new_port)


def test_populate_creates_and_updates(lib: Toxiproxy, proxy_server: str) -> None:
    listed = [
        {"name": "a", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0"},
        {"name": "b", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:0", "enabled": False},
    ]
    status, body = http("POST", f"{proxy_server}/populate", listed)
    assert status == 201
    assert [(p["name"], p["enabled"]) for p in body["proxies"]] == [("a", True), ("b", False)]
    a_listen = body["proxies"][0]["listen"]
    listed[0]["upstream"] = "127.0.0.1:10"
    status, body = http("POST", f"{proxy_server}/populate", listed)
    assert status == 201
    assert body["proxies"][0]["upstream"] == "127.0.0.1:10"
    assert body["proxies"][0]["listen"] == a_listen  # updated in place, same port
    bad = [{"name": "c", "upstream": "127.0.0.1:9"}, {"name": "d"}]
    assert http("POST", f"{proxy_server}/populate", bad)[0] == 400
    assert http("POST", f"{proxy_server}/populate", {"x": 1})[0] == 400
    assert set(lib.proxies()) == {"a", "b"}


def test_reset_enables_all_and_removes_toxics(lib: Toxiproxy, proxy_server: str) -> None:
    one = lib.create(upstream="127.0.0.1:9", name="one")
    two = lib.create(upstream="127.0.0.1:9", name="two")
    one.add_toxic(type="latency", attributes={"latency": 10})
    two.add_toxic(type="timeout", stream="upstream")
    two.disable()
    assert lib.reset() is True
    assert http("POST", f"{proxy_server}/reset") == (204, None)
    for name in ("one", "two"):
        assert lib.get_proxy(name).enabled is True
        assert lib.get_proxy(name).toxics() == {}
    assert not refuses(port_of(two.listen))


async def test_async_client_and_toxiproxy_url(
    toxi: ToxiproxyClient, proxy_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOXIPROXY_URL", proxy_server)
    assert resolve_url() == proxy_server
    assert resolve_url("http://10.0.0.1:1") == "http://10.0.0.1:1"
    client = ToxiproxyClient()
    assert (client.host, client.port) == ("127.0.0.1", port_of(proxy_server))
    assert "raftq" in await client.version()
    created = await client.create_proxy("c", "127.0.0.1:9")
    assert (await client.get_proxy("c")).listen == created.listen
    assert (await client.populate([{"name": "d", "upstream": "127.0.0.1:9"}]))[0].name == "d"
    toxic = await client.add_toxic("c", "latency", attributes={"latency": 5})
    assert toxic.name == "latency_downstream"
    updated = await client.update_toxic("c", toxic.name, attributes={"latency": 7})
    assert updated.attributes["latency"] == 7
    assert set(await client.toxics("c")) == {"latency_downstream"}
    assert (await client.disable("c")).enabled is False
    await client.reset()
    assert (await client.get_proxy("c")).enabled is True
    assert await client.toxics("c") == {}  # reset removed it
    with pytest.raises(NotFound):
        await client.remove_toxic("c", "latency_downstream")
    await client.delete_proxy("c")
    assert set(await client.proxies()) == {"d"}


# ---- data plane -------------------------------------------------------------------------


class Conn:
    """A client connection through the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, listen: str) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(listen))
        return cls(reader, writer)

    async def roundtrip_s(self, payload: bytes = b"ping", timeout_s: float = 5.0) -> float:
        started = time.monotonic()
        self.writer.write(payload)
        await self.writer.drain()
        got = await asyncio.wait_for(self.reader.readexactly(len(payload)), timeout_s)
        assert got == payload
        return time.monotonic() - started

    async def read_until_closed(self, timeout_s: float = 5.0) -> bytes:
        data = bytearray()
        async with asyncio.timeout(timeout_s):
            while chunk := await self.reader.read(65536):
                data += chunk
        return bytes(data)

    def close(self) -> None:
        self.writer.transport.abort()


async def make_proxy(toxi: ToxiproxyClient, echo: EchoServer, name: str = "echo") -> str:
    return (await toxi.create_proxy(name, echo.address)).listen


async def test_passthrough_and_latency_within_ten_percent(
    toxi: ToxiproxyClient, echo: EchoServer
) -> None:
    listen = await make_proxy(toxi, echo)
    conn = await Conn.open(listen)
    payload = os.urandom(100_000)
    await conn.roundtrip_s(payload)
    assert echo.received == payload
    assert await conn.roundtrip_s() < 0.1
    await toxi.add_toxic("echo", "latency", attributes={"latency": 200})
    samples = [await conn.roundtrip_s() for _ in range(3)]
    assert 0.2 <= min(samples) <= 0.22, samples
    conn.close()


async def test_latency_jitter_spreads_delays(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "latency", attributes={"latency": 100, "jitter": 50})
    conn = await Conn.open(listen)
    samples = [await conn.roundtrip_s() for _ in range(8)]
    assert min(samples) >= 0.05 and sorted(samples)[-2] <= 0.2, samples
    assert max(samples) - min(samples) >= 0.01, samples  # not one fixed delay
    conn.close()


async def test_toxic_added_and_removed_on_open_connection(
    toxi: ToxiproxyClient, echo: EchoServer
) -> None:
    listen = await make_proxy(toxi, echo)
    conn = await Conn.open(listen)
    assert await conn.roundtrip_s() < 0.1
    await toxi.add_toxic("echo", "latency", stream="upstream", attributes={"latency": 300})
    assert await conn.roundtrip_s() >= 0.3
    # removing a toxic mid-delay releases the delayed chunk at once
    await toxi.update_toxic("echo", "latency_upstream", attributes={"latency": 5000})
    conn.writer.write(b"held")
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await toxi.remove_toxic("echo", "latency_upstream")
    assert await asyncio.wait_for(conn.reader.readexactly(4), 2) == b"held"
    assert time.monotonic() - started < 1.0
    assert await conn.roundtrip_s() < 0.1
    conn.close()


async def test_reset_peer_gives_econnreset(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    conn = await Conn.open(listen)
    await conn.roundtrip_s()
    await toxi.add_toxic("echo", "reset_peer", attributes={"timeout": 100})
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        await conn.read_until_closed(timeout_s=3)
    assert time.monotonic() - started >= 0.09
    conn.close()


async def test_timeout_zero_black_holes_until_removed(
    toxi: ToxiproxyClient, echo: EchoServer
) -> None:
    listen = await make_proxy(toxi, echo)
    conn = await Conn.open(listen)
    await conn.roundtrip_s()
    await toxi.add_toxic("echo", "timeout", name="hole", attributes={"timeout": 0})
    conn.writer.write(b"lost")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.reader.read(10), 0.5)
    await toxi.remove_toxic("echo", "hole")
    assert await conn.roundtrip_s(b"back") < 0.5  # same connection, data flows again
    conn.close()


async def test_timeout_closes_after_the_timeout(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "timeout", stream="upstream", attributes={"timeout": 200})
    conn = await Conn.open(listen)
    started = time.monotonic()
    conn.writer.write(b"dropped")
    assert await conn.read_until_closed(timeout_s=3) == b""
    assert 0.19 <= time.monotonic() - started < 2
    assert echo.received == b""  # nothing reached the server
    conn.close()


async def test_disable_drops_live_connections(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    conns = [await Conn.open(listen) for _ in range(3)]
    for conn in conns:
        await conn.roundtrip_s()
    await toxi.disable("echo")
    for conn in conns:
        try:
            assert await conn.read_until_closed(timeout_s=3) == b""
        except ConnectionResetError:
            pass  # an abort may surface as a reset: dropped either way
        conn.close()
    assert refuses(port_of(listen))
    await toxi.enable("echo")
    conn = await Conn.open(listen)
    await conn.roundtrip_s()
    conn.close()


async def test_delete_and_disconnects_mid_toxic_are_harmless(
    toxi: ToxiproxyClient, echo: EchoServer
) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "latency", attributes={"latency": 1000})
    await toxi.add_toxic("echo", "slicer", stream="upstream", attributes={"average_size": 1})
    quitter = await Conn.open(listen)
    quitter.writer.write(b"x" * 1000)
    await asyncio.sleep(0.1)
    quitter.close()  # client vanishes while its bytes are delayed
    held = [await Conn.open(listen) for _ in range(2)]
    for conn in held:
        conn.writer.write(b"y" * 100)
    await asyncio.sleep(0.1)
    await toxi.delete_proxy("echo")  # delete with live, delayed connections
    for conn in held:
        try:
            await conn.read_until_closed(timeout_s=3)
        except ConnectionResetError:
            pass
        conn.close()
    listen = await make_proxy(toxi, echo, name="again")
    conn = await Conn.open(listen)
    await conn.roundtrip_s()
    conn.close()


async def test_bandwidth_is_roughly_respected(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "bandwidth", attributes={"rate": 100})  # 100 KB/s
    conn = await Conn.open(listen)
    elapsed = await conn.roundtrip_s(os.urandom(50_000))
    assert 0.4 <= elapsed <= 1.0, elapsed  # 50 KB at 100 KB/s = 0.5 s
    conn.close()


async def test_slicer_splits_writes(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    attributes = {"average_size": 10, "size_variation": 3, "delay": 20_000}
    await toxi.add_toxic("echo", "slicer", attributes=attributes)
    conn = await Conn.open(listen)
    payload = os.urandom(100)
    started = time.monotonic()
    conn.writer.write(payload)
    reads = []
    async with asyncio.timeout(5):
        while sum(map(len, reads)) < len(payload):
            reads.append(await conn.reader.read(1000))
    assert b"".join(reads) == payload
    assert len(reads) >= 3, [len(r) for r in reads]
    assert time.monotonic() - started >= 0.1  # >= 7 pieces 20 ms apart
    conn.close()


async def test_limit_data_closes_after_n_bytes(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "limit_data", attributes={"bytes": 100})
    conn = await Conn.open(listen)
    first = os.urandom(60)
    await conn.roundtrip_s(first)
    second = os.urandom(60)
    conn.writer.write(second)
    assert await conn.read_until_closed() == second[:40]
    conn.close()


async def test_slow_close_delays_the_close(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "slow_close", attributes={"delay": 300})
    conn = await Conn.open(listen)
    await conn.roundtrip_s()
    started = time.monotonic()
    conn.writer.write_eof()  # echo server closes on EOF; the proxy delays passing that on
    assert await conn.read_until_closed() == b""
    assert 0.3 <= time.monotonic() - started < 2
    conn.close()


async def test_toxicity_zero_never_one_always(toxi: ToxiproxyClient, echo: EchoServer) -> None:
    listen = await make_proxy(toxi, echo)
    await toxi.add_toxic("echo", "latency", toxicity=0.0, attributes={"latency": 400})
    never = [await Conn.open(listen) for _ in range(5)]
    rtts = await asyncio.gather(*(c.roundtrip_s() for c in never))
    assert max(rtts) < 0.3, rtts
    await toxi.update_toxic("echo", "latency_downstream", toxicity=1.0)
    always = [await Conn.open(listen) for _ in range(3)]
    rtts = await asyncio.gather(*(c.roundtrip_s() for c in [*always, *never]))
    assert min(rtts) >= 0.4, rtts  # new connections and redrawn old ones
    for conn in [*never, *always]:
        conn.close()


async def test_unreachable_upstream_closes_the_client(toxi: ToxiproxyClient) -> None:
    listen = (await toxi.create_proxy("dead", f"127.0.0.1:{free_ports(1)[0]}")).listen
    conn = await Conn.open(listen)
    try:
        assert await conn.read_until_closed(timeout_s=3) == b""
    except ConnectionResetError:
        pass
    conn.close()


def test_cli_refuses_a_non_loopback_listen() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "proxy", "--listen", "0.0.0.0:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "not loopback" in result.stderr


# ---- process hygiene --------------------------------------------------------------------


async def test_sigterm_with_live_connections_leaves_no_task(tmp_path: Path) -> None:
    echo = EchoServer()
    await echo.start()
    try:
        with run_proxy_process(tmp_path / "proxy.log") as process:
            client = ToxiproxyClient(process.url)
            listen = (await client.create_proxy("e", echo.address)).listen
            await client.add_toxic("e", "latency", attributes={"latency": 2000})
            await client.add_toxic("e", "timeout", stream="upstream", attributes={"timeout": 9000})
            conns = [await Conn.open(listen) for _ in range(3)]
            for conn in conns:
                conn.writer.write(b"pending")
            await asyncio.sleep(0.2)
            os.kill(process.pid, signal.SIGTERM)
            for conn in conns:
                try:
                    await conn.read_until_closed(timeout_s=5)
                except ConnectionResetError:
                    pass
                conn.close()
            deadline = time.monotonic() + 5
            while "chaos.proxy_api.stopped" not in process.log_text():
                assert time.monotonic() < deadline, process.log_text()[-2000:]
                await asyncio.sleep(0.05)
            text = process.log_text()
            assert not [m for m in FAILURE_MARKERS if m in text], text[-3000:]
    finally:
        await echo.close()
