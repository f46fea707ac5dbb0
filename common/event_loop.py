"""Picks the event loop every raftq process runs on: uvloop where it is installed.

Why uvloop: a node spends most of its CPU in the event loop's own work (socket reads and
writes, callbacks, timers) for every request, heartbeat and peer frame; uvloop (libuv,
written in Cython) does that work in a fraction of the time of asyncio's pure-Python loop
(`raftq bench`, the issue's A/B). `RAFTQ_EVENT_LOOP=asyncio` selects the standard loop, for
asyncio's debug mode or a profiler that needs it; so does a platform without uvloop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV_VAR = "RAFTQ_EVENT_LOOP"


def loop_kind() -> str:
    """ "uvloop" or "asyncio": what `new_event_loop` and `run` use in this process."""
    if os.environ.get(ENV_VAR, "uvloop").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind (not set as the thread's current loop)."""
    if loop_kind() == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a loop of the chosen kind."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


__all__ = ["ENV_VAR", "loop_kind", "new_event_loop", "run"]
