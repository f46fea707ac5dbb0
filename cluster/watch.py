"""Await a request while checking, now and then, whether it is still worth waiting for.

Why: a request to a leader that hangs (SIGSTOP, a VM stall) would otherwise wait out its
whole timeout, long after an election named another leader. Both the client's router and
the chaos workload wait this way; only what they ask differs (the cluster, or the chaos
monitor).

Why a timer and not a second task: this wraps every request, and nearly every request
answers before the first check is due. The request is awaited in the caller's own task,
with one `call_later` handle armed beside it (a few µs); only a request still unanswered
when the timer fires gets a watcher task, which cancels the waiting task if the check
says to give up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Abandoned(Exception, Generic[R]):
    """The awaited request was given up: `reason` is what the check returned."""

    def __init__(self, reason: R, waited_s: float) -> None:
        super().__init__(f"abandoned after {waited_s:.1f}s: {reason}")
        self.reason = reason
        self.waited_s = waited_s


async def await_or_abandon(
    attempt: Awaitable[T],
    check: Callable[[], Awaitable[R | None]],
    first_check_s: float,
    growth: float = 2.0,
) -> T:
    """`await attempt`; if it is still pending after `first_check_s`, await `check()`, then
    again after `growth` times the previous interval, and so on. When a check returns
    something other than None, the attempt is cancelled and `Abandoned(that)` raised.

    A cancellation from anyone else still propagates as CancelledError.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None, "await_or_abandon runs inside a task"
    started = loop.time()
    verdict: list[R] = []
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        interval = first_check_s
        while True:
            try:
                reason = await check()
            except Exception:  # a failed check is no reason to give up
                reason = None
            if reason is not None:
                verdict.append(reason)
                task.cancel()
                return
            interval *= growth
            await asyncio.sleep(interval)

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(first_check_s, start_watching)
    try:
        return await attempt
    except asyncio.CancelledError:
        if verdict and task.uncancel() == 0:
            raise Abandoned(verdict[0], loop.time() - started) from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
