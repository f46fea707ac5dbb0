"""QueueService's long-poll bookkeeping, with a Raft whose entries apply when the test
says so: which sends are still on their way, and what a waiting receive does about them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from node.config import load_config
from node.http import ApiError
from node.metrics import Metrics
from node.queue_service import QueueService


class HeldRaft:
    """Proposals wait until `apply_all()`; each batch answers one ok per command."""

    is_leader = True
    leader_id = 1

    def __init__(self) -> None:
        self.held: list[asyncio.Future[Any]] = []

    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]:
        fut = asyncio.get_running_loop().create_future()
        self.held.append(fut)
        return fut

    def apply_all(self, commands_per_entry: int = 1) -> None:
        held, self.held = self.held, []
        for fut in held:
            fut.set_result({"results": [{"messages": []}] * commands_per_entry})


class NoState:
    def queue_config(self, name: str) -> dict[str, Any] | None:
        return {"name": name}


def _service() -> tuple[QueueService, HeldRaft]:
    args = ["--id", "1", "--http", "127.0.0.1:7001", "--raft", "127.0.0.1:7101"]
    cfg = load_config([*args, "--data-dir", "/tmp/x"])
    raft = HeldRaft()
    return QueueService(cfg, raft, NoState(), Metrics()), raft


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_send_is_in_flight_from_its_proposal_until_it_applied():
    service, raft = _service()
    assert not service.send_in_flight("q")
    first = asyncio.ensure_future(service.propose("send", queue="q", messages=[{"body": b"a"}]))
    second = asyncio.ensure_future(service.propose("send", queue="q", messages=[{"body": b"b"}]))
    await _settle()
    assert service.send_in_flight("q") and not service.send_in_flight("other")
    raft.apply_all(commands_per_entry=2)  # both coalesced into one entry
    await asyncio.gather(first, second)
    assert not service.send_in_flight("q")


async def test_a_send_that_fails_is_no_longer_in_flight():
    service, raft = _service()
    send = asyncio.ensure_future(service.propose("send", queue="q", messages=[{"body": b"a"}]))
    await _settle()
    assert service.send_in_flight("q")
    raft.held.pop().set_exception(RuntimeError("lost"))
    await asyncio.gather(send, return_exceptions=True)
    assert not service.send_in_flight("q")


async def test_receives_waiting_past_max_long_polls_get_503_with_retry_after():
    service, _raft = _service()
    service.config = replace(
        service.config, limits=replace(service.config.limits, max_long_polls=2)
    )
    events = [asyncio.Event() for _ in range(2)]
    waiting = [
        asyncio.ensure_future(service.receive_with_next_send("q", {"max": 1}, ev, 5.0))
        for ev in events
    ]
    await _settle()
    assert service.long_polls == 2
    with pytest.raises(ApiError) as refused:
        await service.receive_with_next_send("q", {"max": 1}, asyncio.Event(), 5.0)
    err = refused.value
    assert (err.status, err.code, err.headers) == (503, "too_many_long_polls", {"Retry-After": "1"})
    assert service.long_polls == 2 and service.long_polls_refused == 1
    events[0].set()  # one wakes (answered None: the caller proposes its own receive)
    assert await asyncio.wait_for(waiting[0], 1) is None
    assert service.long_polls == 1
    again = asyncio.ensure_future(service.receive_with_next_send("q", {"max": 1}, events[1], 5.0))
    await _settle()
    assert service.long_polls == 2
    events[1].set()
    assert await asyncio.wait_for(asyncio.gather(waiting[1], again), 1) == [None, None]
    assert service.long_polls == 0
