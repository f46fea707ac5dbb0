"""Group concurrent calls of one kind into shared requests: group commit, client side.

Why: a consumer running N handlers completes N messages per receive, and a producer
running N tasks sends N messages at once. One request per call costs N round trips and N
Raft commands for what one request can carry, which made the library's consumer loop about
four times slower than a loop that acks its batch at once, and `q.send` from 256 tasks
about six times slower than sending 32 per request. So calls are grouped the way a log
groups commits: at most `max_in_flight` requests of a group are on their way; calls made
meanwhile wait and then leave together in the next request. A lone call leaves at once
(`linger_s=0`, the default): nothing waits on a timer unless asked, as Kafka's `linger.ms`.

Each caller still gets its own answer. A request the server refuses as a whole because of
one item (`split_on`: a malformed receipt, a message over the size limit) is retried in
halves down to the bad items, so one caller's bad item never fails another's call.

Back-pressure: with `size_of` and `max_buffered_bytes`, a call waits while the items not
yet answered (waiting or on their way) hold more than that many bytes, so a producer
faster than the cluster is slowed instead of growing without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

SendGroup = Callable[[Sequence[T]], Awaitable[Sequence[R]]]


class GroupedCalls(Generic[T, R]):
    """`call(item)` answers what `send_group([..., item, ...])` answered for `item`."""

    def __init__(
        self,
        send_group: SendGroup[T, R],
        *,
        max_per_request: int,
        split_on: tuple[type[Exception], ...] = (),
        max_in_flight: int = 1,
        linger_s: float = 0.0,
        size_of: Callable[[T], int] | None = None,
        max_request_bytes: int | None = None,
        max_buffered_bytes: int | None = None,
    ) -> None:
        if max_per_request < 1:
            raise ValueError("max_per_request must be >= 1")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if linger_s < 0:
            raise ValueError("linger_s must be >= 0")
        self._send_group = send_group
        self._max = max_per_request
        self._split_on = split_on
        self._max_in_flight = max_in_flight
        self._linger_s = linger_s
        self._size_of = size_of
        self._max_request_bytes = max_request_bytes
        self._max_buffered_bytes = max_buffered_bytes
        self._waiting: list[tuple[T, asyncio.Future[R], int]] = []
        self._waiting_since = 0.0  # loop time the oldest waiting call arrived
        self._linger_timer: asyncio.TimerHandle | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self._buffered = 0  # bytes of the calls not yet answered
        self._space = asyncio.Event()
        self._pump_scheduled = False
        self.requests = 0  # requests sent, for stats and tests

    @property
    def in_flight(self) -> int:
        """Requests of this group on their way now."""
        return len(self._senders)

    @property
    def buffered_bytes(self) -> int:
        """Bytes (by `size_of`) of the calls not answered yet (0 without a buffer limit)."""
        return self._buffered

    async def call(self, item: T) -> R:
        size = self._size_of(item) if self._size_of is not None else 0
        limit = self._max_buffered_bytes
        # A call larger than the whole buffer still goes, alone: it waits for an empty one.
        while limit is not None and self._buffered and self._buffered + size > limit:
            self._space.clear()
            await self._space.wait()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        if not self._waiting:
            self._waiting_since = loop.time()
        self._waiting.append((item, fut, size))
        if limit is not None:  # counted only where a limit reads it (sends, not acks)
            self._buffered += size
            fut.add_done_callback(lambda _f: self._release(size))
        if not self._pump_scheduled:
            # Calls made in the same turn of the loop (a gather, a burst of handlers)
            # leave together; a lone call still leaves on the next turn, at once.
            self._pump_scheduled = True
            loop.call_soon(self._scheduled_pump)
        return await fut

    def cancel_all(self) -> None:
        """Cancel every request on its way and every waiting call (client shutting down)."""
        for task in list(self._senders):
            task.cancel()
        self._cancel_waiting()

    def _release(self, size: int) -> None:
        self._buffered -= size
        self._space.set()

    def _cancel_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        for _item, fut, _size in waiting:
            fut.cancel()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        self._pump()

    def _pump(self) -> None:
        """Start requests for the waiting calls while fewer than `max_in_flight` are out."""
        while self._waiting and len(self._senders) < self._max_in_flight:
            if self._lingering():
                return
            batch = self._take_batch()
            task = asyncio.ensure_future(self._send_batch(batch))
            self._senders.add(task)
            task.add_done_callback(self._sender_done)

    def _lingering(self) -> bool:
        """True (and a timer set) while a partial batch should wait for more calls."""
        if self._linger_s <= 0 or len(self._waiting) >= self._max:
            return False
        loop = asyncio.get_running_loop()
        left = self._waiting_since + self._linger_s - loop.time()
        if left <= 0:
            return False
        if self._linger_timer is None:
            self._linger_timer = loop.call_later(left, self._linger_over)
        return True

    def _linger_over(self) -> None:
        self._linger_timer = None
        self._pump()

    def _take_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        count, total = 0, 0
        cap = self._max_request_bytes
        for _item, _fut, size in self._waiting[: self._max]:
            if count and cap is not None and total + size > cap:
                break
            count += 1
            total += size
        batch = [(item, fut) for item, fut, _size in self._waiting[:count]]
        del self._waiting[:count]
        if self._waiting:
            self._waiting_since = asyncio.get_running_loop().time()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        return batch

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        self._senders.discard(task)
        if task.cancelled():
            # Cancelled with the loop or by cancel_all: nobody will send the calls still
            # waiting, so their callers must not wait forever.
            self._cancel_waiting()
            return
        self._pump()

    async def _send_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._send(batch)
        finally:
            for _item, fut in batch:  # left unanswered only when this task was cancelled
                fut.cancel()

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if not fut.done()]  # skip callers gone
        if not live:
            return
        try:
            self.requests += 1
            results = await self._send_group([item for item, _fut in live])
        except self._split_on as exc:
            if len(live) == 1:
                _settle(live[0][1], error=exc)
                return
            # Find whose item the server refused by halves: a bad item among 256 costs
            # 16 more requests, not 256 (the whole request was refused: nothing applied).
            half = len(live) // 2
            await self._send(live[:half])
            await self._send(live[half:])
            return
        except Exception as exc:
            for _item, fut in live:
                _settle(fut, error=exc)
            return
        if len(results) != len(live):
            error = RuntimeError(f"{len(results)} answers for {len(live)} grouped calls")
            for _item, fut in live:
                _settle(fut, error=error)
            return
        for (_item, fut), result in zip(live, results, strict=True):
            _settle(fut, value=result)


def _settle(
    fut: asyncio.Future[R], *, value: R | None = None, error: Exception | None = None
) -> None:
    if fut.done():  # the caller gave up waiting (cancelled)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)  # type: ignore[arg-type]


__all__ = ["GroupedCalls", "SendGroup"]
