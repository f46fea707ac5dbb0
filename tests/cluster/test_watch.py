"""await_or_abandon: the timer-armed wait the client and the chaos workload share."""

from __future__ import annotations

import asyncio

import pytest

from cluster.watch import Abandoned, await_or_abandon


async def test_an_answer_before_the_first_check_never_checks() -> None:
    calls = 0

    async def check() -> str | None:
        nonlocal calls
        calls += 1
        return "elsewhere"

    assert await await_or_abandon(asyncio.sleep(0.01, result="ok"), check, 0.2) == "ok"
    await asyncio.sleep(0.3)  # the disarmed timer must not fire later either
    assert calls == 0


async def test_a_verdict_cancels_the_attempt_and_raises_abandoned() -> None:
    answers = iter([None, None, "node 2"])
    cancelled = asyncio.Event()

    async def attempt() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    async def check() -> str | None:
        return next(answers)

    with pytest.raises(Abandoned) as info:
        await await_or_abandon(attempt(), check, 0.05, growth=1.0)
    assert info.value.reason == "node 2" and 0.1 <= info.value.waited_s < 5
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # our cancel request was withdrawn


async def test_a_slow_attempt_without_a_verdict_is_waited_for() -> None:
    checks = 0

    async def check() -> None:
        nonlocal checks
        checks += 1

    assert await await_or_abandon(asyncio.sleep(0.3, result=7), check, 0.05) == 7
    assert checks >= 2  # at 0.05 s, then 0.15 s: doubling intervals


async def test_a_failing_check_is_no_reason_to_give_up() -> None:
    async def check() -> str | None:
        raise RuntimeError("probe failed")

    assert await await_or_abandon(asyncio.sleep(0.2, result="ok"), check, 0.02) == "ok"


async def test_someone_elses_cancel_still_cancels() -> None:
    async def check() -> None:
        return None

    waiter = asyncio.ensure_future(await_or_abandon(asyncio.sleep(30), check, 0.01))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
