"""The chaos workload's HTTP caller against two real loopback servers: a request to a hung
node is abandoned (recorded indeterminate) once the leader hint names another node, and a
slow node that still leads is waited for."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from chaos.history import INFO, OK
from chaos.workload import Api


class TwoNodes:
    """Node 1 answers after `delay_s[1]`, node 2 after `delay_s[2]` (seconds)."""

    def __init__(self) -> None:
        self.delay_s = {1: 0.0, 2: 0.0}
        self.served: list[int] = []
        self.urls: dict[int, str] = {}
        self.runners: list[web.AppRunner] = []
        self.closing = asyncio.Event()

    async def start(self) -> None:
        for node in (1, 2):
            app = web.Application()
            app.router.add_post("/v1/queues/q/messages", self._handler(node))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.urls[node] = f"http://127.0.0.1:{port}"
            self.runners.append(runner)

    def _handler(self, node: int) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(_: web.Request) -> web.Response:
            with contextlib.suppress(TimeoutError):  # close() ends a long delay early
                await asyncio.wait_for(self.closing.wait(), self.delay_s[node])
            self.served.append(node)
            return web.json_response({"messages": [{"id": "0000000000000001"}]}, status=201)

        return handle

    async def close(self) -> None:
        self.closing.set()
        for runner in self.runners:
            await runner.shutdown()
            await runner.cleanup()


@pytest.fixture
async def nodes() -> AsyncIterator[TwoNodes]:
    two = TwoNodes()
    await two.start()
    try:
        yield two
    finally:
        await two.close()


def _api(session: aiohttp.ClientSession, nodes: TwoNodes, hint: Callable[[], int]) -> Api:
    """The workload's caller with a 20 s timeout, checking the leader hint every 0.1 s."""
    real_urls = {url: node for node, url in nodes.urls.items()}
    return Api(
        session,
        nodes.urls,
        real_urls,
        random.Random(1),
        timeout_s=20.0,
        leader_hint=hint,
        leader_check_s=0.1,
    )


async def test_request_to_a_hung_node_is_abandoned_once_another_leads(nodes: TwoNodes) -> None:
    hint = {"leader": 1}
    nodes.delay_s[1] = 30.0  # "SIGSTOPped": answers long after the call's timeout
    async with aiohttp.ClientSession() as session:
        api = _api(session, nodes, lambda: hint["leader"])
        asyncio.get_running_loop().call_later(0.3, hint.__setitem__, "leader", 2)
        outcome = await asyncio.wait_for(api.call("POST", "/v1/queues/q/messages", {}), 10)
        assert outcome.type == INFO and outcome.node == 1
        assert outcome.error is not None and "node 2 leads now" in outcome.error
        assert api.pick() == 2
        again = await api.call("POST", "/v1/queues/q/messages", {})
    assert again.type == OK and again.node == 2
    assert nodes.served == [2]


async def test_a_slow_node_that_still_leads_is_waited_for(nodes: TwoNodes) -> None:
    nodes.delay_s[1] = 0.5
    async with aiohttp.ClientSession() as session:
        api = _api(session, nodes, lambda: 1)
        outcome = await api.call("POST", "/v1/queues/q/messages", {})
    assert outcome.type == OK and outcome.node == 1
    assert nodes.served == [1]
