"""Group concurrent calls of one kind into shared requests: group commit, client side.

Why: a consumer running N handlers completes N messages per receive. One request per
completion costs N HTTP round trips and N Raft commands for what one request can carry,
which made the library's consumer loop about four times slower than a loop that acks its
batch at once. So completions are grouped the way a log groups commits: at most one
request of a group is on its way; calls made meanwhile wait for it and then leave together
in the next request. A lone call leaves at once: nothing waits on a timer.

Each caller still gets its own answer. A request the server refuses as a whole because of
one item (`split_on`: a malformed receipt, a stale one in a transaction) is retried one
item per request, so one caller's bad item never fails another's call.
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
    ) -> None:
        if max_per_request < 1:
            raise ValueError("max_per_request must be >= 1")
        self._send_group = send_group
        self._max = max_per_request
        self._split_on = split_on
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.requests = 0  # requests sent, for stats and tests

    async def call(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, fut))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_waiting())
        return await fut

    async def _send_waiting(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max]
                del self._waiting[: self._max]
                await self._send(batch)
                batch = []
        finally:
            self._sender = None
            # Left over only when this task was cancelled (its loop or client shutting
            # down): nobody will send these, so their callers must not wait forever.
            for _item, fut in batch + self._waiting:
                fut.cancel()
            self._waiting.clear()

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
            for one in live:  # find whose item the server refused
                await self._send([one])
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
