"""`GET /v1/admin/state` hashes the whole database on a worker thread: while a big state
is being hashed, the node still answers at once (and so still sends its heartbeats)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration


async def _timed(coro) -> tuple[float, object]:
    started = time.monotonic()
    result = await coro
    return time.monotonic() - started, result


async def test_hashing_a_big_state_does_not_hold_up_other_requests(make_cluster) -> None:
    cluster = make_cluster(1)
    async with ApiClient(cluster.urls[0]) as api:
        await api.put("/v1/queues/big", {})
        body = "x" * 200
        for _ in range(150):  # 150,000 messages: several LMDB records each to hash
            status, _ = await api.post(
                "/v1/queues/big/messages", {"messages": [{"body": body}] * 1000}
            )
            assert status == 200
        hashing = asyncio.ensure_future(_timed(api.get("/v1/admin/state")))
        await asyncio.sleep(0.02)  # the hash is under way
        health_s, (status, _) = await _timed(api.get("/v1/health"))
        state_s, (state_status, state) = await hashing
    assert status == 200 and state_status == 200 and state["applied_index"] > 0
    assert state_s > 0.1, f"hashing took {state_s:.3f} s: too small a state to tell"
    assert health_s < state_s / 2, (health_s, state_s)
