"""The client side of the binary protocol: one pipelined connection per node.

Why: over HTTP/1.1 every call in flight needs a connection of its own, and every call pays
for a request line and headers; here one TCP connection per node carries every call of a
client at once, each tagged with a request id, and the node answers them as they complete
(common/binwire.py has the wire, docs/API.md "Binary protocol" the contract).

`BinaryConnection.request` mirrors one HTTP exchange: (status, headers, decoded body). A
call that times out gives up only its own wait (the connection and the other calls stay);
a lost connection fails every call waiting on it with `ConnectionError` (an OSError, so the
router retries it as it retries an HTTP connection error), and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from typing import Any
from urllib.parse import urlsplit

import msgpack
import structlog

from common.binwire import (
    FRAME_HEADER_BYTES,
    MAGIC,
    SCHEME,
    SESSION_PATH,
    TLS_SCHEME,
    BadFrame,
    decode_answer,
    encode_request,
    frame_length,
)

log = structlog.get_logger("raftq.client")

#: Largest answer accepted from a node (a receive of 1,000 messages of 256 KiB fits).
MAX_ANSWER_BYTES = 512 << 20
#: Past this many bytes queued for the socket, a call waits for the kernel to take some.
WRITE_HIGH_WATER_BYTES = 1 << 20


def parse_binary_url(url: str) -> tuple[str, int]:
    """(host, port) of a `raftq://host:port` or `raftqs://host:port` URL; ValueError
    otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in (SCHEME, TLS_SCHEME) or not parts.hostname or parts.port is None:
        raise ValueError(
            f"invalid binary server URL {url!r}: expected {SCHEME}://host:port "
            f"or {TLS_SCHEME}://host:port"
        )
    return parts.hostname, parts.port


class _Link:
    """One TCP connection and the calls waiting for its answers."""

    __slots__ = ("pending", "reader_task", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: dict[int, asyncio.Future[tuple[int, dict[str, str], Any]]] = {}
        self.reader_task: asyncio.Task[None] | None = None

    def fail(self, exc: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.writer.close()


class _SessionRefused(Exception):
    """The node refused the connection's token: its answer becomes the call's answer."""

    def __init__(self, answer: tuple[int, dict[str, str], Any]) -> None:
        super().__init__(answer[0])
        self.answer = answer


class BinaryConnection:
    """A lazily (re)connected, pipelined binary-protocol connection to one node.

    A `raftqs://` URL connects over TLS: `ssl_context` verifies the node (and presents a
    client certificate), else the system's trust store verifies it; the node's hostname
    is checked against its certificate as for https.

    With a `token`, each new connection first opens a session (`POST /v1/auth`) and waits
    for its answer: the node runs every later request on the connection as that user. A
    refused token fails the call that connected with the node's 401 answer.
    """

    def __init__(
        self, url: str, ssl_context: ssl.SSLContext | None = None, token: str | None = None
    ) -> None:
        self.url = url
        self.token = token
        self.host, self.port = parse_binary_url(url)
        self.ssl_context: ssl.SSLContext | None = None
        if url.startswith(TLS_SCHEME + "://"):
            self.ssl_context = ssl_context or ssl.create_default_context()
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"BinaryConnection({self.url!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.writer.is_closing()

    async def _get_link(self) -> _Link:
        link = self._link
        if link is not None and not link.writer.is_closing():
            return link
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # concurrent calls share one new connection
            link = self._link
            if link is not None and not link.writer.is_closing():
                return link
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20, ssl=self.ssl_context
            )
            writer.write(MAGIC)
            link = _Link(writer)
            link.reader_task = asyncio.ensure_future(self._read_answers(reader, link))
            if self.token is not None:
                answer = await self._call(
                    link, "POST", SESSION_PATH, msgpack.packb({"token": self.token})
                )
                if answer[0] != 200:
                    link.fail(ConnectionError(f"{self.url}: session refused ({answer[0]})"))
                    raise _SessionRefused(answer)
            self._link = link
            return link

    async def _read_answers(self, reader: asyncio.StreamReader, link: _Link) -> None:
        """Resolve each waiting call by its answer's id; on any failure fail them all."""
        reason: BaseException = ConnectionError(f"{self.url}: connection closed by the node")
        try:
            while True:
                header = await reader.readexactly(FRAME_HEADER_BYTES)
                payload = await reader.readexactly(frame_length(header, MAX_ANSWER_BYTES))
                request_id, status, headers, body = decode_answer(payload)
                fut = link.pending.pop(request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((status, headers, body))
        except asyncio.IncompleteReadError:
            pass
        except asyncio.CancelledError:
            reason = ConnectionError(f"{self.url}: connection closed by the client")
            raise
        except BadFrame as exc:
            log.warning("client.binary_bad_answer", url=self.url, error=str(exc))
            reason = ConnectionError(f"{self.url}: bad answer frame ({exc.reason})")
        except OSError as exc:
            reason = ConnectionError(f"{self.url}: {exc}")
        finally:
            if self._link is link:
                self._link = None
            link.fail(reason)

    async def request(
        self, method: str, path_qs: str, body: bytes | None, timeout_s: float
    ) -> tuple[int, dict[str, str], Any]:
        """One call: (status, headers, body). TimeoutError after `timeout_s` (connecting
        included), ConnectionError if the connection is lost first."""
        async with asyncio.timeout(max(0.001, timeout_s)):
            try:
                link = await self._get_link()
            except _SessionRefused as refused:
                return refused.answer
            return await self._call(link, method, path_qs, body)

    async def _call(
        self, link: _Link, method: str, path_qs: str, body: bytes | None
    ) -> tuple[int, dict[str, str], Any]:
        request_id = next(self._ids)
        fut: asyncio.Future[tuple[int, dict[str, str], Any]] = (
            asyncio.get_running_loop().create_future()
        )
        link.pending[request_id] = fut
        try:
            link.writer.write(encode_request(request_id, method, path_qs, body))
            transport = link.writer.transport
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER_BYTES:
                await link.writer.drain()
            return await fut
        finally:
            link.pending.pop(request_id, None)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError."""
        link, self._link = self._link, None
        if link is None:
            return
        if link.reader_task is not None:
            link.reader_task.cancel()
            with contextlib.suppress(BaseException):
                await link.reader_task
        link.fail(ConnectionError(f"{self.url}: connection closed by the client"))
        with contextlib.suppress(Exception):
            await link.writer.wait_closed()
