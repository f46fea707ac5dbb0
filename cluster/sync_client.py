"""The blocking client: `Client` and `Queue`, the sync twins of `AsyncClient`/`AsyncQueue`.

    from cluster import Client

    with Client() as client:
        q = client.queue("tasks")
        q.send({"image_id": 123})
        msg = q.receive(wait_s=5)
        if msg:
            process(msg.data["image_id"])
            q.acknowledge(msg)

It runs a private asyncio loop in a daemon thread and forwards every call to the async
client, so both share one implementation of discovery, retries and the consumer loop.
A call blocks the calling thread only; many threads may share one `Client`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar, overload

from cluster.client import AsyncClient, AsyncQueue, MessageRef
from cluster.consumer import Consumer, ConsumerStats, Handler
from cluster.message import AckResult, Message, SendResult
from cluster.transactions import Transaction, exactly_once_consumer

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread, fed with coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="raftq-client-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and wait; Ctrl-C in the caller cancels it."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync Client call cannot be made from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class Queue:
    """Blocking handle on one queue; same methods and rules as `AsyncQueue`."""

    def __init__(self, client: Client, aqueue: AsyncQueue) -> None:
        self.client = client
        self._aq = aqueue
        self.name = aqueue.name

    def __repr__(self) -> str:
        return f"Queue(name={self.name!r})"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._run(coro)

    def create(self, **config: Any) -> dict[str, Any]:
        """Create or update the queue; see `AsyncQueue.create`."""
        return self._run(self._aq.create(**config))

    def info(self) -> dict[str, Any]:
        """Config and stats of the queue."""
        return self._run(self._aq.info())

    def delete(self) -> None:
        """Delete the queue and its messages."""
        self._run(self._aq.delete())

    def purge(self) -> dict[str, Any]:
        """Drop every message, keep the queue."""
        return self._run(self._aq.purge())

    def redrive(self) -> dict[str, Any]:
        """Move this dead-letter queue's messages back to their source queues."""
        return self._run(self._aq.redrive())

    def send(
        self,
        body: Any,
        *,
        attributes: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        delay_s: float | None = None,
        group_id: str | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Send one message (committed before this returns); returns its id."""
        return self._run(
            self._aq.send(
                body,
                attributes=attributes,
                dedup_id=dedup_id,
                delay_s=delay_s,
                group_id=group_id,
                priority=priority,
                timeout_s=timeout_s,
            )
        )

    def send_many(self, bodies: Iterable[Any], **options: Any) -> list[SendResult]:
        """Send many messages in batches; see `AsyncQueue.send_many`."""
        return self._run(self._aq.send_many(list(bodies), **options))

    def send_at_most_once(self, bodies: Iterable[Any], **options: Any) -> int:
        """At-most-once produce (answered before commit); see `AsyncQueue.send_at_most_once`."""
        return self._run(self._aq.send_at_most_once(list(bodies), **options))

    @overload
    def receive(
        self,
        max: None = None,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> Message | None: ...

    @overload
    def receive(
        self,
        max: int,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> list[Message]: ...

    def receive(
        self,
        max: int | None = None,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> Message | list[Message] | None:
        """Without `max`: one Message or None. With `max`: a list (maybe empty)."""
        return self._run(
            self._aq.receive(
                max, wait_s=wait_s, visibility_timeout_s=visibility_timeout_s, auto_ack=auto_ack
            )
        )

    def messages(
        self, *, max: int = 10, wait_s: float = 20.0, visibility_timeout_s: float | None = None
    ) -> Iterator[Message]:
        """Endless iterator of received messages; ack each one yourself."""
        while True:
            yield from self.receive(max, wait_s=wait_s, visibility_timeout_s=visibility_timeout_s)

    def acknowledge(self, message: MessageRef) -> bool:
        """Ack one message (Message, id of a message received here, or receipt)."""
        return self._run(self._aq.acknowledge(message))

    def acknowledge_many(self, messages: Iterable[MessageRef]) -> AckResult:
        """Ack many messages in one request."""
        return self._run(self._aq.acknowledge_many(list(messages)))

    def retry(self, message: MessageRef, delay_s: float = 0.0) -> bool:
        """Nack: visible again after `delay_s`."""
        return self._run(self._aq.retry(message, delay_s=delay_s))

    def retry_many(self, messages: Iterable[MessageRef], delay_s: float = 0.0) -> AckResult:
        """Nack many messages."""
        return self._run(self._aq.retry_many(list(messages), delay_s=delay_s))

    def extend(self, message: MessageRef, visibility_timeout_s: float) -> bool:
        """Extend the lease to now + `visibility_timeout_s`."""
        return self._run(self._aq.extend(message, visibility_timeout_s))

    def consume(
        self,
        handler: Handler,
        *,
        concurrency: int = 1,
        visibility_timeout_s: float | None = None,
        stop_event: threading.Event | None = None,
        handle_signals: bool = True,
        **options: Any,
    ) -> ConsumerStats:
        """Run `handler(msg)` (a plain function, run in `concurrency` worker threads) on
        every message until `stop()`, `stop_event.set()` or SIGINT/SIGTERM; then wait for
        running handlers and return the stats. Success acks, an exception nacks with
        exponential delay, and leases are extended while a handler runs."""
        consumer = self._aq.consumer(
            handler,
            concurrency=concurrency,
            visibility_timeout_s=visibility_timeout_s,
            handle_signals=False,
            **options,
        )
        return self._run_consumer(consumer, stop_event, handle_signals)

    def consume_exactly_once(
        self,
        handler: Handler,
        *,
        output: Any = None,
        stop_event: threading.Event | None = None,
        handle_signals: bool = True,
        **options: Any,
    ) -> ConsumerStats:
        """Like `consume`, but each message's ack and the handler's outputs (sent to
        `output`) commit as one transaction, exactly once per delivery."""
        consumer = exactly_once_consumer(
            self._aq, handler, output=output, handle_signals=False, **options
        )
        return self._run_consumer(consumer, stop_event, handle_signals)

    def _run_consumer(
        self, consumer: Consumer, stop_event: threading.Event | None, handle_signals: bool
    ) -> ConsumerStats:
        """Run an async consumer on the client's loop; signals and stop_event stop it."""
        future = asyncio.run_coroutine_threadsafe(consumer.run(), self.client._loop.loop)
        restore: list[tuple[int, Any]] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                restore.append((sig, signal.getsignal(sig)))
                signal.signal(sig, lambda *_: consumer.stop_threadsafe())
        try:
            while True:
                try:
                    return future.result(timeout=0.1)
                except concurrent.futures.TimeoutError:
                    if stop_event is not None and stop_event.is_set():
                        consumer.stop_threadsafe()
        except BaseException:
            future.cancel()
            raise
        finally:
            for sig, previous in restore:
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(sig, previous)

    def stop(self) -> None:
        """Stop every consumer loop running on this handle (thread-safe)."""
        self.client._loop.loop.call_soon_threadsafe(self._aq.stop)


class Client:
    """Blocking client of a raftq cluster; see `AsyncClient` for the parameters.

    No `session` parameter: aiohttp sessions are bound to one event loop, and this client
    owns a private one.
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        timeout_s: float = 30.0,
        request_timeout_s: float = 10.0,
        leader_check_s: float | None = 1.0,
    ) -> None:
        self._loop = _LoopThread()
        servers = servers if servers is None or isinstance(servers, str) else list(servers)
        try:
            self._async = AsyncClient(
                servers,
                timeout_s=timeout_s,
                request_timeout_s=request_timeout_s,
                leader_check_s=leader_check_s,
            )
        except BaseException:
            self._loop.close()
            raise
        self.servers = self._async.servers
        self.timeout_s = timeout_s
        self._queues: dict[str, Queue] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"Client(servers={list(self.servers)!r}, leader={self.leader_url!r})"

    @property
    def leader_url(self) -> str | None:
        """The cached leader URL (None before the first call or after a failover)."""
        return self._async.leader_url

    @property
    def aio(self) -> AsyncClient:
        """The underlying AsyncClient (use only from coroutines run via this client)."""
        return self._async

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections and stop the private loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._async.close())
        finally:
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("client is closed")
        return self._loop.run(coro)

    def transaction(self, txn_id: str | None = None) -> Transaction:
        """Collect acks and sends to commit atomically; `with` commits on a clean exit."""
        return Transaction(self._async.transaction(txn_id), self._run)

    def queue(self, name: str) -> Queue:
        """The handle of queue `name` (call `create()` to create it on the server)."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = Queue(self, self._async.queue(name))
        return q

    def queues(self) -> list[dict[str, Any]]:
        """Every queue with its depth, in_flight and delayed counts."""
        return self._run(self._async.queues())

    def cluster(self) -> dict[str, Any]:
        """The cluster as the leader sees it."""
        return self._run(self._async.cluster())

    def members(self) -> dict[str, Any]:
        """The configuration in force: voters, learners and how to reach each member."""
        return self._run(self._async.members())

    def add_member(
        self, node_id: int, url: str, raft_addr: str, *, voter: bool = True
    ) -> dict[str, Any]:
        """Add a node (a learner until caught up; it stays one with voter=False)."""
        return self._run(self._async.add_member(node_id, url, raft_addr, voter=voter))

    def remove_member(self, node_id: int) -> dict[str, Any]:
        """Remove a node from the configuration."""
        return self._run(self._async.remove_member(node_id))

    def promote_member(self, node_id: int) -> dict[str, Any]:
        """Make a caught-up learner a voter."""
        return self._run(self._async.promote_member(node_id))

    def transfer_leader(self, to: int | None = None) -> dict[str, Any]:
        """Hand leadership to voter `to` (default: the most caught-up other voter)."""
        return self._run(self._async.transfer_leader(to))

    def cluster_views(
        self, urls: Iterable[str] | None = None, timeout_s: float = 2.0
    ) -> dict[str, dict[str, Any] | Exception]:
        """Each node's own `/v1/cluster` view (or the exception reaching it)."""
        return self._run(self._async.cluster_views(urls, timeout_s=timeout_s))

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Low-level API call routed to the leader with retries."""
        return self._run(self._async.request(method, path, **kw))


__all__ = ["Client", "Queue"]
