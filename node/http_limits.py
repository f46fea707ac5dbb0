"""The HTTP port's resource limits: connections per address, read timeouts, request bytes.

Why a layer around aiohttp: aiohttp bounds a request line's and a header's size but not
how long they may take to arrive, nor how many connections one address may hold; so a
slow-loris client (a header byte every few seconds) or a flood of idle connections from
one address could hold the port. The binary port (node/binary_api.py) has the same limits
on its own reads; here they sit around aiohttp's own protocol, untouched:

- `LimitedSite` listens like aiohttp's TCPSite, but every accepted connection goes through
  `_GuardedConnection`, which refuses it at once (closed before a byte is read, the
  refusal logged sampled: common/connection_cap.py) when its address holds
  `max_per_address`, and otherwise hands every event to aiohttp's RequestHandler.
- A request's line and headers must be in within `read_timeout_s` of its first byte, or
  the connection is closed (`http.slow_request`, sampled). The clock runs only between
  requests: never while an answer is on its way (a long-poll can take `max_wait_s`).
- A request's body must be in within `read_timeout_s` of its headers: the middleware puts
  the deadline on the request and `node.http.read_raw` answers `408 request_timeout` past it.
- An idle connection (nothing sent, no answer on its way) is aiohttp's keep-alive timeout:
  the runner is built with `keepalive_timeout=idle_timeout_s`; aiohttp closes only a
  connection that waits for its next request, so a long-poll is never cut.
- Request bodies in flight across the node share one `ByteBudget`
  (node/request_budget.py): a body that does not fit is not read, and the request gets
  `503 overloaded` with `Retry-After`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from common.connection_cap import ConnectionCap, peer_address, sampled
from node.api import error_middleware
from node.http import BODY_DEADLINE_KEY, ApiError
from node.request_budget import ByteBudget

log = structlog.get_logger("node.http_limits")


class HttpLimits:
    """The limits of one HTTP port, and the connections they watch."""

    def __init__(
        self,
        budget: ByteBudget,
        *,
        max_connections_per_address: int,
        read_timeout_s: float,
        max_body_bytes: int,
    ) -> None:
        self.budget = budget
        self.cap = ConnectionCap(
            max_connections_per_address, "http.connection_refused", "node.http_limits"
        )
        self.read_timeout_s = read_timeout_s
        self.max_body_bytes = max_body_bytes
        self.slow_requests = 0  # connections closed for headers not in within read_timeout_s
        self._connections: dict[asyncio.BaseProtocol, _GuardedConnection] = {}

    def protocol_factory(
        self, make_handler: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """What `loop.create_server` takes: aiohttp's handler factory, guarded."""
        return lambda: _GuardedConnection(self, make_handler())

    def _slow_request(self, remote: str) -> None:
        self.slow_requests += 1
        if sampled(self.slow_requests):  # a flood logs a few lines
            log.warning(
                "http.slow_request",
                remote=remote,
                detail=f"a request not in whole within {self.read_timeout_s}s of its first byte",
                closed_total=self.slow_requests,
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The outermost middleware: stops the header clock, sets the body deadline, and
        holds the body's bytes in the node's budget until the answer is made."""
        conn = self._connections.get(request.protocol)
        if conn is not None:
            conn.answering += 1
            conn.stop_header_clock()
        loop = asyncio.get_running_loop()
        request[BODY_DEADLINE_KEY] = (loop.time() + self.read_timeout_s, self.read_timeout_s)
        size = self._body_bytes(request)
        try:
            if size and not self.budget.try_take(size):
                return await error_middleware(request, self._overloaded)
            try:
                return await handler(request)
            finally:
                if size:
                    self.budget.give_back(size)
        finally:
            if conn is not None:
                conn.answer_made()

    def _body_bytes(self, request: web.Request) -> int:
        """What the body will hold at most: its Content-Length (a larger one is refused
        unread with 413), or the body limit when it comes chunked."""
        if request.content_length is not None:
            return min(request.content_length, self.max_body_bytes)
        return self.max_body_bytes if request.body_exists else 0

    async def _overloaded(self, _request: web.Request) -> web.StreamResponse:
        raise ApiError(
            503,
            "overloaded",
            f"request bodies of {self.budget.limit_bytes} bytes are already in flight on this "
            "node; nothing was read or proposed: retry later",
            {"Retry-After": "1"},
            limit_bytes=self.budget.limit_bytes,
        )


class _GuardedConnection(asyncio.Protocol):
    """One accepted connection: counted against its address, its header clock, and
    aiohttp's RequestHandler (`inner`) doing everything else."""

    def __init__(self, limits: HttpLimits, inner: asyncio.Protocol) -> None:
        self.limits = limits
        self.inner = inner
        self.answering = 0  # requests of this connection inside the app
        self.address = "?"
        self.remote = "?"
        self._admitted = False
        self._transport: asyncio.Transport | None = None
        self._header_clock: asyncio.TimerHandle | None = None
        self._bytes_while_answering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.address, self.remote = peer_address(transport.get_extra_info("peername"))
        if not self.limits.cap.admit(self.address, self.remote):
            transport.close()  # aiohttp never sees it
            return
        self._admitted = True
        self._transport = transport
        self.limits._connections[self.inner] = self
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self.answering:
            self._bytes_while_answering = True  # the next request's: clocked once answered
        elif self._header_clock is None:
            self._start_header_clock()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.stop_header_clock()
        self.limits.cap.release(self.address)
        self.limits._connections.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def _start_header_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_clock = loop.call_later(self.limits.read_timeout_s, self._headers_late)

    def stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def answer_made(self) -> None:
        """A request left the app; bytes of the next one that came meanwhile start its
        clock now (if it is already whole, aiohttp starts it at once and stops the clock).
        Part of a next request that came in the same read as the one before is not seen
        here; aiohttp's keep-alive timeout (`idle_timeout_s`) still bounds it."""
        self.answering -= 1
        if not self.answering and self._bytes_while_answering and self._admitted:
            self._bytes_while_answering = False
            self._start_header_clock()

    def _headers_late(self) -> None:
        self._header_clock = None
        if self.answering or self._transport is None:
            return  # cannot happen (a request's start stops the clock); never cut an answer
        self.limits._slow_request(self.remote)
        self._transport.close()


class LimitedSite(web.BaseSite):
    """aiohttp's TCPSite, with every connection under `limits` (see the module docstring)."""

    __slots__ = ("_bound_port", "_host", "_limits", "_port", "_reuse_address")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: HttpLimits,
        *,
        ssl_context: Any = None,
        backlog: int = 128,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host = host
        self._port = port
        self._bound_port: int | None = None
        self._limits = limits
        self._reuse_address = reuse_address

    @property
    def port(self) -> int:
        """The bound port once started (the real one if 0 was asked)."""
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._limits.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
