"""The HTTP port's limits on real sockets: connections per address, the header and body
read timeouts, the idle timeout that spares a long-poll, and the node's request-byte
budget (node/http_limits.py, node/request_budget.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from node.api import error_middleware
from node.http import read_raw
from node.http_limits import HttpLimits, LimitedSite
from node.request_budget import ByteBudget
from tests.support.apps import serving_app
from tests.support.sockets import closed_by_peer


@contextlib.asynccontextmanager
async def _port(
    *,
    per_address: int = 256,
    read_timeout_s: float = 30.0,
    idle_timeout_s: float = 300.0,
    budget_bytes: int = 1 << 20,
) -> AsyncIterator[tuple[int, HttpLimits, asyncio.Event]]:
    """An aiohttp app on a LimitedSite: /quick, /slow (0.8 s), /echo (reads the body),
    /hold (reads the body, answers once the yielded event is set)."""
    release = asyncio.Event()

    async def quick(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.8)
        return web.Response(text="slow")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await read_raw(request, 1 << 20))

    async def hold(request: web.Request) -> web.Response:
        await read_raw(request, 1 << 20)
        await release.wait()
        return web.Response(text="held")

    app = serving_app([error_middleware])
    for path, handler in (("/quick", quick), ("/slow", slow), ("/echo", echo), ("/hold", hold)):
        app.router.add_route("*", path, handler)
    limits = HttpLimits(
        ByteBudget(budget_bytes),
        max_connections_per_address=per_address,
        read_timeout_s=read_timeout_s,
        max_body_bytes=budget_bytes,
    )
    app.middlewares.insert(0, limits.middleware)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_s)
    await runner.setup()
    site = LimitedSite(runner, "127.0.0.1", 0, limits, reuse_address=True)
    await site.start()
    try:
        yield site.port, limits, release
    finally:
        release.set()
        await runner.cleanup()


async def _open(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def _request(path: str, body: bytes = b"", method: str = "POST") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer with a Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return int(lines[0].split()[1]), headers, body


async def _quick(port: int, source: str = "127.0.0.1") -> int:
    reader, writer = await _open(port, source)
    try:
        writer.write(_request("/quick", method="GET"))
        return (await _answer(reader))[0]
    finally:
        writer.close()


async def test_one_address_holds_at_most_its_share_of_connections() -> None:
    async with _port(per_address=3) as (port, limits, _):
        held = [await _open(port, "127.0.0.2") for _ in range(3)]
        reader, writer = await _open(port, "127.0.0.2")  # the fourth: closed unread
        assert await closed_by_peer(reader)
        writer.close()
        assert limits.cap.refused == 1
        assert await _quick(port) == 200  # another address is served
        held[0][1].close()  # one closes: its address may connect again
        await asyncio.sleep(0.1)
        assert await _quick(port, "127.0.0.2") == 200
        for _r, w in held[1:]:
            w.close()


async def test_headers_trickling_in_are_cut_off_after_the_read_timeout() -> None:
    async with _port(read_timeout_s=0.3) as (port, limits, _):
        reader, writer = await _open(port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /quick HTTP/1.1\r\nHo")
        for _ in range(4):  # a byte now and then does not reset the clock
            await asyncio.sleep(0.1)
            if writer.is_closing():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(b"s")
        assert await closed_by_peer(reader)
        assert loop.time() - started < 2.0
        assert limits.slow_requests == 1
        writer.close()
        assert await _quick(port) == 200


async def test_a_long_poll_outlasts_the_read_and_idle_timeouts_on_its_connection() -> None:
    """Neither clock runs while an answer is on its way; both run again afterwards."""
    async with _port(read_timeout_s=0.3, idle_timeout_s=0.3) as (port, limits, _):
        reader, writer = await _open(port)
        writer.write(_request("/slow", method="GET"))  # answered after 0.8 s
        status, _headers, body = await _answer(reader)
        assert (status, body) == (200, b"slow")
        assert await closed_by_peer(reader)  # then idle: closed by the keep-alive timeout
        writer.close()
        assert limits.slow_requests == 0


async def test_the_next_pipelined_request_is_clocked_once_the_answer_left() -> None:
    async with _port(read_timeout_s=0.3) as (port, limits, _):
        reader, writer = await _open(port)
        writer.write(_request("/slow", method="GET"))
        await asyncio.sleep(0.1)
        writer.write(b"GET /quick HTTP/1.1\r\nHo")  # arrives while /slow is answered
        assert (await _answer(reader))[2] == b"slow"  # not cut while answering (0.8 s)
        assert await closed_by_peer(reader)  # the half request behind it: cut 0.3 s later
        writer.close()
        assert limits.slow_requests == 1


async def test_a_body_trickling_in_gets_408() -> None:
    async with _port(read_timeout_s=0.3) as (port, _limits, _):
        reader, writer = await _open(port)
        writer.write(_request("/echo", b"x" * 100)[:-90])  # 10 of 100 bytes
        status, _headers, body = await _answer(reader)
        assert status == 408 and b"request_timeout" in body
        writer.close()
        reader, writer = await _open(port)
        writer.write(_request("/echo", b"whole"))
        assert (await _answer(reader))[:3:2] == (200, b"whole")
        writer.close()


async def test_bodies_past_the_byte_budget_get_503_with_retry_after() -> None:
    async with _port(budget_bytes=1000) as (port, limits, release):
        r1, w1 = await _open(port)
        w1.write(_request("/hold", b"a" * 800))
        await asyncio.sleep(0.2)
        assert limits.budget.used_bytes == 800
        r2, w2 = await _open(port)
        w2.write(_request("/echo", b"b" * 500))
        status, headers, body = await _answer(r2)
        assert status == 503 and headers["retry-after"] == "1" and b"overloaded" in body
        w2.write(_request("/echo", b"c" * 100))  # what fits still goes through
        assert (await _answer(r2))[:3:2] == (200, b"c" * 100)
        release.set()
        assert (await _answer(r1))[0] == 200
        await asyncio.sleep(0.05)
        assert limits.budget.used_bytes == 0
        w2.write(_request("/echo", b"d" * 500))
        assert (await _answer(r2))[0] == 200
        for w in (w1, w2):
            w.close()


# ---------------------------------------------------------------- the budget alone


async def test_budget_waiters_are_served_in_order_and_try_take_never_jumps_them() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(60)
    big = asyncio.ensure_future(budget.take(80))
    await asyncio.sleep(0)
    assert budget.waiting == 1 and not big.done()
    assert not budget.try_take(10)  # would fit, but the big one waits first
    budget.give_back(60)
    await asyncio.wait_for(big, 1)
    assert budget.used_bytes == 80
    budget.give_back(80)
    assert budget.used_bytes == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    budget = ByteBudget(100)
    await budget.take(100)
    first = asyncio.ensure_future(budget.take(50))
    second = asyncio.ensure_future(budget.take(50))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    budget.give_back(100)
    await asyncio.wait_for(second, 1)
    assert budget.used_bytes == 50 and budget.waiting == 0


async def test_one_request_larger_than_the_budget_goes_through_alone() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(150)
    assert not budget.try_take(1)
    budget.give_back(150)
    assert budget.try_take(1)
