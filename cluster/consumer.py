"""The consumer loop: receive, run a handler per message, keep its lease alive, ack or nack.

Why a loop in the library: the subtle parts of at-least-once consuming are all here.
A slow handler must not lose its lease (the message would be handed to a second worker),
so the lease is extended every `visibility_timeout / 3` (at the latest /2) while the handler
runs, by one keeper task for all running handlers, in one request per round. A failing
handler must not hot-loop on a poison message, so a nack carries an exponential delay
(capped). Stopping must not drop work: stop() stops receiving, lets running handlers
finish and ack, and hands back (nack, no delay) anything received after the stop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from cluster.errors import ClusterUnavailable, RaftqError, ServerError
from cluster.message import AckResult, Message

log = structlog.get_logger("raftq.consumer")

Handler = Callable[[Message], Awaitable[Any] | Any]
#: How a handled message is completed (default: ack). Gets the message and the handler's
#: result; returns False when the delivery went stale (someone else has the message now).
Completion = Callable[[Message, Any], Awaitable[bool]]
DEFAULT_VISIBILITY_TIMEOUT_S = 30.0
#: Receipts per extend request (the node's default batch limit).
MAX_EXTEND_BATCH = 1000


@dataclass(slots=True)
class ConsumerStats:
    """What one consumer run did (returned by `consume()`)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    extended: int = 0
    stale: int = 0
    returned: int = 0


class ConsumedQueue(Protocol):
    """What the loop needs of the queue it consumes; `cluster.client.AsyncQueue` is one.

    Declared here so that this module need not import the client, which imports it.
    """

    name: str
    #: The loops running on this queue handle (each adds itself while it runs), so that
    #: the handle's `stop()` reaches them.
    _consumers: set[Consumer]

    async def info(self) -> dict[str, Any]: ...

    async def receive(
        self, max: int, *, wait_s: float = ..., visibility_timeout_s: float | None = ...
    ) -> list[Message]: ...

    async def acknowledge(self, message: Message) -> bool: ...

    async def retry(self, message: Message, delay_s: float = ...) -> bool: ...

    async def retry_many(self, messages: Iterable[Message], delay_s: float = ...) -> AckResult: ...

    async def extend_many(
        self, messages: Iterable[Message], visibility_timeout_s: float
    ) -> AckResult: ...


def retry_delay_s(receive_count: int, base_s: float, max_s: float) -> float:
    """Nack delay after a failed delivery: base * 2^(receive_count-1), capped at max_s."""
    exponent = max(0, min(receive_count - 1, 30))
    return min(max_s, base_s * (2**exponent))


class Consumer:
    """Runs `handler` on the messages of one queue with `concurrency` parallel handlers.

    A handler's slot is free again once the handler returns: the next message runs while
    the finished one's ack (or transaction) is on its way, and at most `concurrency`
    completions wait at once, so up to 2 x `concurrency` messages are leased.

    One receive loop asks for all the free slots. While the queue is drained (its last
    receive came back short), `receivers - 1` standby loops (default 1) keep a receive of
    one slot each waiting at the leader too: while one receive is on its way back, another
    waits there, and the next send to the queue carries it in its own Raft entry (a
    message then reaches the consumer with its sender's commit, instead of after a receive
    round of its own). While the queue has a backlog the standbys rest, so a drain takes
    one big receive at a time instead of several small ones, each a Raft entry (W3 of the
    peer benchmark, alternating runs: 9.5-13.1k msgs/s with two equal receivers against
    13.7-20.5k with one).

    Create with `queue.consumer(handler, ...)` and `await consumer.run()`, or just
    `await queue.consume(handler, ...)`. `stop()` (or SIGINT/SIGTERM when
    `handle_signals` and running in the main thread, or `stop_event`) ends it cleanly; a
    second stop request cancels handlers still running (their messages come back after
    the lease expires).
    """

    def __init__(
        self,
        queue: ConsumedQueue,
        handler: Handler,
        *,
        concurrency: int = 1,
        visibility_timeout_s: float | None = None,
        poll_wait_s: float = 2.0,
        retry_base_delay_s: float = 1.0,
        retry_max_delay_s: float = 300.0,
        stop_event: asyncio.Event | None = None,
        handle_signals: bool = True,
        complete: Completion | None = None,
        extend_leases: bool = True,
        receivers: int = 2,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if receivers < 1:
            raise ValueError("receivers must be >= 1")
        if visibility_timeout_s is not None and visibility_timeout_s <= 0:
            raise ValueError("visibility_timeout_s must be > 0")
        self.queue = queue
        self.handler = handler
        self.concurrency = concurrency
        self.receivers = min(receivers, concurrency)
        self.visibility_timeout_s = visibility_timeout_s
        self.poll_wait_s = poll_wait_s
        self.retry_base_delay_s = retry_base_delay_s
        self.retry_max_delay_s = retry_max_delay_s
        self.stats = ConsumerStats()
        self._complete: Completion = complete or self._ack
        self.extend_leases = extend_leases
        self._external_stop = stop_event
        self._handle_signals = handle_signals
        self._stop: asyncio.Event | None = None
        self._stop_requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # running handlers' messages by id, each with the loop time of its next extension
        self._leases: dict[str, list[Any]] = {}
        self._completing: asyncio.Semaphore | None = None  # completions on their way
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return (
            f"Consumer(queue={self.queue.name!r}, concurrency={self.concurrency}, "
            f"running={len(self._tasks)}, stats={self.stats})"
        )

    # --- stopping ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop receiving; running handlers finish. Called twice: cancel them too."""
        self._stop_requests += 1
        if self._stop is not None:
            self._stop.set()
        if self._stop_requests >= 2:
            for task in list(self._tasks):
                task.cancel()

    def stop_threadsafe(self) -> None:
        """`stop()` from another thread (e.g. a signal handler of a sync program)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.stop)
        else:
            self._stop_requests += 1

    @property
    def stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    @contextlib.contextmanager
    def _signals(self) -> Any:
        installed: list[tuple[signal.Signals, Any]] = []
        if self._handle_signals and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    previous = signal.getsignal(sig)
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append((sig, previous))
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            yield
        finally:
            for sig, previous in installed:
                asyncio.get_running_loop().remove_signal_handler(sig)
                with contextlib.suppress(TypeError, ValueError):
                    signal.signal(sig, previous)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("consumer.signal", signal=sig.name, queue=self.queue.name)
        self.stop()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> ConsumerStats:
        """Consume until stopped; returns the stats once every running handler is done."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requests:
            self._stop.set()
        vt = self.visibility_timeout_s
        if vt is None:
            info = await self.queue.info()
            vt = float(info.get("visibility_timeout_s") or DEFAULT_VISIBILITY_TIMEOUT_S)
        slots = asyncio.Semaphore(self.concurrency)
        self._completing = asyncio.Semaphore(self.concurrency)
        watcher = None
        if self._external_stop is not None:
            watcher = asyncio.ensure_future(self._watch(self._external_stop))
        keeper = asyncio.ensure_future(self._keep_leases(vt)) if self.extend_leases else None
        self.queue._consumers.add(self)
        log.info("consumer.started", queue=self.queue.name, concurrency=self.concurrency)
        try:
            with self._signals():
                await self._receive_loops(slots, vt)
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for helper in (watcher, keeper):
                if helper is not None:
                    helper.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self.queue._consumers.discard(self)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            log.info("consumer.stopped", queue=self.queue.name, stats=str(self.stats))
        return self.stats

    async def _watch(self, event: asyncio.Event) -> None:
        await event.wait()
        self.stop()

    async def _acquire(self, slots: asyncio.Semaphore) -> bool:
        """Wait for a free handler slot; False if a stop came first."""
        assert self._stop is not None
        if self._stop.is_set():
            return False
        acquire = asyncio.ensure_future(slots.acquire())
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if acquire.done() and not acquire.cancelled():
            if self._stop.is_set():
                slots.release()
                return False
            return True
        acquire.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acquire
            slots.release()  # it was granted while being cancelled
        return False

    async def _receive_loops(self, slots: asyncio.Semaphore, vt: float) -> None:
        """Run the main receive loop and the standbys (see the class docstring); the first
        one to fail stops the others, and its error is raised as it is (not wrapped in an
        ExceptionGroup)."""
        standbys = self.receivers - 1
        drained = asyncio.Event()
        drained.set()  # until a receive says otherwise: a consumer may start on an idle queue
        try:
            async with asyncio.TaskGroup() as loops:
                loops.create_task(
                    self._receive_loop(slots, vt, self.concurrency - standbys, drained)
                )
                for _ in range(standbys):
                    loops.create_task(self._receive_loop(slots, vt, 1, drained, standby=True))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    async def _receive_loop(
        self,
        slots: asyncio.Semaphore,
        vt: float,
        share: int,
        drained: asyncio.Event,
        *,
        standby: bool = False,
    ) -> None:
        """Receive for up to `share` free slots at a time, hand each message to a handler.
        The main loop tells whether the queue is `drained`; a standby only receives then."""
        failures = 0
        while (not standby or await self._until_drained(drained)) and await self._acquire(slots):
            free = 1
            while free < share and not slots.locked():
                await slots.acquire()
                free += 1
            try:
                batch = await self.queue.receive(
                    free, wait_s=self.poll_wait_s, visibility_timeout_s=vt
                )
                failures = 0
            except (ClusterUnavailable, ServerError) as exc:
                # A consumer outlives outages: log, wait a little, try again.
                failures += 1
                for _ in range(free):
                    slots.release()
                log.warning("consumer.receive_unavailable", queue=self.queue.name, error=str(exc))
                await self._sleep_unless_stopped(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            except BaseException:
                for _ in range(free):
                    slots.release()
                raise
            for _ in range(free - len(batch)):
                slots.release()
            if not standby:
                if len(batch) < free:
                    drained.set()
                else:
                    drained.clear()
            self.stats.received += len(batch)
            if self.stopping:
                await self._hand_back(batch)
                for _ in batch:
                    slots.release()
                break
            for msg in batch:
                task = asyncio.ensure_future(self._handle(msg, slots, vt))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _until_drained(self, drained: asyncio.Event) -> bool:
        """Wait until the queue is drained; False if a stop came first."""
        assert self._stop is not None
        if not drained.is_set():
            waiters = {
                asyncio.ensure_future(drained.wait()),
                asyncio.ensure_future(self._stop.wait()),
            }
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        return not self._stop.is_set()

    async def _sleep_unless_stopped(self, delay_s: float) -> None:
        assert self._stop is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay_s)

    async def _hand_back(self, batch: list[Message]) -> None:
        """Messages received after a stop: make them visible again right away."""
        if not batch:
            return
        try:
            await self.queue.retry_many(batch, delay_s=0)
            self.stats.returned += len(batch)
        except RaftqError as exc:
            log.warning("consumer.hand_back_failed", queue=self.queue.name, error=str(exc))

    async def _call_handler(self, msg: Message) -> Any:
        if inspect.iscoroutinefunction(self.handler):
            return await self.handler(msg)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="raftq-handler"
            )
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, functools.partial(self.handler, msg))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _free_slot(self, slots: asyncio.Semaphore) -> asyncio.Semaphore:
        """The handler is done: hand its slot to the next message while its ack (or
        transaction) is on its way, so receiving overlaps completing instead of waiting
        for it. At most `concurrency` completions wait at once: when they stall (a
        leader change), the slots stay taken and receiving stops."""
        completing = self._completing
        assert completing is not None
        await completing.acquire()
        slots.release()
        return completing

    async def _handle(self, msg: Message, slots: asyncio.Semaphore, vt: float) -> None:
        leases = self._leases
        if self.extend_leases:
            leases[msg.id] = [msg, asyncio.get_running_loop().time() + _extend_every_s(vt)]
        held: asyncio.Semaphore = slots  # released when this task ends
        try:
            try:
                result = await self._call_handler(msg)
            except Exception as exc:
                leases.pop(msg.id, None)
                held = await self._free_slot(slots)
                delay_s = retry_delay_s(
                    msg.receive_count, self.retry_base_delay_s, self.retry_max_delay_s
                )
                self.stats.failed += 1
                log.warning(
                    "consumer.handler_failed",
                    queue=self.queue.name,
                    message_id=msg.id,
                    receive_count=msg.receive_count,
                    retry_in_s=delay_s,
                    error=repr(exc),
                )
                try:
                    if not await self.queue.retry(msg, delay_s=delay_s):
                        self.stats.stale += 1
                except RaftqError as err:
                    log.warning("consumer.nack_failed", message_id=msg.id, error=str(err))
                return
            leases.pop(msg.id, None)
            held = await self._free_slot(slots)
            try:
                done = await self._complete(msg, result)
                if done:
                    self.stats.succeeded += 1
                else:
                    self.stats.stale += 1
                    log.warning("consumer.ack_stale", queue=self.queue.name, message_id=msg.id)
            except RaftqError as err:
                log.warning("consumer.ack_failed", message_id=msg.id, error=str(err))
        finally:
            leases.pop(msg.id, None)
            held.release()

    async def _ack(self, msg: Message, _result: Any) -> bool:
        """The default completion."""
        return await self.queue.acknowledge(msg)

    async def _keep_leases(self, vt: float) -> None:
        """Extend the lease of every message whose handler has held it for vt/3 since it
        was received or last extended, all in one request per round.

        Why one task for all the handlers: a task per message, created and cancelled
        around every handler, cost a fifth of a draining client's CPU for extensions that
        almost never happen (handlers are mostly far shorter than vt/3). Rounds come every
        vt/6, so a lease is extended at most vt/2 after its last start.
        """
        every_s = _extend_every_s(vt)
        loop = asyncio.get_running_loop()
        leases = self._leases
        while True:
            await asyncio.sleep(every_s / 2)
            now = loop.time()
            due = [entry for entry in leases.values() if entry[1] <= now]
            for entry in due:
                entry[1] = now + every_s
            for start in range(0, len(due), MAX_EXTEND_BATCH):
                chunk = [entry[0] for entry in due[start : start + MAX_EXTEND_BATCH]]
                try:
                    result = await self.queue.extend_many(chunk, vt)
                except RaftqError as err:
                    log.warning("consumer.extend_failed", count=len(chunk), error=str(err))
                    continue
                stale = set(result.stale)
                for msg in chunk:
                    if msg.receipt not in stale:
                        self.stats.extended += 1
                    elif leases.pop(msg.id, None) is not None:  # lost, not just finished
                        log.warning("consumer.lease_lost", queue=self.queue.name, message_id=msg.id)


def _extend_every_s(vt: float) -> float:
    """How long a handler holds a message before its lease is extended."""
    return max(0.05, vt / 3)


__all__ = [
    "Completion",
    "ConsumedQueue",
    "Consumer",
    "ConsumerStats",
    "Handler",
    "retry_delay_s",
]
