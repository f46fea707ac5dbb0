"""Client behaviour against fake nodes on real loopback sockets: discovery, redirects,
retries with the same dedup ids, typed errors, deadlines, bodies and the consumer loop."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cluster import (
    AsyncClient,
    BadRequest,
    Client,
    ClusterUnavailable,
    Conflict,
    InsufficientStorage,
    Message,
    NotFound,
    OutgoingMessage,
    TooLarge,
)
from cluster.client import AsyncQueue
from cluster.consumer import retry_delay_s
from cluster.discovery import DEFAULT_SERVERS, note_failure, resolve_servers
from tests.cluster.conftest import FakeCluster

# --- servers and discovery ---------------------------------------------------------------


def test_servers_from_argument_env_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAFTQ_SERVERS", raising=False)
    assert resolve_servers() == DEFAULT_SERVERS
    monkeypatch.setenv("RAFTQ_SERVERS", "127.0.0.1:9001, http://127.0.0.1:9002/")
    assert resolve_servers() == ("http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert resolve_servers(["http://h:1", "http://h:1"]) == ("http://h:1",)
    with pytest.raises(ValueError):
        resolve_servers("ftp://x:1")


async def test_discovers_leader_from_any_node(fake: FakeCluster) -> None:
    async with AsyncClient([fake.url(3), fake.url(2), fake.url(1)], timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send("hello")
        assert client.leader_url == fake.url(1)
    # every queue request went straight to the leader: discovery used /v1/cluster
    assert {n for n, *_ in fake.requests} == {1}


async def test_follows_307_when_cached_leader_is_stale(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        fake.leader_id, fake.term = 2, 2
        mid = await q.send({"n": 1})
        assert client.leader_url == fake.url(2)
    assert fake.count("/messages", node=1) == 1  # answered 307
    assert fake.count("/messages", node=2) == 1
    assert mid in fake.queues["tasks"].messages


async def test_follower_only_list_finds_leader_via_307(fake: FakeCluster) -> None:
    fake.hide_leader = True  # /v1/cluster names no leader: only the 307 can tell
    async with AsyncClient([fake.url(3)], timeout_s=5) as client:
        await client.queue("tasks").create()
        assert client.leader_url == fake.url(1)
    assert fake.count("/v1/queues/tasks", node=3) == 1
    assert fake.count("/v1/queues/tasks", node=1) == 1


async def test_discovery_prefers_highest_term_over_stale_leader(fake: FakeCluster) -> None:
    # node 3 answers first-ish but still believes it leads in an old term
    fake.term = 5
    fake.cluster_overrides[3] = {"leader": {"id": 3, "url": fake.url(3)}, "term": 4}
    async with AsyncClient([fake.url(3), fake.url(1), fake.url(2)], timeout_s=5) as client:
        await client.queue("tasks").create()
        assert client.leader_url == fake.url(1)
    assert fake.count("/v1/queues/tasks", node=3) == 0


async def test_dead_first_server_still_works(fake: FakeCluster, dead_url: str) -> None:
    async with AsyncClient([dead_url, fake.url(2)], timeout_s=5) as client:
        await client.queue("tasks").create()
        assert await client.queue("tasks").send("x")


async def test_leader_dies_client_rediscovers(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        fake.take_down(1)
        fake.leader_id, fake.term = 3, 2
        await q.send("after failover")
        assert client.leader_url == fake.url(3)


@contextlib.asynccontextmanager
async def _leader_hangs(
    fake: FakeCluster, new_leader: int, **client_kw: Any
) -> AsyncIterator[tuple[AsyncClient, AsyncQueue]]:
    """A client with queue "tasks" created; then node 1, the leader, hangs and `new_leader`
    leads. Each attempt may wait 60 s, far beyond the calls' deadlines: only the leader
    check can finish a call."""
    async with AsyncClient(fake.urls, request_timeout_s=60, **client_kw) as client:
        q = client.queue("tasks")
        await q.create()
        fake.modes[1] = "hang"
        fake.leader_id, fake.term = new_leader, 2
        yield client, q


async def test_hung_leader_is_left_once_a_majority_names_another(fake: FakeCluster) -> None:
    async with _leader_hangs(fake, 2, timeout_s=10, leader_check_s=0.2) as (client, q):
        await q.send("while node 1 hangs")
        assert client.leader_url == fake.url(2)
    assert fake.count("/messages", node=1) == 1  # the abandoned attempt
    assert fake.count("/messages", node=2) == 1
    assert len(fake.queues["tasks"].messages) == 1


async def test_slow_leader_still_named_is_waited_for(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=10, leader_check_s=0.1) as client:
        q = client.queue("tasks")
        await q.create()
        probes_before = len(fake.cluster_probes)
        fake.modes[1] = "hang"
        asyncio.get_running_loop().call_later(0.8, fake.modes.__setitem__, 1, "normal")
        await q.send("slow but still leading")
        assert client.leader_url == fake.url(1)
    assert len(fake.cluster_probes) > probes_before  # the client did check...
    assert fake.count("/messages") == 1  # ...and, as node 1 still led, never re-sent


async def test_attempts_waiting_together_share_one_leader_check(fake: FakeCluster) -> None:
    async with _leader_hangs(fake, 3, timeout_s=10, leader_check_s=0.3) as (_, q):
        probes_before = len(fake.cluster_probes)
        await asyncio.gather(*(q.send(f"m{i}") for i in range(20)))
    assert len(fake.queues["tasks"].messages) == 20
    # one round of probes to the 3 nodes, not one per waiting send (60)
    assert len(fake.cluster_probes) - probes_before <= 6


async def test_leader_check_off_waits_for_the_attempt_timeout(fake: FakeCluster) -> None:
    async with _leader_hangs(fake, 2, timeout_s=1.0, leader_check_s=None) as (_, q):
        with pytest.raises(ClusterUnavailable) as info:
            await q.send("stuck")
    assert "timed out" in info.value.attempts[fake.url(1)]
    assert fake.count("/messages", node=2) == 0


def test_leader_check_must_be_positive() -> None:
    with pytest.raises(ValueError, match="leader_check_s"):
        AsyncClient(["http://127.0.0.1:1"], leader_check_s=0)


async def test_503_no_leader_respects_retry_after_then_succeeds(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        fake.leader_id = None
        fake.retry_after_s = "0.3"
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, lambda: setattr(fake, "leader_id", 2))
        start = time.monotonic()
        await q.send("during election")
        elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 3.0
    # Retry-After (0.3 s) spaced the retries: a handful of requests, not a hot loop
    assert 1 <= fake.count("/messages") - 1 <= 8


async def test_retry_after_dropped_connection_reuses_dedup_id(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        fake.drop_after_apply = 1
        results = await q.send_many(["a", "b", "c"])
    sends = [body for _, _, path, body in fake.requests if path.endswith("/messages")]
    assert len(sends) == 2
    first_ids = [m["dedup_id"] for m in sends[0]["messages"]]
    assert first_ids == [m["dedup_id"] for m in sends[1]["messages"]]
    assert len(set(first_ids)) == 3
    assert [r.duplicate for r in results] == [True, True, True]
    assert len(fake.queues["tasks"].messages) == 3  # applied once, never twice
    assert {r.id for r in results} == set(fake.queues["tasks"].messages)


async def test_send_at_most_once_uses_ack_none(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        assert await q.send_at_most_once(["a", {"b": 1}]) == 2
        assert await q.send_at_most_once([]) == 0
    assert len(fake.queues["tasks"].messages) == 2


async def test_caller_dedup_id_is_kept(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        first = await q.send("order", dedup_id="order-42")
        again = await q.send("order", dedup_id="order-42")
    assert first == again
    assert len(fake.queues["tasks"].messages) == 1


@pytest.mark.parametrize(
    ("status", "code", "exc_type"),
    [
        (400, "bad_request", BadRequest),
        (404, "not_found", NotFound),
        (409, "conflict", Conflict),
        (413, "too_large", TooLarge),
        (507, "insufficient_storage", InsufficientStorage),
    ],
)
async def test_definite_errors_raise_typed_and_are_not_retried(
    fake: FakeCluster, status: int, code: str, exc_type: type[Exception]
) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        fake.scripted.append((status, code))
        with pytest.raises(exc_type) as info:
            await q.send("x")
    err = info.value
    assert (err.status, err.code) == (status, code)  # type: ignore[attr-defined]
    assert err.message == f"scripted {code}"  # type: ignore[attr-defined]
    assert err.body["error"]["code"] == code  # type: ignore[attr-defined]
    assert fake.count("/messages") == 1


async def test_real_not_found_and_bad_request(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        with pytest.raises(NotFound, match="does not exist"):
            await client.queue("missing").info()
        with pytest.raises(BadRequest):
            await client.queue("q").create(visibility_timeout_s="soon")


async def test_cluster_unavailable_names_every_server_within_deadline(
    fake: FakeCluster, dead_url: str
) -> None:
    fake.leader_id = None
    servers = [dead_url, fake.url(1), fake.url(2)]
    async with AsyncClient(servers, timeout_s=1.0, request_timeout_s=0.5) as client:
        start = time.monotonic()
        with pytest.raises(ClusterUnavailable) as info:
            await client.queue("tasks").send("x")
        elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 2.5
    err = info.value
    assert set(err.attempts) == set(servers)
    assert err.attempts[dead_url].startswith("cannot connect")
    assert "no_leader" in err.attempts[fake.url(1)] or "no leader" in err.attempts[fake.url(1)]
    for url in servers:
        assert url in str(err)


def test_a_timeout_the_deadline_caused_keeps_the_earlier_answer() -> None:
    errors: dict[str, str] = {}
    note_failure(errors, "a", "timed out", cut_short=True)  # nothing better known yet
    assert errors == {"a": "timed out"}
    note_failure(errors, "a", "503 no_leader: no leader", cut_short=False)
    note_failure(errors, "a", "timed out", cut_short=True)
    assert errors == {"a": "503 no_leader: no leader"}
    note_failure(errors, "a", "timed out", cut_short=False)  # a full attempt did time out
    assert errors == {"a": "timed out"}
    note_failure(errors, "a", "cannot connect: refused", cut_short=True)
    assert errors == {"a": "cannot connect: refused"}


# --- bodies and messages -----------------------------------------------------------------


async def test_bodies_round_trip_and_message_helpers(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send({"image_id": 123})
        await q.send("plain text")
        await q.send(b"\x00\xffbin")
        sent = [b["messages"][0] for *_, p, b in fake.requests if p.endswith("/messages")]
        assert sent[0]["body"] == '{"image_id":123}'
        assert sent[0]["attributes"] == {"content_type": "application/json"}
        assert sent[1]["body"] == "plain text" and "attributes" not in sent[1]
        assert base64.b64decode(sent[2]["body_b64"]) == b"\x00\xffbin"
        assert all(len(m["dedup_id"]) == 32 for m in sent)

        msgs = await q.receive(max=10)
        assert isinstance(msgs, list) and len(msgs) == 3
        as_json, text, binary = msgs
        assert as_json.data == {"image_id": 123} and as_json.json() == {"image_id": 123}
        assert text.data == "plain text" and text.body == "plain text"
        assert binary.body_bytes == b"\x00\xffbin" and binary.data == b"\x00\xffbin"
        assert as_json.receive_count == 1 and as_json.retry_count == 0
        assert "image_id" in repr(as_json) and "tasks" in repr(as_json)
        # seed style: acknowledge by message id works for messages received here
        assert await q.acknowledge(as_json.id)
        assert (await q.acknowledge_many([text, binary])).acked == 2
        assert fake.queues["tasks"].messages == {}


async def test_receive_rule_single_or_list(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        assert await q.receive() is None
        assert await q.receive(max=1) == []
        await q.send("one")
        msg = await q.receive()
        assert isinstance(msg, Message) and msg.body == "one"
        with pytest.raises(ValueError):
            await q.receive(max=0)
        with pytest.raises(TypeError):
            await q.send(object())


async def test_receive_long_poll_waits_for_a_message(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(q.send("late")))
        msg = await q.receive(wait_s=3)
        assert msg is not None and msg.body == "late"


async def test_stale_ack_returns_false_and_nack_extend(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many([OutgoingMessage("p", priority=3, group_id="g"), "q"])
        first = await q.receive(visibility_timeout_s=0.2)
        assert first is not None and first.group_id == "g"
        await asyncio.sleep(0.3)  # lease expires
        again = await q.receive()
        assert again is not None and again.id == first.id and again.receive_count == 2
        assert await q.acknowledge(first) is False
        assert await q.extend(again, 10) is True
        assert await q.retry(again, delay_s=5) is True
        assert fake.nacks == [(again.id, 5.0)]
        info = await q.info()
        assert info["delayed"] == 1 and info["depth"] == 1


async def test_admin_calls(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("jobs")
        config = await q.create(visibility_timeout_s=12, max_receives=3)
        assert config["visibility_timeout_s"] == 12
        await q.send("x")
        assert [x["name"] for x in await client.queues()] == ["jobs"]
        assert (await q.purge())["purged"] == 1
        assert (await client.cluster())["leader"]["id"] == 1
        await q.delete()
        assert await client.queues() == []


# --- the consumer loop -------------------------------------------------------------------


def test_retry_delay_is_exponential_and_capped() -> None:
    assert [retry_delay_s(n, 1.0, 10.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]


async def test_consumer_extends_lease_of_slow_handler_and_acks(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send("slow")
        seen: list[Message] = []

        async def handler(msg: Message) -> None:
            seen.append(msg)
            await asyncio.sleep(1.0)  # > visibility timeout: only extensions keep the lease
            q.stop()

        stats = await q.consume(handler, visibility_timeout_s=0.45, handle_signals=False)
    assert len(seen) == 1 and seen[0].receive_count == 1
    assert stats.succeeded == 1 and stats.failed == 0
    assert len(fake.extends) >= 2 and stats.extended >= 2
    assert fake.queues["tasks"].messages == {}


async def test_consumer_extends_the_leases_of_all_slow_handlers_in_one_request(
    fake: FakeCluster,
) -> None:
    """One keeper for every running handler: each round extends all the due leases in a
    single request, not one request (and one task) per message."""
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many(["a", "b", "c"])
        started: list[str] = []
        stop = asyncio.Event()

        async def handler(msg: Message) -> None:
            started.append(msg.id)
            await asyncio.sleep(1.0)  # > visibility timeout: only extensions keep the lease
            if len(started) == 3:
                stop.set()

        stats = await q.consume(
            handler,
            concurrency=3,
            visibility_timeout_s=0.45,
            stop_event=stop,
            handle_signals=False,
        )
    assert stats.succeeded == 3 and stats.stale == 0
    per_message = collections.Counter(mid for mid, _vt in fake.extends)
    assert set(per_message) == set(started) and min(per_message.values()) >= 2
    assert fake.extend_requests < len(fake.extends)  # several receipts per request


async def test_consumer_keeps_a_standby_receive_waiting_only_while_the_queue_is_drained(
    fake: FakeCluster,
) -> None:
    """A backlog is taken by one receive for all the free slots; once a receive comes back
    short (the queue is drained), a standby receive of one slot waits at the leader too."""
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many([f"m{i}" for i in range(30)])
        handled = 0
        stop = asyncio.Event()

        async def handler(msg: Message) -> None:
            nonlocal handled
            handled += 1

        def receives() -> list[int]:
            return [
                body["max"]
                for _node, _method, path, body in fake.requests
                if path.endswith("/receive")
            ]

        consumer = asyncio.ensure_future(
            q.consume(
                handler,
                concurrency=10,
                receivers=2,
                poll_wait_s=1.0,
                stop_event=stop,
                handle_signals=False,
            )
        )
        deadline = time.monotonic() + 5
        while handled < 30 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # drained: the main receive and a standby now wait
        asked = receives()
        stop.set()
        await consumer
    assert handled == 30
    assert 9 in asked[:2]  # the main receive: all the slots but the standby's
    assert asked.count(1) < len(asked) / 2  # the standby rested during the backlog
    assert 1 in asked[-2:] and max(asked[-2:]) > 1  # both waiting once drained


async def test_extend_many_reports_stale_receipts(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many(["a", "b"])
        first, second = await q.receive(2, visibility_timeout_s=5)
        assert await q.acknowledge(first)
        result = await q.extend_many([first, second], 30)
        assert result.acked == 1 and result.stale == (first.receipt,) and not result
        assert await q.extend(second, 30) and not await q.extend(first, 30)


async def test_consumer_nacks_failures_with_exponential_delay(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send("flaky")
        counts: list[int] = []

        async def handler(msg: Message) -> None:
            counts.append(msg.receive_count)
            if msg.receive_count < 3:
                raise RuntimeError("boom")
            q.stop()

        stats = await asyncio.wait_for(
            q.consume(
                handler,
                visibility_timeout_s=5,
                retry_base_delay_s=0.1,
                poll_wait_s=0.2,
                handle_signals=False,
            ),
            timeout=10,
        )
    assert counts == [1, 2, 3]
    assert [d for _, d in fake.nacks] == [0.1, 0.2]
    assert stats.failed == 2 and stats.succeeded == 1


async def test_consumer_receives_while_acks_are_on_their_way_but_bounded(
    fake: FakeCluster,
) -> None:
    """A finished handler's slot takes the next message while its completion (the ack)
    is on its way; at most `concurrency` completions wait, then receiving stops."""
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many([f"m{i}" for i in range(6)])
        handled: list[str] = []
        completed: list[str] = []
        gate = asyncio.Event()

        async def handler(msg: Message) -> None:
            handled.append(msg.body)

        async def complete(msg: Message, _result: object) -> bool:
            await gate.wait()  # the acks hang (a slow leader, say)
            ok = await q.acknowledge(msg)
            completed.append(msg.body)
            return ok

        task = asyncio.ensure_future(
            q.consume(
                handler, concurrency=2, complete=complete, poll_wait_s=0.1, handle_signals=False
            )
        )
        deadline = time.monotonic() + 5
        while len(handled) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # time to take more, if the bound did not hold
        assert len(handled) == 4 and completed == []  # 2 completing + 2 holding their slots
        gate.set()
        while len(completed) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        q.stop()
        stats = await asyncio.wait_for(task, 5)
    assert sorted(completed) == [f"m{i}" for i in range(6)]
    assert stats.succeeded == 6 and fake.queues["tasks"].messages == {}


@pytest.mark.parametrize(("receivers", "expected"), [(1, 1), (2, 2), (8, 4)])
async def test_an_idle_consumer_keeps_its_receivers_waiting(
    fake: FakeCluster, monkeypatch: pytest.MonkeyPatch, receivers: int, expected: int
) -> None:
    """`receivers` long-polls wait at once (at most `concurrency`), so one is always at the
    leader for the next send while another is on its way back."""
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("idle")
        await q.create()
        waiting, peak = 0, 0
        real_receive = AsyncQueue.receive

        async def counting_receive(self: AsyncQueue, *args: Any, **kwargs: Any) -> Any:
            nonlocal waiting, peak
            waiting += 1
            peak = max(peak, waiting)
            try:
                return await real_receive(self, *args, **kwargs)
            finally:
                waiting -= 1

        monkeypatch.setattr(AsyncQueue, "receive", counting_receive)
        task = asyncio.ensure_future(
            q.consume(
                lambda m: None,
                concurrency=4,
                receivers=receivers,
                poll_wait_s=1,
                handle_signals=False,
            )
        )
        await asyncio.sleep(0.3)
        assert waiting == peak == expected
        q.stop()
        await asyncio.wait_for(task, 5)


async def test_consumer_stop_drains_running_handlers(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many([f"m{i}" for i in range(6)])
        started = asyncio.Event()
        finished: list[str] = []

        def handler(msg: Message) -> None:  # sync handlers run in worker threads
            started.set()
            time.sleep(0.3)
            finished.append(msg.body)

        stop = asyncio.Event()
        task = asyncio.ensure_future(
            q.consume(handler, concurrency=3, stop_event=stop, handle_signals=False)
        )
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        stats = await asyncio.wait_for(task, 5)
    # the handlers that were running finished and were acked; nothing else was taken
    assert stats.succeeded == len(finished) >= 1
    assert stats.received == stats.succeeded + stats.returned
    remaining = fake.queues["tasks"]
    assert len(remaining.messages) == 6 - len(finished)
    assert all(m.receipt is None for m in remaining.messages.values())


async def test_async_messages_iterator(fake: FakeCluster) -> None:
    async with AsyncClient(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        await q.create()
        await q.send_many(["a", "b", "c"])
        got = []
        async for msg in q.messages(max=2, wait_s=1):
            got.append(msg.body)
            await q.acknowledge(msg)
            if len(got) == 3:
                break
    assert got == ["a", "b", "c"]


# --- the sync client ---------------------------------------------------------------------


def test_sync_client_seed_style(fake: FakeCluster) -> None:
    with Client(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        q.create()
        mid = q.send({"image_id": 123})
        message = q.receive(wait_s=1)
        assert message is not None and message.id == mid
        assert message.data["image_id"] == 123
        assert q.acknowledge(message.id)
        assert q.receive() is None
        assert client.leader_url == fake.url(1)
        assert "Client(" in repr(client)
    with pytest.raises(RuntimeError, match="closed"):
        q.info()


def test_sync_consume_stops_on_stop_event(fake: FakeCluster) -> None:
    with Client(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        q.create()
        q.send_many(["a", "b"])
        stop = threading.Event()
        done: list[str] = []

        def handler(msg: Message) -> None:
            done.append(msg.body)
            if len(done) == 2:
                stop.set()

        stats = q.consume(handler, concurrency=2, stop_event=stop, poll_wait_s=0.2)
    assert sorted(done) == ["a", "b"] and stats.succeeded == 2


def test_sync_consume_stops_cleanly_on_sigterm(fake: FakeCluster) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from cluster import Client
        with Client({fake.urls!r}, timeout_s=5) as client:
            q = client.queue("tasks")
            def handler(msg):
                print("start", msg.body, flush=True)
                time.sleep(0.5)
                print("done", msg.body, flush=True)
            stats = q.consume(handler, poll_wait_s=0.2)
            print("stats", stats.succeeded, flush=True)
        """
    )
    with Client(fake.urls, timeout_s=5) as client:
        client.queue("tasks").create()
        client.queue("tasks").send("job")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        first = ""
        while not first.startswith("start"):  # skip any log lines
            first = proc.stdout.readline().decode()
            assert first, "consumer exited early"
        assert first.strip() == "start job"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = [x for x in out.decode().splitlines() if x.startswith(("done", "stats"))]
    assert lines == ["done job", "stats 1"]
    assert fake.queues["tasks"].messages == {}
    assert json.loads(json.dumps(fake.queues["tasks"].stats()))["acked_total"] == 1


def test_async_consume_stops_cleanly_on_sigint(fake: FakeCluster) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from cluster import AsyncClient

        async def main():
            async with AsyncClient({fake.urls!r}, timeout_s=5) as client:
                q = client.queue("tasks")
                async def handler(msg):
                    print("start", msg.body, flush=True)
                    await asyncio.sleep(0.5)
                    print("done", msg.body, flush=True)
                stats = await q.consume(handler, concurrency=2, poll_wait_s=0.2)
                print("stats", stats.succeeded, flush=True)

        asyncio.run(main())
        """
    )
    with Client(fake.urls, timeout_s=5) as client:
        client.queue("tasks").create()
        client.queue("tasks").send("job")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        first = ""
        while not first.startswith("start"):
            first = proc.stdout.readline().decode()
            assert first, "consumer exited early"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = [x for x in out.decode().splitlines() if x.startswith(("done", "stats"))]
    assert lines == ["done job", "stats 1"]
    assert fake.queues["tasks"].messages == {}


async def test_borrowed_session_is_used_and_left_open(fake: FakeCluster) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with AsyncClient(fake.urls, timeout_s=5, session=session) as client:
            await client.queue("tasks").create()
            assert "AsyncClient(" in repr(client) and fake.url(1) in repr(client)
        assert not session.closed
        async with session.get(fake.url(1) + "/v1/health") as resp:
            assert resp.status == 200


def test_sync_queue_stop_from_another_thread_and_messages_iterator(fake: FakeCluster) -> None:
    with Client(fake.urls, timeout_s=5) as client:
        q = client.queue("tasks")
        q.create()
        q.send_many(["a", "b", "c"])
        got = []
        for msg in q.messages(max=2, wait_s=1):
            got.append(msg.body)
            q.acknowledge(msg)
            if len(got) == 3:
                break
        assert got == ["a", "b", "c"]

        q.send("d")
        handled = threading.Event()
        result: list[object] = []

        def handler(msg: Message) -> None:
            handled.set()

        worker = threading.Thread(
            target=lambda: result.append(q.consume(handler, handle_signals=False, poll_wait_s=0.2))
        )
        worker.start()
        assert handled.wait(5)
        q.stop()
        worker.join(10)
        assert not worker.is_alive()
        assert result[0].succeeded == 1  # type: ignore[attr-defined]


def test_generated_dedup_ids_are_unique_hex_and_time_ordered() -> None:
    """Ids made later sort later (across milliseconds), so replicas' B-tree inserts of
    ids made together share pages; within a millisecond they are still unique."""
    from cluster.message import new_dedup_id

    burst = [new_dedup_id() for _ in range(5_000)]
    assert len(set(burst)) == len(burst)
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in burst)
    earlier = new_dedup_id()
    time.sleep(0.003)
    later = new_dedup_id()
    assert earlier < later
    assert int(later[:12], 16) - int(earlier[:12], 16) >= 2  # a millisecond clock up front
