"""The binary client port: the HTTP API's commands over length-prefixed msgpack frames.

Why: one HTTP request per command costs a request line, headers and their parsing on both
sides, and an HTTP/1.1 connection carries one request at a time, so a client with many
calls in flight needs as many connections. Here a client keeps one TCP connection per
node, tags each request with an id and may have many in flight (as NATS, AMQP and Kafka
clients do); the node answers each as it completes.

One command layer, two codecs: a frame is matched against the same `ROUTES` table and run
by the same handlers through `serve_request` (the HTTP error middleware's logic), so the
statuses, error bodies, limits and metrics are those of the HTTP API. The handlers get a
`FrameRequest`, which offers what they read of an aiohttp request: the frame's body is its
cached raw body (`read_body` checks size, depth, integers and Unicode unchanged), and it
always asks for msgpack. There is no forwarding here: a follower answers `307 not_leader`
(the leader's id and URL in the body; during an election it first waits up to
`forward_wait_s` for one to be known) and the client goes to the leader itself, as HTTP
clients do with `X-Raftq-Redirect: 1`.

Hostile input is treated as on the peer port (raft/transport.py): a wrong magic, a length
over the limit (refused from the 4-byte header, before the payload is read), a truncated
frame or a payload that is not `[id, method, path, body]` closes that connection and logs
`binary.bad_frame`; no other connection notices. A well-formed request for an unknown
route gets the API's 404 (405 for a known path with another method) and the connection
stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from common.binwire import (
    FRAME_HEADER_BYTES,
    FRAME_OVERHEAD_BYTES,
    MAGIC,
    SESSION_PATH,
    BadFrame,
    decode_request,
    encode_answer,
    frame_length,
)
from common.connection_cap import ConnectionCap, peer_address
from node.api import ROUTES, serve_request
from node.app_context import PRINCIPAL_KEY
from node.auth import Principal
from node.forwarding import RETRY_PAUSE_S
from node.http import MSGPACK, RAW_BODY_KEY, ApiError
from node.request_budget import ByteBudget
from raft.messages import pack

log = structlog.get_logger("node.binary")

#: Requests one connection may have in flight; past it the node stops reading that
#: connection until some finish (TCP flow control pushes back on the client).
MAX_IN_FLIGHT = 1024
#: A client has this long to send the magic after connecting.
HANDSHAKE_TIMEOUT_S = 10.0
#: Connections one client address may hold open at once; the next is closed at once.
MAX_CONNECTIONS_PER_ADDRESS = 256
#: A connection with no request on its way and no new frame for this long is closed
#: (the client reconnects on its next request).
IDLE_TIMEOUT_S = 300.0
#: Once a frame's header is in, its payload must follow within this (a slow-loris
#: client trickling bytes holds a connection for no longer).
READ_TIMEOUT_S = 30.0
_MSGPACK_HEADERS = CIMultiDictProxy(CIMultiDict({"Content-Type": MSGPACK, "Accept": MSGPACK}))
#: Headers of a handler's answer that the frame itself replaces.
_FRAME_OWN_HEADERS = frozenset({"content-type", "content-length"})


class _Route:
    """One ROUTES entry as a regex; `{name}` matches one path segment, percent-decoded
    afterwards (as aiohttp's match_info is)."""

    __slots__ = ("canonical", "handler", "method", "pattern")

    def __init__(self, method: str, path: str, handler: Any) -> None:
        self.method = method
        self.canonical = path
        self.handler = handler
        parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", path)
        regex = "".join(
            f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts
        )
        self.pattern = re.compile(regex + r"\Z")


class RouteTable:
    """Matches (method, path) against the API's routes: (handler, canonical, match_info),
    or an `HTTPNotFound`/`HTTPMethodNotAllowed` to raise through `serve_request`."""

    def __init__(self, routes: Sequence[tuple[str, str, Any, str]] = ROUTES) -> None:
        self._routes = [_Route(m, p, h) for m, p, h, _access in routes]

    def match(self, method: str, path: str) -> tuple[Any, str, dict[str, str]]:
        allowed: list[str] = []
        for route in self._routes:
            found = route.pattern.match(path)
            if found is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            return (
                route.handler,
                route.canonical,
                {k: unquote(v) for k, v in found.groupdict().items()},
            )
        if allowed:
            raise web.HTTPMethodNotAllowed(method, allowed)
        raise web.HTTPNotFound()


class FrameRequest(dict):
    """What the API's handlers read of a request, for a request that came in a frame.

    A dict (like aiohttp's request) so `read_raw` finds the frame's body under
    RAW_BODY_KEY and never reads a stream.
    """

    def __init__(
        self,
        app: web.Application,
        method: str,
        path_qs: str,
        match_info: dict[str, str],
        body: bytes | None,
        principal: Principal | None = None,
    ) -> None:
        super().__init__()
        if principal is not None:  # the connection's session (POST /v1/auth)
            self[PRINCIPAL_KEY] = principal
        self.app = app
        self.method = method
        self.path_qs = path_qs
        path, _, query = path_qs.partition("?")
        self.path = unquote(path)
        self.query = MultiDictProxy(MultiDict(parse_qsl(query, keep_blank_values=True)))
        self.match_info = match_info
        self.headers = _MSGPACK_HEADERS
        self.content_type = MSGPACK
        raw = body or b""
        self.content_length = len(raw)
        self[RAW_BODY_KEY] = raw
        self._raw = raw

    async def read(self) -> bytes:
        return self._raw


def _route_error(exc: web.HTTPException) -> Any:
    """A handler that raises `exc`: unknown routes go through `serve_request` too, so
    their answers and metrics are the HTTP API's."""

    async def handler(_request: Any) -> web.Response:
        raise exc

    return handler


def _answer_body(response: web.StreamResponse) -> bytes:
    """The answer's body as one packed msgpack object (the handler's own bytes if msgpack)."""
    body = getattr(response, "body", None)
    if not body:
        return b"\xc0"  # nil
    raw = bytes(body) if not isinstance(body, bytes) else body
    if response.content_type == MSGPACK:
        return raw
    return pack(raw.decode(response.charset or "utf-8", "replace"))


def _waiting_for_a_leader(handler: Any, wait_s: float) -> Any:
    """`handler`, run again while it answers `503 no_leader`, for up to `wait_s`.

    Why: during an election a follower knows no leader. Over HTTP it holds the request
    until one is elected and forwards it (node/forwarding.py); here it answered 503 with
    `Retry-After: 1` at once, and a client that honours it paused a whole second after
    every leader crash (kill -9 to the first acknowledged send: 1.3 s instead of 0.6 s).
    Holding the request until a leader is known instead answers as soon as there is one:
    the handler runs here if this node won, else it answers the 307 to the new leader.
    `no_leader` is raised before anything is proposed, so running the handler again is
    safe, as the HTTP forwarder's retries are.
    """

    async def waiting(request: Any) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            try:
                return await handler(request)
            except ApiError as err:
                if err.code != "no_leader" or loop.time() >= deadline:
                    raise
            await asyncio.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - loop.time())))

    return waiting


class BinaryApi:
    """Serves the binary protocol on one address for the application `app`."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        max_body_bytes: int,
        max_in_flight: int = MAX_IN_FLIGHT,
        leader_wait_s: float = 0.0,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
        ssl_context: ssl.SSLContext | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self.app = app
        # TLS (raftqs://): the node's client-port context (node/tls.py), None for plain TCP
        self.ssl_context = ssl_context
        # Request bytes in flight across the node's ports (node/request_budget.py): a
        # frame's payload is read only once it fits, so a full budget stops this
        # connection's reads and TCP pushes back on its client.
        self.budget = budget
        self.connection_cap = ConnectionCap(
            max_connections_per_address, "binary.connection_refused", "node.binary"
        )
        self.idle_timeout_s = idle_timeout_s
        self.read_timeout_s = read_timeout_s
        self.leader_wait_s = leader_wait_s
        self.host = host
        self.port = port
        self.max_frame_bytes = max_body_bytes + FRAME_OVERHEAD_BYTES
        self.max_in_flight = max_in_flight
        self.routes = RouteTable()
        self.bad_frames = 0
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._requests: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            reuse_address=True,
            limit=1 << 20,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.read_timeout_s if self.ssl_context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]  # the real one if 0 was asked
        log.info("binary.listening", addr=f"{self.host}:{self.port}")

    async def close(self, grace_s: float) -> None:
        """Stop accepting, let requests in flight finish for up to `grace_s`, then cancel
        what is left and close every connection."""
        if self._server is not None:
            self._server.close()
        if self._requests:
            await asyncio.wait(set(self._requests), timeout=grace_s)
        for task in list(self._requests):
            task.cancel()
        for writer in list(self._connections.values()):
            writer.close()
        tasks = [*self._requests, *self._connections]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        log.info("binary.stopped")

    async def _next_header(self, reader: asyncio.StreamReader, in_flight: list[int]) -> bytes:
        """The next frame header. TimeoutError once the connection sat `idle_timeout_s`
        with nothing on its way: a client waiting for an answer (a long-poll) is not idle,
        nor is one whose header is still arriving (then `read_timeout_s` bounds it)."""
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    first = await reader.readexactly(1)
                break
            except TimeoutError:
                if not in_flight[0]:
                    raise
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return first + await reader.readexactly(FRAME_HEADER_BYTES - 1)
        except asyncio.IncompleteReadError as exc:
            raise asyncio.IncompleteReadError(first + exc.partial, FRAME_HEADER_BYTES) from None

    @property
    def refused_connections(self) -> int:
        """Connections closed at once because their address held its share."""
        return self.connection_cap.refused

    def _bad_frame(self, reason: str, detail: str, remote: str) -> None:
        self.bad_frames += 1
        log.warning("binary.bad_frame", reason=reason, detail=detail, remote=remote)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        address, remote = peer_address(writer.get_extra_info("peername"))
        if not self.connection_cap.admit(address, remote):
            writer.close()
            return
        self._connections[task] = writer
        try:
            await self._read_frames(reader, writer, remote)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # nothing a client sends may escape this connection
            log.error("binary.connection_failed", remote=remote, error=repr(exc))
        finally:
            self._connections.pop(task, None)
            self.connection_cap.release(address)
            writer.close()

    async def _read_frames(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                magic = await reader.readexactly(len(MAGIC))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            self._bad_frame("no_magic", type(exc).__name__, remote)
            return
        if magic != MAGIC:
            self._bad_frame("bad_magic", repr(magic), remote)
            return
        slots = asyncio.Semaphore(self.max_in_flight)
        in_flight = [0]  # this connection's requests on their way
        session = _Session()
        while True:
            try:
                header = await self._next_header(reader, in_flight)
            except TimeoutError:
                log.info("binary.idle_closed", remote=remote, idle_s=self.idle_timeout_s)
                return
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    self._bad_frame("truncated_frame", f"{len(exc.partial)} header bytes", remote)
                return  # else a clean close between frames
            except ConnectionError:
                return
            try:
                length = frame_length(header, self.max_frame_bytes)
            except BadFrame as exc:  # refused before a byte of the payload is read
                self._bad_frame(exc.reason, exc.detail, remote)
                return
            budget = self.budget
            if budget is not None:
                await budget.take(length)  # not under the read timeout: the node is busy
            decoded = None
            try:
                payload = await self._read_payload(reader, length, remote)
                decoded = None if payload is None else self._decode(payload, remote)
            finally:
                if budget is not None and decoded is None:
                    budget.give_back(length)
            if decoded is None:
                return
            if decoded[2] == SESSION_PATH:
                # Answered before the next frame is read: every later request on this
                # connection runs as the session's user, whatever order they finish in.
                try:
                    await self._answer(writer, *decoded, session)
                finally:
                    if budget is not None:
                        budget.give_back(length)
                continue
            await slots.acquire()
            in_flight[0] += 1
            request = asyncio.ensure_future(self._answer(writer, *decoded, session))
            self._requests.add(request)
            request.add_done_callback(self._requests.discard)
            request.add_done_callback(lambda _t: _done(slots, in_flight))
            if budget is not None:
                request.add_done_callback(lambda _t, b=budget, n=length: b.give_back(n))

    async def _read_payload(
        self, reader: asyncio.StreamReader, length: int, remote: str
    ) -> bytes | None:
        """A frame's payload, or None (logged) if it does not arrive whole in time."""
        try:
            async with asyncio.timeout(self.read_timeout_s):
                return await reader.readexactly(length)
        except TimeoutError:
            self._bad_frame("slow_frame", f"{length} bytes not in {self.read_timeout_s}s", remote)
        except asyncio.IncompleteReadError as exc:
            self._bad_frame("truncated_frame", f"{len(exc.partial)} of {length} bytes", remote)
        except ConnectionError:
            pass
        return None

    def _decode(self, payload: bytes, remote: str) -> tuple[int, str, str, bytes | None] | None:
        try:
            return decode_request(payload)
        except BadFrame as exc:
            self._bad_frame(exc.reason, exc.detail, remote)
            return None

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request_id: int,
        method: str,
        path_qs: str,
        body: bytes | None,
        session: _Session,
    ) -> None:
        path = path_qs.partition("?")[0]
        try:
            handler, route, match_info = self.routes.match(method, path)
        except web.HTTPException as exc:
            handler, route, match_info = _route_error(exc), "?", {}
        if self.leader_wait_s > 0:
            handler = _waiting_for_a_leader(handler, self.leader_wait_s)
        try:
            request = FrameRequest(self.app, method, path_qs, match_info, body, session.principal)
            response = await serve_request(request, handler, route)  # type: ignore[arg-type]
            if path_qs == SESSION_PATH:
                session.principal = request.get(PRINCIPAL_KEY) if response.status == 200 else None
            headers = {
                k: v for k, v in response.headers.items() if k.lower() not in _FRAME_OWN_HEADERS
            }
            data = encode_answer(request_id, response.status, headers, _answer_body(response))
        except Exception as exc:  # serve_request answers handler errors; this is our bug
            log.error("binary.answer_failed", path=path, error=repr(exc))
            writer.close()  # the client's call fails as a lost connection, and is retried
            return
        if writer.is_closing():
            return  # the client went away; the command itself ran, as over HTTP
        writer.write(data)
        try:
            await writer.drain()
        except ConnectionError:
            pass


class _Session:
    """Who a connection's requests run as: set by `POST /v1/auth` (users_api.open_session),
    as NATS's CONNECT or AMQP's connection.start-ok, once per connection."""

    __slots__ = ("principal",)

    def __init__(self) -> None:
        self.principal: Principal | None = None


def _done(slots: asyncio.Semaphore, in_flight: list[int]) -> None:
    in_flight[0] -= 1
    slots.release()
