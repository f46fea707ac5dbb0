"""The data plane of the fault proxy: one asyncio TCP listener per Proxy, two pumps per connection.

Why this shape: every accepted connection gets one task (`Connection.run`) that owns everything
the connection starts (two pumps, each with a reader, plus toxic timers) and cleans all of it up
in `finally`, so closing a proxy is "close every connection, then await every run task" and no
task can outlive its proxy. Toxics are not copied into the connection: each pump reads the
proxy's current toxic list for every chunk, so adding or removing a toxic acts at once on
connections that are already open. A per-connection "changed" event wakes any delay that is
in progress, so removing a latency toxic releases a delayed chunk immediately.

Simplifications (documented, deliberate): toxics on one stream apply in a fixed order —
timeout (drop), latency, slicer, bandwidth, limit_data — whatever order they were added in;
several latency toxics add up; the strictest bandwidth and limit_data win. An EOF from one side
is forwarded as a half-close (after any slow_close delay); the connection closes when both
directions are done or on any error. reset_peer aborts both sockets with SO_LINGER 0 (RST).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import struct
import sys
from typing import Any

import structlog

from chaos.toxics import DOWNSTREAM, UPSTREAM, Toxic

log = structlog.get_logger("chaos.proxy")

READ_CHUNK_BYTES = 32 * 1024
QUEUE_CHUNKS = 32  # per direction: bounds the memory a slowed pump may buffer (~1 MiB)
UPSTREAM_CONNECT_TIMEOUT_S = 5.0
GRACEFUL_CLOSE_TIMEOUT_S = 2.0
BANDWIDTH_SLICE_S = 0.1  # a throttled chunk is written in pieces of at most 100 ms worth

_EOF = object()


class ProxyError(Exception):
    """A request the proxy cannot carry out; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def process_command(port: int, seed: int, log_level: str = "warning") -> list[str]:
    """The argv that runs this proxy as its own process on 127.0.0.1:`port`."""
    return [
        sys.executable,
        "-P",  # not the caller's cwd first on sys.path
        "-m",
        "chaos",
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--seed",
        str(seed),
        "--log-level",
        log_level,
    ]


def parse_address(text: Any, what: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:80"); an empty host or "localhost" means 127.0.0.1.

    Why "localhost" is pinned to 127.0.0.1: with port 0 it could resolve to two sockets that
    pick different ports, and the proxy could then report only one of them.
    """
    if not isinstance(text, str) or ":" not in text:
        raise ProxyError(f"{what} must be a 'host:port' string, got {text!r}", 400)
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in ("", "localhost"):
        host = "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ProxyError(f"{what} has a bad port: {text!r}", 400) from None
    if not 0 <= port <= 65535:
        raise ProxyError(f"{what} port must be 0..65535, got {port}", 400)
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the next close of this socket send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class Proxy:
    """One named TCP proxy: a listener (when enabled), its live connections and its toxics."""

    def __init__(self, name: str, listen: str, upstream: str, rng: random.Random) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.toxics: dict[str, Toxic] = {}
        self._rng = rng
        self._server: asyncio.Server | None = None
        self._connections: dict[Connection, asyncio.Task[None]] = {}
        self._next_conn_id = 0

    @property
    def enabled(self) -> bool:
        return self._server is not None

    @property
    def rng(self) -> random.Random:
        return self._rng

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics.values()],
        }

    def toxics_for(self, stream: str) -> list[Toxic]:
        return [t for t in self.toxics.values() if t.stream == stream]

    async def start(self) -> None:
        """Bind the listener; a requested port 0 is replaced by the real port in `listen`.

        Keeping the real port means a later disable/enable binds the same address again, which
        is what callers configured with the proxy's address rely on.
        """
        if self._server is not None:
            return
        host, port = parse_address(self.listen, "listen")
        try:
            server = await asyncio.start_server(self._on_client, host, port, reuse_address=True)
        except OSError as exc:
            raise ProxyError(
                f"proxy {self.name}: cannot listen on {self.listen}: {exc}", 409
            ) from exc
        self._server = server
        real_port = server.sockets[0].getsockname()[1]
        self.listen = format_address(host, real_port)
        log.info("proxy.listening", proxy=self.name, listen=self.listen, upstream=self.upstream)

    async def stop(self) -> None:
        """Close the listener and every live connection; returns when all their tasks ended."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections.values())
        for conn in list(self._connections):
            conn.close("abort", reason="proxy_stopped")
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            try:
                await asyncio.wait_for(server.wait_closed(), GRACEFUL_CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("proxy.listener_close_slow", proxy=self.name)
            log.info("proxy.stopped", proxy=self.name, closed_connections=len(tasks))

    def set_toxic(self, toxic: Toxic) -> None:
        """Add or replace a toxic and apply it to every live connection at once."""
        self.toxics[toxic.name] = toxic
        self._notify()

    def remove_toxic(self, name: str) -> None:
        self.toxics.pop(name, None)
        self._notify()

    def clear_toxics(self) -> None:
        self.toxics.clear()
        self._notify()

    def _notify(self) -> None:
        for conn in list(self._connections):
            conn.on_toxics_changed()

    def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # raced with stop(): refuse
            writer.transport.abort()
            return
        self._next_conn_id += 1
        conn = Connection(self, self._next_conn_id, reader, writer)
        task = asyncio.create_task(conn.run(), name=f"proxy-{self.name}-conn-{conn.conn_id}")
        self._connections[conn] = task
        task.add_done_callback(lambda t: self._on_connection_done(conn, t))

    def _on_connection_done(self, conn: Connection, task: asyncio.Task[None]) -> None:
        self._connections.pop(conn, None)
        if not task.cancelled() and task.exception() is not None:  # a bug: say so loudly
            log.error(
                "proxy.conn_crashed",
                proxy=self.name,
                conn=conn.conn_id,
                exc_info=task.exception(),
            )


class Connection:
    """One client connection through a proxy and its upstream connection."""

    def __init__(
        self,
        proxy: Proxy,
        conn_id: int,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.conn_id = conn_id
        self._client_reader = client_reader
        self._client_writer = client_writer
        self._server_writer: asyncio.StreamWriter | None = None
        self._rng = proxy.rng
        self._loop = asyncio.get_running_loop()
        self._draws: dict[int, tuple[float, bool]] = {}  # toxic uid -> (toxicity, applies)
        self._passed_bytes: dict[int, int] = {}  # limit_data toxic uid -> bytes passed
        self._timers: dict[tuple[int, float, int], asyncio.Task[None]] = {}
        self._pumps: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._close_mode: str | None = None
        self._log = log.bind(proxy=proxy.name, conn=conn_id)

    # ---- toxics as seen by this connection -------------------------------------------------

    def applies(self, toxic: Toxic) -> bool:
        """Whether `toxic` acts on this connection: drawn once per toxic (and toxicity value)."""
        drawn = self._draws.get(toxic.uid)
        if drawn is None or drawn[0] != toxic.toxicity:
            drawn = (toxic.toxicity, self._rng.random() < toxic.toxicity)
            self._draws[toxic.uid] = drawn
        return drawn[1]

    def active(self, stream: str) -> list[Toxic]:
        return [t for t in self.proxy.toxics_for(stream) if self.applies(t)]

    def on_toxics_changed(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._close_mode is None:
            self._sync_timers()

    def _sync_timers(self) -> None:
        """Draw toxicity for new toxics; run a timer per active timeout (>0) / reset_peer toxic."""
        live_uids = {t.uid for t in self.proxy.toxics.values()}
        for uid in [u for u in self._draws if u not in live_uids]:
            del self._draws[uid]
            self._passed_bytes.pop(uid, None)
        wanted: dict[tuple[int, float, int], Toxic] = {}
        for toxic in self.proxy.toxics.values():
            applies = self.applies(toxic)  # draw now: at connection start or toxic change
            timed = toxic.type == "reset_peer" or (
                toxic.type == "timeout" and toxic.attr("timeout") > 0
            )
            if timed and applies:
                wanted[(toxic.uid, toxic.toxicity, toxic.attr("timeout"))] = toxic
        for key in [k for k in self._timers if k not in wanted]:
            self._timers.pop(key).cancel()
        for key, toxic in wanted.items():
            if key not in self._timers:
                self._timers[key] = asyncio.create_task(self._fire_after(toxic))

    async def _fire_after(self, toxic: Toxic) -> None:
        await asyncio.sleep(toxic.attr("timeout") / 1000)
        mode = "reset" if toxic.type == "reset_peer" else "graceful"
        self.close(mode, reason=toxic.type, toxic=toxic.name)

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        client_writer = self._client_writer
        peer = client_writer.get_extra_info("peername")
        try:
            host, port = parse_address(self.proxy.upstream, "upstream")
            try:
                async with asyncio.timeout(UPSTREAM_CONNECT_TIMEOUT_S):
                    server_reader, server_writer = await asyncio.open_connection(host, port)
            except (OSError, TimeoutError) as exc:
                self._log.info(
                    "proxy.upstream_unreachable", upstream=self.proxy.upstream, error=str(exc)
                )
                self.close("abort", reason="upstream_unreachable")
                return
            self._server_writer = server_writer
            if self._close_mode is not None:  # closed while connecting
                server_writer.transport.abort()
                return
            self._log.debug("proxy.conn_open", client=str(peer))
            self._pumps = [
                asyncio.create_task(self._pump(UPSTREAM, self._client_reader, server_writer)),
                asyncio.create_task(self._pump(DOWNSTREAM, server_reader, client_writer)),
            ]
            self._sync_timers()
            results = await asyncio.gather(*self._pumps, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):  # a bug in a pump: say so loudly
                    self._log.error("proxy.pump_crashed", exc_info=result)
            self.close("graceful", reason="both_directions_done")
        except ProxyError as exc:
            self._log.warning("proxy.bad_upstream", error=exc.message)
            self.close("abort", reason="bad_upstream")
        finally:
            self.close("abort", reason="run_exit")
            await self._finish()

    def close(self, mode: str, reason: str, **context: Any) -> None:
        """Close both sides once: "graceful" (FIN after flushing), "abort" or "reset" (RST).

        Safe to call from any task, including a pump or timer of this connection.
        """
        if self._close_mode is not None:
            return
        self._close_mode = mode
        self._log.debug("proxy.conn_closing", mode=mode, reason=reason, **context)
        for writer in (self._client_writer, self._server_writer):
            if writer is None:
                continue
            if mode == "reset":
                _set_linger_zero(writer)
                writer.transport.abort()
            elif mode == "abort":
                writer.transport.abort()
            else:
                writer.close()
        current = asyncio.current_task()
        for task in [*self._pumps, *self._timers.values()]:
            if task is not current:
                task.cancel()
        self._changed.set()

    async def _finish(self) -> None:
        """Wait for every task this connection started, and for its sockets to close."""
        tasks = [*self._pumps, *self._timers.values()]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*[t for t in tasks if t is not current], return_exceptions=True)
        for writer in (self._client_writer, self._server_writer):
            if writer is None:
                continue
            try:
                await asyncio.wait_for(writer.wait_closed(), GRACEFUL_CLOSE_TIMEOUT_S)
            except Exception:  # timeout, reset, broken pipe: the socket is gone either way
                writer.transport.abort()
        self._log.debug("proxy.conn_closed", mode=self._close_mode)

    # ---- pumps -----------------------------------------------------------------------------

    async def _pump(
        self, stream: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Move bytes one way, passing each chunk through the toxics active right now."""
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        read_task = asyncio.create_task(self._read_chunks(reader, queue))
        try:
            while True:
                item = await queue.get()
                if item is _EOF:
                    await self._slow_close(stream)
                    if writer.can_write_eof() and not writer.is_closing():
                        writer.write_eof()
                    return
                if isinstance(item, BaseException):
                    self.close("reset", reason="peer_error", stream=stream, error=str(item))
                    return
                chunk, arrived = item
                if not await self._forward(stream, chunk, arrived, writer):
                    return
        except (OSError, RuntimeError) as exc:  # peer went away while we wrote
            self.close("abort", reason="write_failed", stream=stream, error=str(exc))
        finally:
            read_task.cancel()
            await asyncio.gather(read_task, return_exceptions=True)

    async def _read_chunks(self, reader: asyncio.StreamReader, queue: asyncio.Queue[Any]) -> None:
        """Read ahead into the queue and stamp arrival times, so latency is not cumulative."""
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    await queue.put(_EOF)
                    return
                await queue.put((data, self._loop.time()))
        except OSError as exc:
            await queue.put(exc)

    async def _wait_changed_or(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early when the toxic list changes."""
        if seconds <= 0:
            return
        changed = self._changed
        try:
            async with asyncio.timeout(seconds):
                await changed.wait()
        except TimeoutError:
            pass

    async def _wait_latency(self, stream: str, arrived: float) -> None:
        """Hold a chunk until arrival + latency (+ jitter), re-reading the toxics on change."""
        drawn: dict[tuple[int, int, int], float] = {}
        while True:
            changed = self._changed
            delay_s = 0.0
            for toxic in self.active(stream):
                if toxic.type != "latency":
                    continue
                latency_ms, jitter_ms = toxic.attr("latency"), toxic.attr("jitter")
                key = (toxic.uid, latency_ms, jitter_ms)
                if key not in drawn:
                    jitter = self._rng.uniform(-jitter_ms, jitter_ms) if jitter_ms else 0.0
                    drawn[key] = max(0.0, latency_ms + jitter) / 1000
                delay_s += drawn[key]
            remaining_s = arrived + delay_s - self._loop.time()
            if remaining_s <= 0:
                return
            try:
                async with asyncio.timeout(remaining_s):
                    await changed.wait()
            except TimeoutError:
                return

    async def _slow_close(self, stream: str) -> None:
        started = self._loop.time()
        while True:
            delays_ms = [t.attr("delay") for t in self.active(stream) if t.type == "slow_close"]
            remaining_s = started + max(delays_ms, default=0) / 1000 - self._loop.time()
            if remaining_s <= 0:
                return
            await self._wait_changed_or(remaining_s)

    def _slices(self, chunk: bytes, toxics: list[Toxic]) -> tuple[list[bytes], float]:
        slicers = [t for t in toxics if t.type == "slicer"]
        if not slicers:
            return [chunk], 0.0
        slicer = slicers[0]
        average, variation = slicer.attr("average_size"), slicer.attr("size_variation")
        pieces = []
        offset = 0
        while offset < len(chunk):
            size = max(1, average + self._rng.randint(-variation, variation))
            pieces.append(chunk[offset : offset + size])
            offset += size
        return pieces, slicer.attr("delay") / 1_000_000

    async def _forward(
        self, stream: str, chunk: bytes, arrived: float, writer: asyncio.StreamWriter
    ) -> bool:
        """Deliver one chunk; returns False when a toxic closed the connection."""
        await self._wait_latency(stream, arrived)
        toxics = self.active(stream)
        if any(t.type == "timeout" for t in toxics):
            return True  # black-holed: dropped on the floor
        pieces, slice_delay_s = self._slices(chunk, toxics)
        for index, piece in enumerate(pieces):
            if index and slice_delay_s:
                await asyncio.sleep(slice_delay_s)
            rest = piece
            while rest:
                toxics = self.active(stream)
                if any(t.type == "timeout" for t in toxics):
                    return True
                rates = [t.attr("rate") for t in toxics if t.type == "bandwidth"]
                part = rest
                if rates:
                    bytes_per_s = min(rates) * 1000
                    part = rest[: max(1, int(bytes_per_s * BANDWIDTH_SLICE_S))]
                limits = [t for t in toxics if t.type == "limit_data"]
                if limits:
                    allowance = min(
                        t.attr("bytes") - self._passed_bytes.get(t.uid, 0) for t in limits
                    )
                    if allowance <= 0:
                        self.close("graceful", reason="limit_data", stream=stream)
                        return False
                    part = part[:allowance]
                rest = rest[len(part) :]
                if rates:
                    await self._wait_changed_or(len(part) / (min(rates) * 1000))
                writer.write(part)
                await writer.drain()
                for toxic in limits:
                    passed = self._passed_bytes.get(toxic.uid, 0) + len(part)
                    self._passed_bytes[toxic.uid] = passed
                    if passed >= toxic.attr("bytes"):
                        self.close("graceful", reason="limit_data", stream=stream)
                        return False
        return True
