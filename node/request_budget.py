"""The bytes of request bodies one node holds at once, across its HTTP and binary ports.

Why: each port bounds one body (`max_body_bytes`) and one connection's requests in flight,
but a thousand clients each sending one large body at once would still hold gigabytes
(a body is read whole, then decoded into Python objects several times its size). One
budget for the whole node bounds that sum. HTTP asks `try_take` before reading a body and
answers `503 overloaded` with `Retry-After` when it does not fit; the binary port `take`s
before reading a frame's payload and waits, so that connection stops being read and TCP
pushes back on its client. Waiters are served in arrival order, and `try_take` never
jumps ahead of them, so a large frame is not starved by a stream of small requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class ByteBudget:
    """`limit_bytes` to hand out; every `take`/`try_take` is matched by one `give_back`."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"limit_bytes must be positive, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self.refused = 0  # try_take calls that did not fit
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, n: int) -> bool:
        # One request larger than the whole budget still goes through alone (the config
        # keeps max_body_bytes <= limit_bytes; this is only the last line).
        return self.used_bytes + n <= self.limit_bytes or self.used_bytes == 0

    def try_take(self, n: int) -> bool:
        """Take `n` bytes now if they fit and nobody waits before us; else False."""
        if self._waiters or not self._fits(n):
            self.refused += 1
            return False
        self.used_bytes += n
        return True

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting (in arrival order) until they fit."""
        if not self._waiters and self._fits(n):
            self.used_bytes += n
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(n)  # granted as we were cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):  # _grant may have dropped it already
                    self._waiters.remove(entry)
                self._grant()
            raise

    def give_back(self, n: int) -> None:
        """Return `n` bytes taken before; wake the waiters that now fit."""
        self.used_bytes -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            n, waiter = self._waiters[0]
            if waiter.done():  # cancelled; its task removes nothing more
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.used_bytes += n
            waiter.set_result(None)

    @property
    def waiting(self) -> int:
        """Requests waiting for room (binary frames whose payload is not read yet)."""
        return len(self._waiters)
