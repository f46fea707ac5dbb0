"""Topics and consumer groups over HTTP on a real node: every route, the partitioner, the
producer session, retention, fetch long-polls, group membership and fencing, bad input.

Bad input must get a clear 4xx and change nothing: those tests compare the replicated
state hash before and after.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from node.state.topics import partition_for_key

pytestmark = pytest.mark.integration


async def _state(api) -> str:
    _, body = await api.get("/v1/admin/state")
    return body["state_hash"]


async def test_topic_lifecycle(api):
    status, cfg = await api.put("/v1/topics/life", {"partitions": 2})
    assert status == 201
    assert cfg == {"name": "life", "partitions": 2, "retention_s": 604800, "retention_bytes": None}
    status, cfg = await api.put("/v1/topics/life", {"partitions": 3, "retention_bytes": 1000})
    assert status == 200 and cfg["partitions"] == 3 and cfg["retention_bytes"] == 1000
    status, body = await api.put("/v1/topics/life", {"partitions": 2})
    assert status == 409 and body["error"]["code"] == "conflict"
    status, info = await api.get("/v1/topics/life")
    assert status == 200 and [p["partition"] for p in info["partition_stats"]] == [0, 1, 2]
    status, listed = await api.get("/v1/topics")
    assert "life" in [t["name"] for t in listed["topics"]]
    status, gone = await api.delete("/v1/topics/life")
    assert status == 200 and gone["deleted"] == "life"
    assert (await api.get("/v1/topics/life"))[0] == 404
    assert (await api.delete("/v1/topics/life"))[0] == 404


async def test_append_partitions_by_key_round_robin_or_explicitly(api):
    await api.put("/v1/topics/parts", {"partitions": 4})
    records = [{"key": f"user-{i}", "value": f"v{i}"} for i in range(8)]
    records += [{"value": "rr"} for _ in range(4)] + [{"value": "pinned", "partition": 3}]
    status, body = await api.post("/v1/topics/parts/records", {"records": records})
    assert status == 200
    placed = body["records"]
    for i in range(8):
        assert placed[i]["partition"] == partition_for_key(f"user-{i}", 4)
    assert [r["partition"] for r in placed[8:12]] == [0, 1, 2, 3]
    assert placed[12]["partition"] == 3
    # dense offsets per partition, in request order
    per: dict[int, list[int]] = {}
    for r in placed:
        per.setdefault(r["partition"], []).append(r["offset"])
    for offsets in per.values():
        assert offsets == list(range(len(offsets)))
    # the same key always lands in the same partition
    status, again = await api.post(
        "/v1/topics/parts/records", {"records": [{"key": "user-3", "value": "x"}]}
    )
    assert again["records"][0]["partition"] == placed[3]["partition"]


async def test_fetch_and_replay(api):
    await api.put("/v1/topics/replay", {"partitions": 1})
    values = [f"m{i}" for i in range(10)]
    await api.post(
        "/v1/topics/replay/records",
        {"records": [{"value": v, "headers": {"h": "1"}} for v in values]},
    )
    status, page = await api.get("/v1/topics/replay/partitions/0/records?offset=0&max=4")
    assert status == 200
    assert [r["value"] for r in page["records"]] == values[:4]
    assert page["next_offset"] == 4 and page["high_watermark"] == 10 and page["log_start"] == 0
    assert page["records"][0]["headers"] == {"h": "1"}
    status, rest = await api.get("/v1/topics/replay/partitions/0/records?offset=4&max=100")
    assert [r["value"] for r in rest["records"]] == values[4:] and rest["next_offset"] == 10
    status, replay = await api.get("/v1/topics/replay/partitions/0/records?offset=2&max=2")
    assert [r["offset"] for r in replay["records"]] == [2, 3]
    status, empty = await api.get("/v1/topics/replay/partitions/0/records?offset=10")
    assert status == 200 and empty["records"] == [] and empty["next_offset"] == 10
    status, past = await api.get("/v1/topics/replay/partitions/0/records?offset=11")
    assert status == 409 and past["error"]["code"] == "offset_out_of_range"
    # binary values come back as value_b64
    await api.post("/v1/topics/replay/records", {"records": [{"value_b64": "/w=="}]})
    _, got = await api.get("/v1/topics/replay/partitions/0/records?offset=10")
    assert got["records"][0]["value_b64"] == "/w=="


async def test_a_fetch_long_polls_until_an_append(api):
    await api.put("/v1/topics/waits", {"partitions": 2})

    async def later() -> None:
        await asyncio.sleep(0.3)
        await api.post("/v1/topics/waits/records", {"records": [{"value": "hi", "partition": 1}]})

    task = asyncio.create_task(later())
    started = time.monotonic()
    status, got = await api.get("/v1/topics/waits/partitions/1/records?offset=0&wait_s=5")
    await task
    assert status == 200 and [r["value"] for r in got["records"]] == ["hi"]
    assert time.monotonic() - started < 3
    started = time.monotonic()
    status, none = await api.get("/v1/topics/waits/partitions/0/records?offset=0&wait_s=0.3")
    assert status == 200 and none["records"] == [] and time.monotonic() - started >= 0.25


async def test_idempotent_producer_on_a_topic(api):
    await api.put("/v1/topics/idem", {"partitions": 2})
    _, producer = await api.post("/v1/producers", {})
    pid, epoch = producer["producer_id"], producer["epoch"]
    body = {
        "records": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}],
        "producer": {"id": pid, "epoch": epoch, "seq": 0},
    }
    status, first = await api.post("/v1/topics/idem/records", body)
    assert status == 200 and not any(r["duplicate"] for r in first["records"])
    status, repeat = await api.post("/v1/topics/idem/records", body)
    assert status == 200 and all(r["duplicate"] for r in repeat["records"])
    assert [(r["partition"], r["offset"]) for r in repeat["records"]] == [
        (r["partition"], r["offset"]) for r in first["records"]
    ]
    gap = {**body, "producer": {"id": pid, "epoch": epoch, "seq": 5}}
    status, refused = await api.post("/v1/topics/idem/records", gap)
    assert status == 409 and refused["error"]["code"] == "out_of_order_sequence"
    _, newer = await api.post("/v1/producers", {"producer_id": pid})
    status, fenced = await api.post(
        "/v1/topics/idem/records", {**body, "producer": {"id": pid, "epoch": epoch, "seq": 1}}
    )
    assert newer["epoch"] == epoch + 1
    assert status == 409 and fenced["error"]["code"] == "producer_fenced"
    _, info = await api.get("/v1/topics/idem")
    assert sum(p["high_watermark"] for p in info["partition_stats"]) == 2


async def test_retention_by_size_and_by_time(api):
    await api.put("/v1/topics/small", {"partitions": 1, "retention_bytes": 300})
    for i in range(20):
        await api.post("/v1/topics/small/records", {"records": [{"value": "x" * 50 + str(i)}]})
    _, info = await api.get("/v1/topics/small")
    part = info["partition_stats"][0]
    assert part["high_watermark"] == 20 and part["log_start"] > 0 and part["bytes"] <= 300
    status, below = await api.get("/v1/topics/small/partitions/0/records?offset=0")
    assert status == 409 and below["error"]["code"] == "offset_out_of_range"
    assert below["error"]["log_start"] == part["log_start"]
    await api.put("/v1/topics/brief", {"partitions": 1, "retention_s": 1})
    await api.post("/v1/topics/brief/records", {"records": [{"value": "soon gone"}]})
    deadline = time.monotonic() + 10
    while True:  # the leader's tick applies the expiry once it is due
        _, info = await api.get("/v1/topics/brief")
        if info["partition_stats"][0]["log_start"] == 1:
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.2)
    _, page = await api.get("/v1/topics/brief/partitions/0/records?offset=1")
    assert page["records"] == [] and page["high_watermark"] == 1


async def test_group_membership_assignment_and_commit_fencing(api):
    await api.put("/v1/topics/grouped", {"partitions": 3})
    await api.post("/v1/topics/grouped/records", {"records": [{"value": str(i)} for i in range(6)]})
    status, a = await api.post("/v1/groups/g1/join", {"topic": "grouped", "member_id": "a"})
    assert status == 200 and a["generation"] == 1 and a["partitions"] == [0, 1, 2]
    assert a["positions"] == [{"partition": p, "offset": 0} for p in range(3)]
    _, b = await api.post("/v1/groups/g1/join", {"topic": "grouped", "member_id": "b"})
    assert b["generation"] == 2 and b["partitions"] == [2]
    _, hb = await api.post("/v1/groups/g1/heartbeat", {"member_id": "a"})
    assert hb["generation"] == 2 and hb["partitions"] == [0, 1]
    stale = {"member_id": "a", "generation": 1, "offsets": [{"partition": 0, "offset": 2}]}
    status, refused = await api.post("/v1/groups/g1/commit", stale)
    assert status == 409 and refused["error"]["reason"] == "stale_generation"
    not_mine = {"member_id": "a", "generation": 2, "offsets": [{"partition": 2, "offset": 1}]}
    status, refused = await api.post("/v1/groups/g1/commit", not_mine)
    assert status == 409 and refused["error"]["reason"] == "not_assigned"
    ok = {
        "member_id": "a",
        "generation": 2,
        "offsets": [{"topic": "grouped", "partition": 0, "offset": 2}],
    }
    status, done = await api.post("/v1/groups/g1/commit", ok)
    assert status == 200 and done["committed"] == 1
    _, shown = await api.get("/v1/groups/g1")
    assert shown["generation"] == 2 and [m["member_id"] for m in shown["members"]] == ["a", "b"]
    assert shown["offsets"][0] == {
        "partition": 0,
        "committed": 2,
        "log_start": 0,
        "high_watermark": 2,
        "lag": 0,
    }
    status, left = await api.post("/v1/groups/g1/leave", {"member_id": "a"})
    assert status == 200 and left["generation"] == 3
    _, b2 = await api.post("/v1/groups/g1/heartbeat", {"member_id": "b"})
    assert b2["partitions"] == [0, 1, 2] and b2["positions"][0] == {"partition": 0, "offset": 2}
    status, gone = await api.post("/v1/groups/g1/heartbeat", {"member_id": "a"})
    assert status == 409 and gone["error"]["reason"] == "unknown_member"
    status, _ = await api.post("/v1/groups/g1/join", {"topic": "parts-other"})
    assert status == 404
    await api.put("/v1/topics/elsewhere", {})
    status, _ = await api.post("/v1/groups/g1/join", {"topic": "elsewhere"})
    assert status == 409
    # growing the topic rebalances its groups
    await api.put("/v1/topics/grouped", {"partitions": 4})
    _, b3 = await api.post("/v1/groups/g1/heartbeat", {"member_id": "b"})
    assert b3["generation"] == 4 and b3["partitions"] == [0, 1, 2, 3]


async def test_a_silent_member_expires_in_command_time(api):
    await api.put("/v1/topics/silent", {"partitions": 2})
    await api.post(
        "/v1/groups/gs/join", {"topic": "silent", "member_id": "x", "session_timeout_s": 0.5}
    )
    _, y = await api.post("/v1/groups/gs/join", {"topic": "silent", "member_id": "y"})
    assert y["partitions"] == [1]
    deadline = time.monotonic() + 10
    while True:
        _, hb = await api.post("/v1/groups/gs/heartbeat", {"member_id": "y"})
        if hb["partitions"] == [0, 1]:
            break
        assert time.monotonic() < deadline, hb
        await asyncio.sleep(0.2)
    assert hb["generation"] == 3


async def test_start_latest_skips_what_was_there(api):
    await api.put("/v1/topics/late", {"partitions": 1})
    await api.post("/v1/topics/late/records", {"records": [{"value": "old"}]})
    _, m = await api.post("/v1/groups/gl/join", {"topic": "late", "start": "latest"})
    assert m["member_id"] and m["positions"] == [{"partition": 0, "offset": 1}]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/v1/topics/bad", {"partitions": 0}, 400),
        ("PUT", "/v1/topics/bad", {"partitions": 5000}, 400),
        ("PUT", "/v1/topics/bad", {"retention_s": "1"}, 400),
        ("PUT", "/v1/topics/bad", {"colour": 1}, 400),
        ("PUT", "/v1/topics/b%20d", {}, 400),
        ("POST", "/v1/topics/nope/records", {"records": [{"value": "x"}]}, 404),
        ("POST", "/v1/topics/fixed/records", {"records": []}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"key": "k"}]}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"value": "x", "partition": 9}]}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"value": 1}]}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"value_b64": "!!"}]}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"value": "x", "key": 3}]}, 400),
        ("POST", "/v1/topics/fixed/records", {"records": [{"value": "x"}], "producer": {}}, 400),
        ("GET", "/v1/topics/fixed/partitions/7/records", None, 404),
        ("GET", "/v1/topics/fixed/partitions/x/records", None, 400),
        ("GET", "/v1/topics/fixed/partitions/0/records?offset=-1", None, 400),
        ("GET", "/v1/topics/fixed/partitions/0/records?max=0", None, 400),
        ("GET", "/v1/topics/fixed/partitions/0/records?wait_s=nan", None, 400),
        ("GET", "/v1/topics/nope/partitions/0/records", None, 404),
        ("POST", "/v1/groups/gb/join", {}, 400),
        ("POST", "/v1/groups/gb/join", {"topic": "nope"}, 404),
        ("POST", "/v1/groups/gb/join", {"topic": "fixed", "start": "middle"}, 400),
        ("POST", "/v1/groups/gb/join", {"topic": "fixed", "session_timeout_s": 0}, 400),
        ("POST", "/v1/groups/nobody/heartbeat", {"member_id": "m"}, 404),
        ("POST", "/v1/groups/nobody/heartbeat", {}, 400),
        ("POST", "/v1/groups/gfixed/commit", {"member_id": "m", "offsets": []}, 400),
        (
            "POST",
            "/v1/groups/gfixed/commit",
            {"member_id": "m", "generation": 1, "offsets": [{"partition": 0, "offset": 99}]},
            400,
        ),
        ("GET", "/v1/groups/nobody", None, 404),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(api, method, path, body, status):
    await api.put("/v1/topics/fixed", {"partitions": 2})
    await api.post("/v1/groups/gfixed/join", {"topic": "fixed", "member_id": "m"})
    before = await _state(api)
    got, answer = await api.call(method, path, body)
    assert got == status, answer
    assert answer["error"]["code"] and answer["error"]["message"]
    assert await _state(api) == before


async def test_a_transaction_acks_sends_publishes_and_commits_offsets_atomically(api):
    await api.put("/v1/queues/txq-in", {})
    await api.put("/v1/topics/txt-out", {"partitions": 2})
    await api.put("/v1/topics/txt-in", {"partitions": 1})
    await api.post("/v1/topics/txt-in/records", {"records": [{"value": "job"}]})
    _, member = await api.post("/v1/groups/txg/join", {"topic": "txt-in", "member_id": "w"})
    await api.post("/v1/queues/txq-in/messages", {"messages": [{"body": "m"}]})
    _, got = await api.post("/v1/queues/txq-in/receive", {"max": 1})
    receipt = got["messages"][0]["receipt"]
    body = {
        "txn_id": "tx-topics-1",
        "ack": [{"queue": "txq-in", "receipt": receipt}],
        "publish": [{"topic": "txt-out", "records": [{"value": "out", "key": "k"}]}],
        "commit_offsets": [
            {
                "group": "txg",
                "generation": member["generation"],
                "member_id": "w",
                "topic": "txt-in",
                "partition": 0,
                "offset": 1,
            }
        ],
    }
    status, done = await api.post("/v1/transactions", body)
    assert status == 200 and done["committed"] and not done["duplicate"], done
    assert done["results"]["ack"] == 1 and done["results"]["commit_offsets"] == 1
    placed = done["results"]["publish"][0]["records"][0]
    status, again = await api.post("/v1/transactions", body)
    assert status == 200 and again["duplicate"]
    _, info = await api.get("/v1/topics/txt-out")
    assert sum(p["high_watermark"] for p in info["partition_stats"]) == 1  # once
    _, page = await api.get(f"/v1/topics/txt-out/partitions/{placed['partition']}/records")
    assert [r["value"] for r in page["records"]] == ["out"]
    _, group = await api.get("/v1/groups/txg")
    assert group["offsets"][0]["committed"] == 1 and group["offsets"][0]["lag"] == 0


async def test_a_stale_generation_aborts_the_whole_transaction(api):
    await api.put("/v1/topics/txs-out", {"partitions": 1})
    await api.put("/v1/topics/txs-in", {"partitions": 2})
    await api.post("/v1/topics/txs-in/records", {"records": [{"value": "x", "partition": 0}]})
    _, first = await api.post("/v1/groups/txsg/join", {"topic": "txs-in", "member_id": "a"})
    await api.post("/v1/groups/txsg/join", {"topic": "txs-in", "member_id": "b"})  # rebalance
    before = await _state(api)
    body = {
        "txn_id": "tx-stale",
        "publish": [{"topic": "txs-out", "records": [{"value": "zombie output"}]}],
        "commit_offsets": [
            {
                "group": "txsg",
                "generation": first["generation"],
                "topic": "txs-in",
                "partition": 0,
                "offset": 1,
            }
        ],
    }
    status, refused = await api.post("/v1/transactions", body)
    assert status == 409 and refused["error"]["reason"] == "stale_generation"
    assert await _state(api) == before  # nothing published, nothing committed
    for bad in (
        {"txn_id": "t", "publish": [{"topic": "txs-out"}]},
        {"txn_id": "t", "publish": [{"topic": "nope", "records": [{"value": "x"}]}]},
        {"txn_id": "t", "commit_offsets": [{"group": "txsg", "topic": "txs-in"}]},
        {"txn_id": "t", "publish": "x"},
    ):
        status, answer = await api.post("/v1/transactions", bad)
        assert 400 <= status < 500, (bad, answer)
        assert await _state(api) == before
