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
client, so both share one implementation of discovery, retries and the consumer loop:
a method that only forwards is made by `_blocking` from the async method, whose
parameters and docs it keeps; only what differs when blocking (iterables taken in the
caller's thread, the `messages()` iterator, consumer loops stopped by signals or a
`threading.Event`) is written here. A call blocks the calling thread only; many threads
may share one `Client`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from cluster.client import MAX_POLL_WAIT_S, AsyncClient, AsyncQueue, MessageRef
from cluster.consumer import Consumer, ConsumerStats, Handler
from cluster.exchanges import Exchange
from cluster.message import AckResult, Message, SendResult
from cluster.topics import AsyncTopic, RecordHandler, SubscriberStats
from cluster.transactions import Transaction, exactly_once_consumer

T = TypeVar("T")
P = ParamSpec("P")


class _Blocking(Protocol):
    """A blocking twin: the async object it wraps, and `_run` to run its coroutines."""

    @property
    def _async(self) -> Any: ...

    def _run(self, coro: Coroutine[Any, Any, T]) -> T: ...


def _blocking(
    method: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[_Blocking, P], T]:
    """The blocking twin of `method`, an async method of the wrapped object: it takes the
    same arguments (and shows the same signature and docs), runs the call on the client's
    loop and returns its result."""
    name = method.__name__

    @functools.wraps(method)
    def blocking(self: _Blocking, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._run(getattr(self._async, name)(*args, **kwargs))

    blocking.__qualname__ = method.__qualname__.removeprefix("Async")
    return blocking


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


def run_until_stopped(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    stop: Callable[[], Any],
    stop_event: threading.Event | None,
    handle_signals: bool,
) -> T:
    """Run a consumer loop's `coro` on the client's `loop` and wait for its result here;
    SIGINT/SIGTERM (in the main thread, when `handle_signals`) or `stop_event` call
    `stop()` (thread-safe), and the previous signal handlers come back at the end."""
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    restore: list[tuple[int, Any]] = []
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore.append((sig, signal.getsignal(sig)))
            signal.signal(sig, lambda *_: stop())
    try:
        while True:
            try:
                return future.result(timeout=0.1)
            except concurrent.futures.TimeoutError:
                if stop_event is not None and stop_event.is_set():
                    stop()
    except BaseException:
        future.cancel()
        raise
    finally:
        for sig, previous in restore:
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)


class _Handle:
    """What every blocking handle (queue, topic) shares: its client, the async handle it
    wraps, its name, and running coroutines on the client's loop."""

    def __init__(self, client: Client, ahandle: Any) -> None:
        self.client = client
        self._async = ahandle
        self.name: str = ahandle.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._run(coro)


class Queue(_Handle):
    """Blocking handle on one queue; same methods and rules as `AsyncQueue`."""

    _async: AsyncQueue

    create = _blocking(AsyncQueue.create)
    info = _blocking(AsyncQueue.info)
    delete = _blocking(AsyncQueue.delete)
    purge = _blocking(AsyncQueue.purge)
    redrive = _blocking(AsyncQueue.redrive)
    send = _blocking(AsyncQueue.send)
    receive = _blocking(AsyncQueue.receive)
    acknowledge = _blocking(AsyncQueue.acknowledge)
    retry = _blocking(AsyncQueue.retry)
    extend = _blocking(AsyncQueue.extend)

    # Iterables are read here, in the caller's thread, not on the client's loop.

    def send_many(self, bodies: Iterable[Any], **options: Any) -> list[SendResult]:
        """Send many messages in batches; see `AsyncQueue.send_many`."""
        return self._run(self._async.send_many(list(bodies), **options))

    def send_at_most_once(self, bodies: Iterable[Any], **options: Any) -> int:
        """At-most-once produce (answered before commit); see `AsyncQueue.send_at_most_once`."""
        return self._run(self._async.send_at_most_once(list(bodies), **options))

    def acknowledge_many(self, messages: Iterable[MessageRef]) -> AckResult:
        """Ack many messages in one request."""
        return self._run(self._async.acknowledge_many(list(messages)))

    def retry_many(self, messages: Iterable[MessageRef], delay_s: float = 0.0) -> AckResult:
        """Nack many messages."""
        return self._run(self._async.retry_many(list(messages), delay_s=delay_s))

    def extend_many(self, messages: Iterable[MessageRef], visibility_timeout_s: float) -> AckResult:
        """Extend many leases in one request."""
        return self._run(self._async.extend_many(list(messages), visibility_timeout_s))

    def messages(
        self,
        *,
        max: int = 10,
        wait_s: float = MAX_POLL_WAIT_S,
        visibility_timeout_s: float | None = None,
    ) -> Iterator[Message]:
        """Endless iterator of received messages; ack each one yourself."""
        while True:
            yield from self.receive(max, wait_s=wait_s, visibility_timeout_s=visibility_timeout_s)

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
        consumer = self._async.consumer(
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
            self._async, handler, output=output, handle_signals=False, **options
        )
        return self._run_consumer(consumer, stop_event, handle_signals)

    request = _blocking(AsyncQueue.request)

    def serve(
        self,
        handler: Handler,
        *,
        stop_event: threading.Event | None = None,
        handle_signals: bool = True,
        **options: Any,
    ) -> ConsumerStats:
        """Answer requests on this queue (see `AsyncQueue.serve`) until `stop()`,
        `stop_event.set()` or SIGINT/SIGTERM; returns the consumer's stats."""
        consumer = self._async.responder(handler, handle_signals=False, **options)
        return self._run_consumer(consumer, stop_event, handle_signals)

    def _run_consumer(
        self, consumer: Consumer, stop_event: threading.Event | None, handle_signals: bool
    ) -> ConsumerStats:
        """Run an async consumer on the client's loop; signals and stop_event stop it."""
        return run_until_stopped(
            self.client._loop.loop,
            consumer.run(),
            consumer.stop_threadsafe,
            stop_event,
            handle_signals,
        )

    def stop(self) -> None:
        """Stop every consumer loop running on this handle (thread-safe)."""
        self.client._loop.loop.call_soon_threadsafe(self._async.stop)


class Topic(_Handle):
    """Blocking handle on one topic; same methods as `AsyncTopic`."""

    _async: AsyncTopic

    create = _blocking(AsyncTopic.create)
    info = _blocking(AsyncTopic.info)
    delete = _blocking(AsyncTopic.delete)
    publish = _blocking(AsyncTopic.publish)
    fetch = _blocking(AsyncTopic.fetch)

    def publish_many(
        self, values: Iterable[Any], *, key: str | None = None
    ) -> list[tuple[int, int]]:
        """Append several records (read here, in the caller's thread) in as few requests."""
        return self._run(self._async.publish_many(list(values), key=key))


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
        token: str | None = None,
        **producer: Any,
    ) -> None:
        """`producer`: `AsyncClient`'s send batching options (`send_batch_size`,
        `max_sends_in_flight`, `linger_ms`, `max_buffered_send_bytes`): sends made from
        many threads at once share requests; and its TLS options (`ca_file`, `cert_file`,
        `key_file`, `ssl_context`)."""
        self._loop = _LoopThread()
        servers = servers if servers is None or isinstance(servers, str) else list(servers)
        try:
            self._async = AsyncClient(
                servers,
                timeout_s=timeout_s,
                request_timeout_s=request_timeout_s,
                leader_check_s=leader_check_s,
                token=token,
                **producer,
            )
        except BaseException:
            self._loop.close()
            raise
        self.servers = self._async.servers
        self.timeout_s = timeout_s
        self._queues: dict[str, Queue] = {}
        self._topics: dict[str, Topic] = {}
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

    def exchange(self, name: str) -> Exchange:
        """The handle of exchange `name` (call `declare()` to create it on the server)."""
        return Exchange(self._async.exchange(name), self._run)

    exchanges = _blocking(AsyncClient.exchanges)
    request_reply = _blocking(AsyncClient.request_reply)

    def topic(self, name: str) -> Topic:
        """The handle of topic `name` (call `create()` to create it on the server)."""
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = Topic(self, self._async.topic(name))
        return t

    def subscribe(
        self,
        topic: str,
        group: str,
        handler: RecordHandler,
        *,
        stop_event: threading.Event | None = None,
        handle_signals: bool = True,
        **options: Any,
    ) -> SubscriberStats:
        """Consume `topic` as a member of `group` until Ctrl-C / SIGTERM or `stop_event`:
        the handler (called on the client's loop thread) per record, offsets committed
        after it; the member leaves the group at the end. Options as
        `AsyncClient.subscriber`."""
        subscriber = self._async.subscriber(topic, group, handler, **options)
        loop = self._loop.loop
        return run_until_stopped(
            loop,
            subscriber.run(),
            lambda: loop.call_soon_threadsafe(subscriber.stop),
            stop_event,
            handle_signals,
        )

    topics = _blocking(AsyncClient.topics)
    group = _blocking(AsyncClient.group)
    queues = _blocking(AsyncClient.queues)
    cluster = _blocking(AsyncClient.cluster)
    members = _blocking(AsyncClient.members)
    add_member = _blocking(AsyncClient.add_member)
    remove_member = _blocking(AsyncClient.remove_member)
    promote_member = _blocking(AsyncClient.promote_member)
    transfer_leader = _blocking(AsyncClient.transfer_leader)
    whoami = _blocking(AsyncClient.whoami)
    users = _blocking(AsyncClient.users)
    add_user = _blocking(AsyncClient.add_user)
    rotate_token = _blocking(AsyncClient.rotate_token)
    set_permissions = _blocking(AsyncClient.set_permissions)
    remove_user = _blocking(AsyncClient.remove_user)
    cluster_views = _blocking(AsyncClient.cluster_views)
    request = _blocking(AsyncClient.request)


__all__ = ["Client", "Queue", "Topic"]
