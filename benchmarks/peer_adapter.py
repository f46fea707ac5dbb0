"""Drives raftq through its own client library in the shared peer benchmark.

`../shared/bench/peers` compares raftq with NATS JetStream and RabbitMQ through one
adapter per system; its own raftq adapter speaks raw HTTP. This one uses `AsyncClient`
the way the README tells users to: `queue.send` per message (leader discovery, retries
and dedup ids included) and `queue.consume` with a handler, whose return acks. Load it as
`--peer-adapter benchmarks.peer_adapter:ClientAdapter` with this checkout on PYTHONPATH.

Options (`--opt key=value`): servers (comma-separated node URLs, default
raftq://127.0.0.1:7201-7203, the binary ports of `raftq up`, which the client speaks by
default; http://127.0.0.1:7001-7003 measures the client over HTTP), queue (default pbc),
vt (visibility timeout, s, default 30), concurrency (the consumer's handlers, default
256); the producer's batching, for A/B runs only (defaults are the client's): send_batch
(messages per request), sends_in_flight (requests per queue), linger_ms; and the
consumer's receivers (receive requests kept outstanding).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cluster.client import AsyncClient, AsyncQueue
from cluster.errors import NotFound
from cluster.message import Message

DEFAULT_SERVERS = "raftq://127.0.0.1:7201,raftq://127.0.0.1:7202,raftq://127.0.0.1:7203"


class ClientAdapter:
    """The peer benchmark's adapter interface (connect, reset, produce, produce_pipelined,
    consume_ack, close, describe) over `AsyncClient`."""

    name = "raftq-client"

    def __init__(self, **opts: str) -> None:
        self.opts = opts
        self.servers = [u.strip() for u in opts.get("servers", DEFAULT_SERVERS).split(",")]
        self.queue_name = opts.get("queue", "pbc")
        self.vt = int(float(opts.get("vt", "30")))
        self.concurrency = int(opts.get("concurrency", "256"))
        self.producer: dict[str, Any] = {}
        for opt, key, kind in (
            ("send_batch", "send_batch_size", int),
            ("sends_in_flight", "max_sends_in_flight", int),
            ("linger_ms", "linger_ms", float),
        ):
            if opt in opts:
                self.producer[key] = kind(opts[opt])
        self.consumer_options: dict[str, Any] = {}
        if "receivers" in opts:
            self.consumer_options["receivers"] = int(opts["receivers"])
        self.client: AsyncClient | None = None
        self.queue: AsyncQueue | None = None

    async def connect(self) -> None:
        self.client = AsyncClient(self.servers, **self.producer)
        self.queue = self.client.queue(self.queue_name)

    def _q(self) -> AsyncQueue:
        if self.queue is None:
            raise RuntimeError("connect() first")
        return self.queue

    async def reset(self) -> None:
        """Delete and recreate the queue, empty."""
        try:
            await self._q().delete()
        except NotFound:
            pass
        await self._q().create(visibility_timeout_s=self.vt)

    async def produce(self, payload: bytes) -> None:
        await self._q().send(payload)

    async def produce_pipelined(self, payload: bytes, n: int, window: int) -> None:
        """`window` tasks, each sending one message at a time, until `n` are sent."""
        left = n

        async def sender() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await self._q().send(payload)

        await asyncio.gather(*(sender() for _ in range(min(window, n))))

    async def consume_ack(
        self,
        n: int,
        on_message: Callable[[bytes], None] | None = None,
        ready: asyncio.Event | None = None,
    ) -> None:
        """A consumer loop until `n` messages were handled (each acked by the handler's
        return); messages leased beyond `n` go back to the queue when it stops."""
        queue = self._q()
        done = 0
        stop = asyncio.Event()

        async def handler(msg: Message) -> None:
            nonlocal done
            if done >= n:
                raise _Surplus  # not ours to take: nacked back to the queue
            done += 1
            if on_message is not None:
                on_message(msg.body_bytes)
            if done >= n:
                stop.set()

        if ready is not None:
            ready.set()
        await queue.consume(
            handler,
            concurrency=min(self.concurrency, max(1, n)),
            **self.consumer_options,
            visibility_timeout_s=self.vt,
            stop_event=stop,
            handle_signals=False,
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def describe(self) -> dict[str, Any]:
        try:
            raftq = version("raftq")
        except PackageNotFoundError:
            raftq = "checkout"
        binary = all(u.startswith("raftq://") for u in self.servers)
        return {
            "client": f"raftq AsyncClient {raftq}",
            "protocol": "binary" if binary else "http",
        }


class _Surplus(Exception):
    """A handler was given a message past the `n` the run wants."""
