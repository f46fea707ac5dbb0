"""GroupedCalls: concurrent calls share requests, each caller gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cluster.errors import BadRequest, ClusterUnavailable
from cluster.grouping import GroupedCalls


class FakeServer:
    """Records each request's items; answers item.upper(), or refuses the request as a
    whole when it holds a refused item; a request waits for `gate` when one is set."""

    def __init__(self, refuse: Sequence[str] = ()) -> None:
        self.requests: list[list[str]] = []
        self.refuse = set(refuse)
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.error: Exception | None = None
        self.short = False

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.requests.append(list(items))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.refuse.intersection(items):
            raise BadRequest("every receipt must be a non-empty string")
        answers = [item.upper() for item in items]
        return answers[:-1] if self.short else answers


def _grouped(server: FakeServer, max_per_request: int = 500) -> GroupedCalls[str, str]:
    return GroupedCalls(server, max_per_request=max_per_request, split_on=(BadRequest,))


async def _start_first(calls: GroupedCalls[str, str], server: FakeServer) -> asyncio.Task[str]:
    """One call whose request is on its way (held at the server's gate)."""
    server.gate = asyncio.Event()
    first = asyncio.ensure_future(calls.call("r0"))
    await server.started.wait()
    return first


async def test_a_lone_call_is_sent_at_once() -> None:
    server = FakeServer()
    assert await _grouped(server).call("r1") == "R1"
    assert server.requests == [["r1"]]


async def test_calls_made_while_a_request_is_out_share_the_next_one() -> None:
    server = FakeServer()
    calls = _grouped(server)
    first = await _start_first(calls, server)
    later = [asyncio.ensure_future(calls.call(r)) for r in ("r1", "r2", "r3")]
    await asyncio.sleep(0)
    server.gate.set()
    assert await first == "R0"
    assert [await t for t in later] == ["R1", "R2", "R3"]  # each its own answer
    assert server.requests == [["r0"], ["r1", "r2", "r3"]]
    assert calls.requests == 2


async def test_a_request_carries_at_most_max_per_request() -> None:
    server = FakeServer()
    server.gate = asyncio.Event()
    calls = _grouped(server, max_per_request=2)
    tasks = [asyncio.ensure_future(calls.call(f"r{i}")) for i in range(5)]
    await asyncio.sleep(0)
    server.gate.set()
    assert await asyncio.gather(*tasks) == ["R0", "R1", "R2", "R3", "R4"]
    assert server.requests == [["r0", "r1"], ["r2", "r3"], ["r4"]]


async def test_a_request_refused_whole_is_retried_in_halves() -> None:
    """One bad item must not fail the other callers."""
    server = FakeServer(refuse=["bad"])
    calls = _grouped(server)
    first = await _start_first(calls, server)
    tasks = [asyncio.ensure_future(calls.call(r)) for r in ("r1", "bad", "r2")]
    await asyncio.sleep(0)
    server.gate.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert results[0] == "R0" and results[1] == "R1" and results[3] == "R2"
    assert isinstance(results[2], BadRequest)
    assert server.requests == [["r0"], ["r1", "bad", "r2"], ["r1"], ["bad", "r2"], ["bad"], ["r2"]]


async def test_one_bad_item_among_many_costs_a_few_requests_not_one_each() -> None:
    server = FakeServer(refuse=["bad"])
    calls = _grouped(server)
    first = await _start_first(calls, server)
    items = [f"r{i}" for i in range(1, 64)]
    items.insert(40, "bad")
    tasks = [asyncio.ensure_future(calls.call(r)) for r in items]
    await asyncio.sleep(0)
    server.gate.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert isinstance(results[41], BadRequest)
    assert [r for i, r in enumerate(results) if i != 41] == ["R0"] + [
        i.upper() for i in items if i != "bad"
    ]
    assert len(server.requests) <= 2 + 2 * 6, server.requests


async def test_other_errors_fail_every_call_of_the_request() -> None:
    server = FakeServer()
    calls = _grouped(server)
    first = await _start_first(calls, server)
    tasks = [asyncio.ensure_future(calls.call(r)) for r in ("r1", "r2")]
    await asyncio.sleep(0)
    server.error = ClusterUnavailable(5.0, {"http://127.0.0.1:1": "connection refused"})
    server.gate.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert all(isinstance(r, ClusterUnavailable) for r in results)
    assert server.requests == [["r0"], ["r1", "r2"]]  # not split: not the items' fault
    server.error = None
    assert await calls.call("r3") == "R3"  # the next call starts a new request


async def test_a_wrong_number_of_answers_fails_the_calls_instead_of_misrouting() -> None:
    server = FakeServer()
    server.short = True
    with pytest.raises(RuntimeError, match="answers for"):
        await _grouped(server).call("r1")


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    server = FakeServer()
    calls = _grouped(server)
    first = await _start_first(calls, server)
    quitter = asyncio.ensure_future(calls.call("r1"))
    stayer = asyncio.ensure_future(calls.call("r2"))
    await asyncio.sleep(0)
    quitter.cancel()
    server.gate.set()
    assert await first == "R0" and await stayer == "R2"
    assert server.requests == [["r0"], ["r2"]]  # the abandoned call was never sent


async def test_cancelling_the_sender_releases_every_waiter() -> None:
    """A client shutting down cancels the sending task: no caller may wait forever."""
    server = FakeServer()
    calls = _grouped(server)
    first = await _start_first(calls, server)  # the gate is never opened: it hangs
    queued = asyncio.ensure_future(calls.call("r1"))
    await asyncio.sleep(0)
    assert calls.in_flight == 1
    calls.cancel_all()
    for task in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    server.gate.set()
    assert await calls.call("r2") == "R2"


def test_max_per_request_must_be_positive() -> None:
    with pytest.raises(ValueError):
        GroupedCalls(FakeServer(), max_per_request=0)


async def test_cancelling_a_request_task_releases_the_calls_waiting_behind_it() -> None:
    """The loop shutting down cancels the request tasks themselves."""
    server = FakeServer()
    calls = _grouped(server)
    first = await _start_first(calls, server)
    queued = asyncio.ensure_future(calls.call("r1"))
    await asyncio.sleep(0)
    next(iter(calls._senders)).cancel()
    for task in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_max_in_flight_requests_go_out_together_and_the_rest_wait() -> None:
    server = FakeServer()
    server.gate = asyncio.Event()
    calls = GroupedCalls(server, max_per_request=1, max_in_flight=2)
    tasks = [asyncio.ensure_future(calls.call(f"r{i}")) for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert server.requests == [["r0"], ["r1"]] and calls.in_flight == 2
    server.gate.set()
    assert await asyncio.gather(*tasks) == ["R0", "R1", "R2"]
    assert server.requests == [["r0"], ["r1"], ["r2"]]


async def test_linger_holds_a_partial_batch_for_company_but_not_a_full_one() -> None:
    server = FakeServer()
    calls = GroupedCalls(server, max_per_request=3, linger_s=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(calls.call("r0"))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(calls.call("r1"))
    assert [await first, await second] == ["R0", "R1"]
    assert loop.time() - started >= 0.19  # waited out the linger from the first call
    assert server.requests == [["r0", "r1"]]
    started = loop.time()
    full = [asyncio.ensure_future(calls.call(f"f{i}")) for i in range(3)]
    assert await asyncio.gather(*full) == ["F0", "F1", "F2"]
    assert loop.time() - started < 0.15  # a full batch does not linger
    assert server.requests[-1] == ["f0", "f1", "f2"]


async def test_requests_are_cut_at_max_request_bytes() -> None:
    server = FakeServer()
    calls = GroupedCalls(server, max_per_request=100, size_of=len, max_request_bytes=6)
    items = ["aaa", "bbb", "cc", "dddddddd", "e"]
    assert await asyncio.gather(*(calls.call(i) for i in items)) == [i.upper() for i in items]
    # an item larger than the cap still goes, alone
    assert server.requests == [["aaa", "bbb"], ["cc"], ["dddddddd"], ["e"]]


async def test_callers_wait_while_the_buffer_is_full() -> None:
    server = FakeServer()
    server.gate = asyncio.Event()
    calls = GroupedCalls(server, max_per_request=10, size_of=len, max_buffered_bytes=8)
    held = [asyncio.ensure_future(calls.call(i)) for i in ("aaaa", "bbbb")]
    await server.started.wait()
    assert calls.buffered_bytes == 8
    blocked = asyncio.ensure_future(calls.call("cc"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not blocked.done() and server.requests == [["aaaa", "bbbb"]]  # not even queued
    server.gate.set()
    assert await asyncio.gather(*held, blocked) == ["AAAA", "BBBB", "CC"]
    assert calls.buffered_bytes == 0


def test_options_are_checked() -> None:
    for bad in ({"max_in_flight": 0}, {"linger_s": -1.0}):
        with pytest.raises(ValueError):
            GroupedCalls(FakeServer(), max_per_request=1, **bad)
