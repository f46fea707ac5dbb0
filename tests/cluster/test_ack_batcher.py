"""AckBatcher: single acks grouped into shared requests, each caller with its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from cluster.ack_batcher import AckBatcher
from cluster.errors import BadRequest, ClusterUnavailable
from cluster.message import AckResult


class FakeAcks:
    """Records each request's receipts; a request waits for `gate` when one is set."""

    def __init__(self, stale: Sequence[str] = (), refuse: Sequence[str] = ()) -> None:
        self.requests: list[list[str]] = []
        self.stale = set(stale)
        self.refuse = set(refuse)
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, refs: Sequence[str]) -> AckResult:
        self.requests.append(list(refs))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.refuse.intersection(refs):
            raise BadRequest("every receipt must be a non-empty string")
        stale = tuple(r for r in refs if r in self.stale)
        return AckResult(len(refs) - len(stale), stale)


def _batcher(fake: FakeAcks, max_per_request: int = 500) -> AckBatcher:
    return AckBatcher(fake, receipt_of=str, max_per_request=max_per_request)


async def test_a_lone_ack_is_sent_at_once() -> None:
    fake = FakeAcks()
    assert await _batcher(fake).ack("r1") is True
    assert fake.requests == [["r1"]]


async def test_acks_made_while_a_request_is_out_share_the_next_one() -> None:
    fake = FakeAcks(stale=["r3"])
    fake.gate = asyncio.Event()
    acks = _batcher(fake)
    first = asyncio.ensure_future(acks.ack("r1"))
    await fake.started.wait()
    later = [asyncio.ensure_future(acks.ack(r)) for r in ("r2", "r3", "r4")]
    await asyncio.sleep(0)
    fake.gate.set()
    assert await first is True
    assert [await t for t in later] == [True, False, True]  # r3 was stale: only r3 says so
    assert fake.requests == [["r1"], ["r2", "r3", "r4"]]
    assert acks.requests == 2


async def test_a_request_carries_at_most_max_per_request() -> None:
    fake = FakeAcks()
    fake.gate = asyncio.Event()
    acks = _batcher(fake, max_per_request=2)
    tasks = [asyncio.ensure_future(acks.ack(f"r{i}")) for i in range(5)]
    await asyncio.sleep(0)
    fake.gate.set()
    assert all(await asyncio.gather(*tasks))
    assert fake.requests == [["r0", "r1"], ["r2", "r3"], ["r4"]]


async def test_a_refused_batch_is_retried_one_ack_per_request() -> None:
    """One malformed receipt must not fail the other callers' acks."""
    fake = FakeAcks(refuse=["bad"])
    fake.gate = asyncio.Event()
    acks = _batcher(fake)
    first = asyncio.ensure_future(acks.ack("r0"))
    await fake.started.wait()
    tasks = [asyncio.ensure_future(acks.ack(r)) for r in ("r1", "bad", "r2")]
    await asyncio.sleep(0)
    fake.gate.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert results[0] is True and results[1] is True and results[3] is True
    assert isinstance(results[2], BadRequest)
    assert fake.requests == [["r0"], ["r1", "bad", "r2"], ["r1"], ["bad"], ["r2"]]


async def test_a_failed_request_fails_every_ack_it_carried() -> None:
    fake = FakeAcks()
    fake.gate = asyncio.Event()
    acks = _batcher(fake)
    first = asyncio.ensure_future(acks.ack("r0"))
    await fake.started.wait()
    tasks = [asyncio.ensure_future(acks.ack(r)) for r in ("r1", "r2")]
    fake.error = ClusterUnavailable(5.0, {"http://127.0.0.1:1": "connection refused"})
    fake.gate.set()
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    assert all(isinstance(r, ClusterUnavailable) for r in results)
    fake.error = None
    assert await acks.ack("r3") is True  # the next ack starts a new request


async def test_a_caller_that_gives_up_leaves_the_others_answered() -> None:
    fake = FakeAcks()
    fake.gate = asyncio.Event()
    acks = _batcher(fake)
    first = asyncio.ensure_future(acks.ack("r0"))
    await fake.started.wait()
    quitter = asyncio.ensure_future(acks.ack("r1"))
    stayer = asyncio.ensure_future(acks.ack("r2"))
    await asyncio.sleep(0)
    quitter.cancel()
    fake.gate.set()
    assert await first is True and await stayer is True
    assert fake.requests == [["r0"], ["r2"]]  # the cancelled ack was never sent


async def test_cancelling_the_sender_releases_every_waiter() -> None:
    """A client shutting down cancels the sending task: no caller may wait forever."""
    fake = FakeAcks()
    fake.gate = asyncio.Event()  # never set: the request hangs
    acks = _batcher(fake)
    first = asyncio.ensure_future(acks.ack("r0"))
    await fake.started.wait()
    queued = asyncio.ensure_future(acks.ack("r1"))
    await asyncio.sleep(0)
    assert acks._sender is not None
    acks._sender.cancel()
    for task in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    fake.gate.set()
    assert await acks.ack("r2") is True


async def test_a_bad_reference_fails_alone_before_anything_is_sent() -> None:
    def receipt_of(ref: object) -> str:
        if not isinstance(ref, str):
            raise TypeError("expected a Message, a message id or a receipt")
        return ref

    fake = FakeAcks()
    acks = AckBatcher(fake, receipt_of=receipt_of)
    with pytest.raises(TypeError):
        await acks.ack(42)
    assert fake.requests == []
    assert await acks.ack("r1") is True


def test_max_per_request_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AckBatcher(FakeAcks(), receipt_of=str, max_per_request=0)
