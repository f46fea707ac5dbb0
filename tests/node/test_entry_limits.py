"""One request must never wedge the cluster: an entry the leader accepts always commits.

Reproduces the report (a 16,777,186-byte msgpack send, 30 bytes under the body limit, was
accepted, never replicated, and every later write timed out) and checks the boundary of
`max_entry_bytes` exactly: the largest request that fits commits and the cluster keeps
serving; one byte more is 413 and changes nothing. JSON and msgpack bodies, one message
and many, on real 3-node clusters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import msgpack
import pytest

from cluster.launcher import LocalCluster
from node.commands import encode_command
from tests.conftest import start_cluster
from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration

SMALL_LIMIT = 65_536
TS_WIDE = 1 << 40  # a real ms stamp packs as a 9-byte uint, like this one


def command_size(queue: str, bodies: list[bytes]) -> int:
    """Bytes of the `send` command the leader proposes for these bodies (see node/api.py)."""
    return len(encode_command("send", TS_WIDE, queue=queue, messages=[{"body": b} for b in bodies]))


def bodies_for(queue: str, limit: int, count: int, per_message: int) -> list[bytes]:
    """`count` bodies whose send command is exactly `limit` bytes (the last one adjusted)."""
    bodies = [b"a" * per_message for _ in range(count - 1)]
    last = limit - command_size(queue, [*bodies, b""])
    assert last >= 0, "the first bodies alone exceed the limit"
    while command_size(queue, [*bodies, b"z" * last]) > limit:  # bin header widths
        last -= 1
    while command_size(queue, [*bodies, b"z" * (last + 1)]) <= limit:
        last += 1
    out = [*bodies, b"z" * last]
    assert command_size(queue, out) == limit
    return out


async def send(api: ApiClient, queue: str, bodies: list[bytes], codec: str) -> tuple[int, dict]:
    if codec == "json":
        payload = {"messages": [{"body": b.decode()} for b in bodies]}
        raw = json.dumps(payload).encode()
        status, answer = await api.raw(
            "POST", f"/v1/queues/{queue}/messages", raw, "application/json"
        )
        return status, json.loads(answer)
    payload = {"messages": [{"body": b} for b in bodies]}
    raw = msgpack.packb(payload, use_bin_type=True)
    status, answer = await api.raw(
        "POST", f"/v1/queues/{queue}/messages", raw, "application/msgpack"
    )
    return status, msgpack.unpackb(answer, raw=False)


async def converged_hashes(cluster: LocalCluster, timeout_s: float = 20.0) -> set[str]:
    """Wait until every node reports the same applied state hash; the set of hashes seen."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        hashes = set()
        for url in cluster.urls:
            async with ApiClient(url) as node:
                _, body = await node.get("/v1/admin/state")
                hashes.add(body["state_hash"])
        if len(hashes) == 1 or loop.time() > deadline:
            return hashes
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def small_entries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = start_cluster(
        tmp_path_factory.mktemp("small-entries"),
        3,
        ("--max-entry-bytes", str(SMALL_LIMIT)),
    )
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("count", [1, 7])
async def test_largest_request_that_fits_commits_and_one_byte_more_is_413(
    small_entries: LocalCluster, codec: str, count: int
) -> None:
    leader = small_entries.wait_for_leader()
    queue = f"edge-{codec}-{count}"
    async with ApiClient(leader.url) as api:
        status, _ = await api.put(f"/v1/queues/{queue}", {})
        assert status == 201
        fits = bodies_for(queue, SMALL_LIMIT, count, SMALL_LIMIT // (count + 1))
        over = [*fits[:-1], fits[-1] + b"z"]
        assert command_size(queue, over) == SMALL_LIMIT + 1

        _, before = await api.get("/v1/admin/state")
        status, answer = await send(api, queue, over, codec)
        assert status == 413, answer
        assert answer["error"]["code"] == "too_large"
        assert str(SMALL_LIMIT) in answer["error"]["message"]
        _, after = await api.get("/v1/admin/state")
        assert after["state_hash"] == before["state_hash"]  # nothing was proposed

        status, answer = await send(api, queue, fits, codec)
        assert status == 200, answer
        assert len(answer["messages"]) == count
        status, answer = await send(api, queue, [b"after"], codec)  # still serving
        assert status == 200, answer
        _, info = await api.get(f"/v1/queues/{queue}")
        assert info["depth"] == count + 1
    assert len(await converged_hashes(small_entries)) == 1


async def test_report_near_body_limit_is_refused_and_writes_keep_flowing(
    make_cluster,
) -> None:
    """The reported request: 65 messages (each <= 256 KiB), 16,777,186 bytes of msgpack."""
    cluster = make_cluster(3)
    leader = cluster.wait_for_leader()
    async with ApiClient(leader.url) as api:
        await api.put("/v1/queues/big", {})
        body_size = 256 << 10
        target = 16_777_186
        sizes = [258_100] * 64
        payload = {"messages": [{"body": b"x" * n} for n in sizes] + [{"body": b""}]}
        last = target - len(msgpack.packb(payload, use_bin_type=True))
        while True:  # the last body's bin header widens with its length
            payload["messages"][-1]["body"] = b"y" * last
            raw = msgpack.packb(payload, use_bin_type=True)
            if len(raw) == target:
                break
            last += target - len(raw)
        assert len(payload["messages"]) == 65
        assert all(len(m["body"]) <= body_size for m in payload["messages"])
        status, answer = await api.raw(
            "POST", "/v1/queues/big/messages", raw, "application/msgpack"
        )
        assert status == 413, answer[:200]
        assert msgpack.unpackb(answer)["error"]["code"] == "too_large"

        # The largest request of 256 KiB messages that fits the default 8 MiB entry.
        limit = 8 << 20
        fits = bodies_for("big", limit, 34, 250_000)
        assert all(len(b) <= 256 << 10 for b in fits)
        status, answer = await send(api, "big", fits, "msgpack")
        assert status == 200, answer
        for i in range(5):  # every later write commits at once
            status, _ = await api.post("/v1/queues/big/messages", {"messages": [{"body": f"m{i}"}]})
            assert status == 200
        _, info = await api.get("/v1/queues/big")
        assert info["depth"] == 34 + 5
    assert len(await converged_hashes(cluster)) == 1
