"""Group the single acks of one queue handle into shared ack requests.

Why: a consumer running N handlers acks N messages per receive. One request per ack
costs N HTTP round trips and N Raft commands for what one `acknowledge_many` carries, and
that made the library's own consumer loop about six times slower than a loop that acks
its batch at once. So single acks are grouped the way a log groups commits: at most one
ack request of a handle is on its way; acks made meanwhile wait for it and then leave
together in the next request. A lone ack leaves at once: nothing waits on a timer.

Each caller still gets its own answer: True, or False when its receipt was stale. A
request the server refuses as a whole (400/413: one malformed receipt spoils the batch)
is retried one ack per request, so one caller's bad receipt never fails another's ack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from cluster.errors import BadRequest, TooLarge
from cluster.message import AckResult

#: Acks per request at most: the API's default batch limit is 1,000.
MAX_ACKS_PER_REQUEST = 500

SendAcks = Callable[[Sequence[Any]], Awaitable[AckResult]]


class AckBatcher:
    """Sends `ack(ref)` calls through `send_acks` (an `acknowledge_many`), grouped."""

    def __init__(
        self,
        send_acks: SendAcks,
        receipt_of: Callable[[Any], str],
        max_per_request: int = MAX_ACKS_PER_REQUEST,
    ) -> None:
        if max_per_request < 1:
            raise ValueError("max_per_request must be >= 1")
        self._send_acks = send_acks
        self._receipt_of = receipt_of
        self._max = max_per_request
        self._waiting: list[tuple[Any, str, asyncio.Future[bool]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.requests = 0  # ack requests sent, for tests and stats

    async def ack(self, ref: Any) -> bool:
        """Ack one message; True if acked, False if its receipt was stale."""
        receipt = self._receipt_of(ref)  # a bad reference fails here, alone
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((ref, receipt, fut))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_waiting())
        return await fut

    async def _send_waiting(self) -> None:
        batch: list[tuple[Any, str, asyncio.Future[bool]]] = []
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
            for _ref, _receipt, fut in batch + self._waiting:
                fut.cancel()
            self._waiting.clear()

    async def _send(self, batch: list[tuple[Any, str, asyncio.Future[bool]]]) -> None:
        live = [item for item in batch if not item[2].done()]
        if not live:
            return
        try:
            self.requests += 1
            result = await self._send_acks([ref for ref, _r, _f in live])
        except (BadRequest, TooLarge) as exc:
            if len(live) == 1:
                _settle(live[0][2], error=exc)
                return
            for item in live:  # find whose receipt the server refused
                await self._send([item])
            return
        except Exception as exc:
            for _ref, _receipt, fut in live:
                _settle(fut, error=exc)
            return
        stale = set(result.stale)
        for _ref, receipt, fut in live:
            _settle(fut, value=receipt not in stale)


def _settle(
    fut: asyncio.Future[bool], *, value: bool = False, error: Exception | None = None
) -> None:
    if fut.done():  # the caller gave up waiting (cancelled)
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


__all__ = ["MAX_ACKS_PER_REQUEST", "AckBatcher"]
