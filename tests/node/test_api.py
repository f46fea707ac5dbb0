"""API tests against a real node process: every endpoint and every bad-input case.

Bad input must get the documented 4xx and change nothing: each bad-input test compares
the replicated state hash before and after.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import msgpack
import pytest

pytestmark = pytest.mark.integration

MSGPACK = "application/msgpack"


async def _state(api) -> str:
    _, body = await api.get("/v1/admin/state")
    return body["state_hash"]


async def test_health_ready_cluster(api):
    status, body = await api.get("/v1/health")
    assert status == 200 and body["status"] == "ok" and body["node_id"] == 1
    status, body = await api.get("/v1/ready")
    assert status == 200 and body["ready"] is True
    status, body = await api.get("/v1/cluster")
    assert status == 200
    assert body["leader"]["id"] == 1 and body["leader"]["url"] == api.url
    assert {"cluster_id", "node_id", "term", "commit_index", "applied_index", "nodes"} <= set(body)
    assert body["nodes"][0]["role"] == "leader" and body["nodes"][0]["voter"] is True


async def test_queue_lifecycle(api):
    status, cfg = await api.put("/v1/queues/life", {"visibility_timeout_s": 7})
    assert status == 201 and cfg["visibility_timeout_s"] == 7 and cfg["name"] == "life"
    status, cfg = await api.put("/v1/queues/life", {"visibility_timeout_s": 9})
    assert status == 200 and cfg["visibility_timeout_s"] == 9
    status, info = await api.get("/v1/queues/life")
    assert status == 200 and info["depth"] == 0 and info["visibility_timeout_s"] == 9
    status, listing = await api.get("/v1/queues")
    assert "life" in [q["name"] for q in listing["queues"]]
    await api.post("/v1/queues/life/messages", {"messages": [{"body": "a"}, {"body": "b"}]})
    status, body = await api.post("/v1/queues/life/purge", {})
    assert status == 200 and body["purged"] == 2
    status, _ = await api.delete("/v1/queues/life")
    assert status == 200
    status, body = await api.get("/v1/queues/life")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_send_receive_ack_roundtrip(api):
    await api.put("/v1/queues/rt", {})
    status, sent = await api.post(
        "/v1/queues/rt/messages",
        {"messages": [{"body": "hello", "attributes": {"k": "v"}, "priority": 1}]},
    )
    assert status == 200
    [meta] = sent["messages"]
    assert meta["duplicate"] is False and meta["id"]
    status, got = await api.post("/v1/queues/rt/receive", {"max": 10})
    [msg] = got["messages"]
    assert msg["id"] == meta["id"] and msg["body"] == "hello" and msg["attributes"] == {"k": "v"}
    assert msg["receive_count"] == 1 and msg["receipt"]
    _, info = await api.get("/v1/queues/rt")
    assert info["in_flight"] == 1 and info["depth"] == 0
    status, acked = await api.post("/v1/queues/rt/ack", {"receipts": [msg["receipt"]]})
    assert status == 200 and acked == {"acked": 1, "stale": []}
    # a second ack of the same receipt is stale and changes nothing
    _, again = await api.post("/v1/queues/rt/ack", {"receipts": [msg["receipt"]]})
    assert again["acked"] == 0 and again["stale"] == [msg["receipt"]]
    _, info = await api.get("/v1/queues/rt")
    assert info["in_flight"] == 0 and info["acked_total"] == 1 and info["sent_total"] == 1


async def test_binary_body_roundtrip(api):
    await api.put("/v1/queues/bin", {})
    raw = bytes(range(256))
    await api.post(
        "/v1/queues/bin/messages", {"messages": [{"body_b64": base64.b64encode(raw).decode()}]}
    )
    _, got = await api.post("/v1/queues/bin/receive", {"auto_ack": True})
    assert base64.b64decode(got["messages"][0]["body_b64"]) == raw


async def test_visibility_timeout_redelivers_with_receive_count(api):
    await api.put("/v1/queues/vis", {"visibility_timeout_s": 1})
    await api.post("/v1/queues/vis/messages", {"messages": [{"body": "x"}]})
    _, first = await api.post("/v1/queues/vis/receive", {})
    assert first["messages"][0]["receive_count"] == 1
    _, none = await api.post("/v1/queues/vis/receive", {})
    assert none["messages"] == []
    _, second = await api.post("/v1/queues/vis/receive", {"wait_s": 5})
    assert second["messages"][0]["receive_count"] == 2
    # the first receipt is now stale: the lease expired and the message went out again
    _, acked = await api.post("/v1/queues/vis/ack", {"receipts": [first["messages"][0]["receipt"]]})
    assert acked["acked"] == 0 and len(acked["stale"]) == 1


async def test_nack_extend_and_auto_ack(api):
    await api.put("/v1/queues/nx", {"visibility_timeout_s": 30})
    await api.post("/v1/queues/nx/messages", {"messages": [{"body": "1"}]})
    _, got = await api.post("/v1/queues/nx/receive", {})
    receipt = got["messages"][0]["receipt"]
    _, ext = await api.post(
        "/v1/queues/nx/extend", {"receipts": [receipt], "visibility_timeout_s": 60}
    )
    assert ext["extended"] == 1
    _, nacked = await api.post("/v1/queues/nx/nack", {"receipts": [receipt], "delay_s": 0})
    assert nacked["nacked"] == 1
    _, again = await api.post("/v1/queues/nx/receive", {"auto_ack": True})
    assert again["messages"][0]["receive_count"] == 2
    _, info = await api.get("/v1/queues/nx")
    assert info["depth"] == 0 and info["in_flight"] == 0


async def test_extend_without_a_timeout_uses_the_queues_own(api):
    """Not a fixed 30 s: with the queue's 2 s, the message is back within seconds."""
    await api.put("/v1/queues/ext", {"visibility_timeout_s": 2})
    await api.post("/v1/queues/ext/messages", {"messages": [{"body": "e"}]})
    _, got = await api.post("/v1/queues/ext/receive", {})
    receipt = got["messages"][0]["receipt"]
    status, ext = await api.post("/v1/queues/ext/extend", {"receipts": [receipt]})
    assert status == 200 and ext == {"extended": 1, "stale": []}
    _, none = await api.post("/v1/queues/ext/receive", {})
    assert none["messages"] == []  # the lease still holds right after the extend
    started = time.monotonic()
    _, again = await api.post("/v1/queues/ext/receive", {"wait_s": 15})
    assert [m["receive_count"] for m in again["messages"]] == [2]  # a 30 s lease: none here
    assert time.monotonic() - started < 10


async def test_dedup_id_answers_original(api):
    await api.put("/v1/queues/dd", {})
    _, a = await api.post("/v1/queues/dd/messages", {"messages": [{"body": "x", "dedup_id": "k1"}]})
    _, b = await api.post("/v1/queues/dd/messages", {"messages": [{"body": "x", "dedup_id": "k1"}]})
    assert (
        b["messages"][0]["id"] == a["messages"][0]["id"] and b["messages"][0]["duplicate"] is True
    )
    _, info = await api.get("/v1/queues/dd")
    assert info["depth"] == 1


async def test_fifo_group_ordering(api):
    status, _ = await api.put("/v1/queues/orders.fifo", {"fifo": True})
    assert status == 201
    status, err = await api.post("/v1/queues/orders.fifo/messages", {"messages": [{"body": "x"}]})
    assert status == 400 and err["error"]["code"] == "bad_request"
    msgs = [{"body": f"g1-{i}", "group_id": "g1"} for i in range(3)]
    await api.post("/v1/queues/orders.fifo/messages", {"messages": msgs})
    _, first = await api.post("/v1/queues/orders.fifo/receive", {"max": 10})
    assert [m["body"] for m in first["messages"]] == ["g1-0"]
    _, blocked = await api.post("/v1/queues/orders.fifo/receive", {"max": 10})
    assert blocked["messages"] == []
    await api.post("/v1/queues/orders.fifo/ack", {"receipts": [first["messages"][0]["receipt"]]})
    _, nxt = await api.post("/v1/queues/orders.fifo/receive", {"max": 10})
    assert [m["body"] for m in nxt["messages"]] == ["g1-1"]


async def test_dead_letter_and_redrive(api):
    await api.put("/v1/queues/work-dlq", {})
    await api.put("/v1/queues/work", {"max_receives": 2, "dead_letter_queue": "work-dlq"})
    await api.post("/v1/queues/work/messages", {"messages": [{"body": "poison"}]})
    for expected in (1, 2):
        _, got = await api.post("/v1/queues/work/receive", {})
        assert got["messages"][0]["receive_count"] == expected
        await api.post("/v1/queues/work/nack", {"receipts": [got["messages"][0]["receipt"]]})
    _, got = await api.post("/v1/queues/work/receive", {})
    assert got["messages"] == []  # the third receive moved it to the DLQ
    _, dlq = await api.get("/v1/queues/work-dlq")
    assert dlq["depth"] == 1
    _, work = await api.get("/v1/queues/work")
    assert work["dead_lettered_total"] == 1
    status, body = await api.post("/v1/queues/work-dlq/redrive", {})
    assert status == 200 and body["redriven"] == 1
    _, got = await api.post("/v1/queues/work/receive", {})
    assert got["messages"][0]["body"] == "poison"


async def test_delay_and_at_most_once(api):
    await api.put("/v1/queues/later", {})
    await api.post("/v1/queues/later/messages", {"messages": [{"body": "d", "delay_s": 1}]})
    _, info = await api.get("/v1/queues/later")
    assert info["delayed"] == 1
    _, got = await api.post("/v1/queues/later/receive", {"wait_s": 5})
    assert got["messages"][0]["body"] == "d"
    status, body = await api.post(
        "/v1/queues/later/messages?ack=none", {"messages": [{"body": "f"}]}
    )
    assert status == 202 and body["accepted"] == 1
    _, got = await api.post("/v1/queues/later/receive", {"wait_s": 5, "max": 5})
    assert [m["body"] for m in got["messages"]] == ["f"]


async def test_long_poll_wakes_on_send(api):
    await api.put("/v1/queues/lp", {})

    async def send_later():
        await asyncio.sleep(0.3)
        await api.post("/v1/queues/lp/messages", {"messages": [{"body": "wake"}]})

    started = time.monotonic()
    sender = asyncio.create_task(send_later())
    _, got = await api.post("/v1/queues/lp/receive", {"wait_s": 10})
    await sender
    assert got["messages"][0]["body"] == "wake"
    assert time.monotonic() - started < 5  # woke on apply, long before wait_s


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_waiting_receive_rides_in_the_next_sends_entry(api):
    """A long-poll waits; a send takes its receive into the send's own Raft entry: the
    metric counts it and the commit index moves by one entry for both."""
    await api.put("/v1/queues/ride", {})
    _, text = await api.text("/metrics")
    before = _metric(text, "raftq_receives_with_send_total")
    poll = asyncio.create_task(api.post("/v1/queues/ride/receive", {"wait_s": 10}))
    await asyncio.sleep(0.5)  # it polled, found nothing, and waits
    _, cluster = await api.get("/v1/cluster")
    commit = cluster["commit_index"]
    status, sent = await api.post("/v1/queues/ride/messages", {"messages": [{"body": "one"}]})
    assert status == 200
    _, got = await asyncio.wait_for(poll, 5)
    assert [m["id"] for m in got["messages"]] == [sent["messages"][0]["id"]]
    _, cluster = await api.get("/v1/cluster")
    assert cluster["commit_index"] == commit + 1  # the send and the receive: one entry
    _, text = await api.text("/metrics")
    assert _metric(text, "raftq_receives_with_send_total") == before + 1


async def test_a_long_poll_on_an_empty_queue_still_gets_a_message_whose_lease_ran_out(api):
    """An empty queue's long-poll waits without committing a receive, but a lease that
    runs out meanwhile brings the message back to it (nothing is left unreceivable)."""
    await api.put("/v1/queues/lapse", {})
    await api.post("/v1/queues/lapse/messages", {"messages": [{"body": "again"}]})
    _, got = await api.post("/v1/queues/lapse/receive", {"visibility_timeout_s": 1})
    assert got["messages"][0]["receive_count"] == 1
    started = time.monotonic()
    _, got = await api.post("/v1/queues/lapse/receive", {"wait_s": 10})
    assert [(m["body"], m["receive_count"]) for m in got["messages"]] == [("again", 2)]
    assert time.monotonic() - started < 5


async def test_a_send_carries_only_as_many_waiting_receives_as_it_has_messages(api):
    """Two long-polls wait; a one-message send carries the first, the other keeps waiting
    and gets the next message; none is leased twice or lost."""
    await api.put("/v1/queues/ride2", {})
    first = asyncio.create_task(api.post("/v1/queues/ride2/receive", {"wait_s": 10}))
    await asyncio.sleep(0.3)
    second = asyncio.create_task(api.post("/v1/queues/ride2/receive", {"wait_s": 10}))
    await asyncio.sleep(0.3)
    await api.post("/v1/queues/ride2/messages", {"messages": [{"body": "one"}]})
    _, got = await asyncio.wait_for(first, 5)  # first come, first served
    assert [m["body"] for m in got["messages"]] == ["one"]
    await asyncio.sleep(0.3)
    assert not second.done()
    await api.post("/v1/queues/ride2/messages", {"messages": [{"body": "two"}]})
    _, got = await asyncio.wait_for(second, 5)
    assert [m["body"] for m in got["messages"]] == ["two"]
    _, info = await api.get("/v1/queues/ride2")
    assert info["in_flight"] == 2 and info["depth"] == 0


async def test_a_null_dedup_id_is_no_dedup_id(api):
    await api.put("/v1/queues/nulldd", {})
    for _ in range(2):
        status, got = await api.post(
            "/v1/queues/nulldd/messages", {"messages": [{"body": "x", "dedup_id": None}]}
        )
        assert status == 200 and got["messages"][0]["duplicate"] is False
    _, info = await api.get("/v1/queues/nulldd")
    assert info["depth"] == 2


async def test_msgpack_bodies(api):
    await api.put("/v1/queues/mp", {})
    payload = msgpack.packb({"messages": [{"body": b"\x00\xffraw"}]})
    status, raw = await api.raw("POST", "/v1/queues/mp/messages", payload, "application/msgpack")
    assert status == 200 and msgpack.unpackb(raw)["messages"][0]["duplicate"] is False
    status, raw = await api.raw(
        "POST", "/v1/queues/mp/receive", msgpack.packb({"auto_ack": True}), "application/msgpack"
    )
    assert msgpack.unpackb(raw)["messages"][0]["body"] == b"\x00\xffraw"


async def test_metrics_exposes_queue_numbers(api):
    await api.put("/v1/queues/metered", {})
    await api.post("/v1/queues/metered/messages", {"messages": [{"body": "m"}] * 3})
    status, text = await api.text("/metrics")
    assert status == 200
    assert 'raftq_queue_depth{queue="metered"} 3' in text
    assert "raftq_raft_is_leader 1" in text
    assert "raftq_http_request_duration_seconds_bucket" in text


BAD_JSON_BODIES = [
    ("malformed", b"{not json", 400),
    ("nan", b'{"messages": [{"body": "x", "priority": NaN}]}', 400),
    ("infinity", b'{"messages": [{"body": "x", "delay_s": Infinity}]}', 400),
    ("deep", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
    ("huge_int", b'{"messages": [{"body": "x", "priority": 1' + b"0" * 40 + b"}]}", 400),
    ("not_object", b"[1, 2, 3]", 400),
    ("wrong_type_body", b'{"messages": [{"body": 5}]}', 400),
    ("bool_priority", b'{"messages": [{"body": "x", "priority": true}]}', 400),
    ("priority_range", b'{"messages": [{"body": "x", "priority": 99}]}', 400),
    ("unknown_field", b'{"messages": [{"body": "x", "colour": "red"}]}', 400),
    ("unknown_top", b'{"messages": [{"body": "x"}], "extra": 1}', 400),
    ("both_bodies", b'{"messages": [{"body": "x", "body_b64": "eA=="}]}', 400),
    ("bad_b64", b'{"messages": [{"body_b64": "***"}]}', 400),
    ("empty_batch", b'{"messages": []}', 400),
    ("attr_not_str", b'{"messages": [{"body": "x", "attributes": {"a": 1}}]}', 400),
    ("dedup_id_not_str", b'{"messages": [{"body": "x", "dedup_id": 7}]}', 400),
    ("dedup_id_empty", b'{"messages": [{"body_b64": "eA==", "dedup_id": ""}]}', 400),
    ("dedup_id_chars", b'{"messages": [{"body": "x", "dedup_id": "' + b"k" * 129 + b'"}]}', 400),
    ("group_id_not_str", b'{"messages": [{"body": "x", "group_id": ["g"]}]}', 400),
    ("group_id_chars", b'{"messages": [{"body": "x", "group_id": "' + b"g" * 129 + b'"}]}', 400),
    (
        "group_id_bytes",
        ('{"messages": [{"body": "x", "group_id": "' + chr(0x1F600) * 101 + '"}]}').encode(),
        400,
    ),
    (  # 110 characters but 440 bytes of UTF-8: over the 400-byte key budget
        "dedup_id_bytes",
        ('{"messages": [{"body": "x", "dedup_id": "' + chr(0x1F600) * 110 + '"}]}').encode(),
        400,
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "status"), BAD_JSON_BODIES, ids=[c[0] for c in BAD_JSON_BODIES]
)
async def test_bad_send_bodies_change_nothing(api, case, raw, status):
    await api.put("/v1/queues/strict", {})
    before = await _state(api)
    got_status, body = await api.raw_json("POST", "/v1/queues/strict/messages", raw)
    assert got_status == status, body
    assert body["error"]["code"] == "bad_request" and body["error"]["message"]
    assert await _state(api) == before


# A lone surrogate in every kind of string field: JSON's "\ud800" escape, or the same
# code point encoded in UTF-8 (0xED 0xA0 0x80), which json decodes with surrogatepass.
ESC, RAW = b"\\ud800", b"\xed\xa0\x80"
UNICODE_CASES = [
    ("dedup_id", "/v1/queues/uni/messages", b'{"messages": [{"body": "x", "dedup_id": "%s"}]}'),
    ("group_id", "/v1/queues/uni/messages", b'{"messages": [{"body": "x", "group_id": "%s"}]}'),
    ("body", "/v1/queues/uni/messages", b'{"messages": [{"body": "%s"}]}'),
    (
        "attributes",
        "/v1/queues/uni/messages",
        b'{"messages": [{"body": "x", "attributes": {"%s": "v"}}]}',
    ),
    ("a", "/v1/queues/uni/messages", b'{"messages": [{"body": "x", "attributes": {"a": "%s"}}]}'),
    ("messages", "/v1/queues/uni/messages", b'{"messages": [{"body": "x", "%s": 1}]}'),
    (
        "id",
        "/v1/queues/uni/messages",
        b'{"messages": [{"body": "x"}], "producer": {"id": "%s", "epoch": 0, "seq": 0}}',
    ),
    ("receipts", "/v1/queues/uni/ack", b'{"receipts": ["%s"]}'),
    ("receipts", "/v1/queues/uni/nack", b'{"receipts": ["%s"]}'),
    ("receipts", "/v1/queues/uni/extend", b'{"receipts": ["%s"]}'),
    (
        "txn_id",
        "/v1/transactions",
        b'{"txn_id": "%s", "send": [{"queue": "uni", "messages": [{"body": "x"}]}]}',
    ),
    ("receipt", "/v1/transactions", b'{"txn_id": "t", "ack": [{"queue": "uni", "receipt": "%s"}]}'),
    (
        "body",
        "/v1/transactions",
        b'{"txn_id": "t", "send": [{"queue": "uni", "messages": [{"body": "%s"}]}]}',
    ),
    ("producer_id", "/v1/producers", b'{"producer_id": "%s"}'),
    ("dead_letter_queue", "/v1/queues/uni2", b'{"dead_letter_queue": "%s"}'),
]


@pytest.mark.parametrize("encoded", [ESC, RAW], ids=["escape", "utf8"])
@pytest.mark.parametrize(
    ("field", "path", "template"), UNICODE_CASES, ids=[f"{c[1]}:{c[0]}" for c in UNICODE_CASES]
)
async def test_invalid_unicode_is_a_400_naming_the_field(api, field, path, template, encoded):
    """Every string field refuses a lone surrogate: a 400 naming it, never a 500 or a store."""
    await api.put("/v1/queues/uni", {})
    before = await _state(api)
    method = "PUT" if path == "/v1/queues/uni2" else "POST"
    status, body = await api.raw_json(method, path, template % encoded)
    assert status == 400, body
    assert body["error"]["code"] == "bad_request" and body["error"]["field"] == field, body
    assert "not valid Unicode" in body["error"]["message"]
    assert await _state(api) == before


async def test_invalid_utf8_in_msgpack_is_a_400_naming_the_field(api):
    await api.put("/v1/queues/unimp", {})
    before = await _state(api)
    # {"messages": [{"body": "x", "dedup_id": <str holding 0xED 0xA0 0x80>}]}
    payload = msgpack.packb({"messages": [{"body": "x", "dedup_id": "@@@"}]})
    payload = payload.replace(b"@@@", RAW)
    status, raw = await api.raw("POST", "/v1/queues/unimp/messages", payload, MSGPACK)
    err = msgpack.unpackb(raw)["error"]
    assert status == 400 and err["code"] == "bad_request" and err["field"] == "dedup_id", err
    assert await _state(api) == before


async def test_invalid_unicode_in_the_path_or_query_is_never_a_500(api):
    await api.put("/v1/queues/uniq", {})
    before = await _state(api)
    status, body = await api.post("/v1/queues/%ED%A0%80/receive", {})
    assert status == 400 and body["error"]["field"] == "name"
    status, body = await api.post("/v1/queues/uniq/messages?ack=%ED%A0%80", {"messages": []})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await api.get("/v1/admin/log?from=%ED%A0%80")
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, _ = await api.get("/v1/queues/uniq?consistency=%ED%A0%80")
    assert status == 200
    assert await _state(api) == before


async def test_limits_answer_413_and_change_nothing(api):
    await api.put("/v1/queues/small", {"max_message_bytes": 1024})
    before = await _state(api)
    status, body = await api.post("/v1/queues/small/messages", {"messages": [{"body": "x" * 2000}]})
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body = await api.post("/v1/queues/small/messages", {"messages": [{"body": "x"}] * 1001})
    assert status == 413 and body["error"]["code"] == "too_large"
    status, body = await api.raw_json(
        "POST",
        "/v1/queues/small/messages",
        b'{"messages": [{"body": "' + b"y" * (17 << 20) + b'"}]}',
    )
    assert status == 413 and body["error"]["code"] == "too_large"
    assert await _state(api) == before


async def test_bad_names_and_unknown_queues(api):
    before = await _state(api)
    for path in (
        "/v1/queues/bad%20name",
        "/v1/queues/" + "x" * 81,
        "/v1/queues/a$b",
        "/v1/queues/foo%0A",  # `$` also matches before a final newline: fullmatch, not match
        "/v1/queues/%0A",
        "/v1/queues/%ED%A0%80",  # a lone surrogate, percent-encoded
    ):
        status, body = await api.put(path, {})
        assert status == 400 and body["error"]["code"] == "bad_request", path
        assert body["error"]["field"] == "name", path
    for method, path, payload in (
        ("POST", "/v1/queues/ghost/messages", {"messages": [{"body": "x"}]}),
        ("POST", "/v1/queues/ghost/receive", {}),
        ("GET", "/v1/queues/ghost", None),
        ("POST", "/v1/queues/ghost/purge", {}),
    ):
        status, body = await api.call(method, path, payload)
        assert status == 404 and body["error"]["code"] == "not_found", path
    assert await _state(api) == before


async def test_bad_queue_config_changes_nothing(api):
    before = await _state(api)
    for config in (
        {"visibility_timeout_s": "30"},
        {"max_receives": -1},
        {"dead_letter_queue": "nope"},
        {"unknown_setting": 1},
        {"fifo": "yes"},
    ):
        status, body = await api.put("/v1/queues/cfg", config)
        assert status in (400, 404), config
        assert body["error"]["code"] in ("bad_request", "not_found")
    assert await _state(api) == before


async def test_integral_numbers_are_integers(api):
    """JSON has one number type: 30.0 is accepted wherever an integer is, 30.5 is not."""
    status, cfg = await api.raw_json(
        "PUT", "/v1/queues/floats", b'{"visibility_timeout_s": 30.0, "max_message_bytes": 2048.0}'
    )
    assert status == 201, cfg
    assert type(cfg["visibility_timeout_s"]) is int and cfg["visibility_timeout_s"] == 30
    assert type(cfg["max_message_bytes"]) is int and cfg["max_message_bytes"] == 2048
    status, sent = await api.raw_json(
        "POST", "/v1/queues/floats/messages", b'{"messages": [{"body": "x", "priority": 3.0}]}'
    )
    assert status == 200, sent
    status, got = await api.raw_json("POST", "/v1/queues/floats/receive", b'{"max": 2.0}')
    assert status == 200 and got["messages"][0]["priority"] == 3, got
    # msgpack floats too
    payload = msgpack.packb({"visibility_timeout_s": 45.0})
    status, raw = await api.raw("PUT", "/v1/queues/floats", payload, MSGPACK)
    assert status == 200 and msgpack.unpackb(raw)["visibility_timeout_s"] == 45

    before = await _state(api)
    status, body = await api.put("/v1/queues/floats", {"visibility_timeout_s": 30.5})
    assert status == 400 and body["error"]["field"] == "visibility_timeout_s"
    assert body["error"]["message"] == "visibility_timeout_s must be an integer in 0..43200"
    status, body = await api.post("/v1/queues/floats/receive", {"max": 2.5})
    assert status == 400 and body["error"]["message"] == "body.max must be an integer"
    status, body = await api.post(
        "/v1/queues/floats/messages", {"messages": [{"body": "x", "priority": 1.5}]}
    )
    assert status == 400 and body["error"]["message"] == "messages[0].priority must be an integer"
    assert await _state(api) == before


async def test_bad_receive_and_receipts(api):
    await api.put("/v1/queues/rx", {})
    before = await _state(api)
    for payload in ({"max": 0}, {"max": 1001}, {"wait_s": 21}, {"auto_ack": "y"}, {"bogus": 1}):
        status, body = await api.post("/v1/queues/rx/receive", payload)
        assert status in (400, 413) and body["error"]["code"] in ("bad_request", "too_large"), (
            payload
        )
    for payload in ({"receipts": []}, {"receipts": [1]}, {"receipts": "abc"}, {}):
        status, body = await api.post("/v1/queues/rx/ack", payload)
        assert status == 400, payload
    status, body = await api.raw(
        "POST", "/v1/queues/rx/receive", b"\xc1\xc1", "application/msgpack"
    )
    assert status == 400
    assert await _state(api) == before
    # a well-formed but unknown receipt is reported stale, not an error
    status, body = await api.post("/v1/queues/rx/ack", {"receipts": ["not-a-receipt"]})
    assert status == 200 and body["stale"] == ["not-a-receipt"]


async def test_follower_redirects_writes_to_leader_on_request(cluster3_api):
    leader, follower = cluster3_api.leader, cluster3_api.follower
    status, body, headers = await follower.call_with_headers(
        "PUT", "/v1/queues/redir", {}, allow_redirects=False, headers={"X-Raftq-Redirect": "1"}
    )
    assert status == 307 and body["error"]["code"] == "not_leader"
    assert (
        body["leader_url"] == leader.url and headers["Location"] == leader.url + "/v1/queues/redir"
    )
    status, body, _ = await follower.call_with_headers("GET", "/v1/cluster", None)
    assert status == 200 and body["leader"]["url"] == leader.url


def test_error_body_shape_is_json():
    # the documented error shape, as a plain check on our own helper
    from node.http import ApiError

    err = ApiError(307, "not_leader", "go", leader_id=2, leader_url="http://x")
    assert json.loads(json.dumps(err.body())) == {
        "error": {"code": "not_leader", "message": "go"},
        "leader_id": 2,
        "leader_url": "http://x",
    }


async def test_admin_log_lists_committed_entries_under_load(api):
    """The chaos checker samples /v1/admin/log while writes are in flight: never a 500."""
    await api.put("/v1/queues/adminlog", {})

    async def writer() -> None:
        for i in range(40):
            await api.post("/v1/queues/adminlog/messages", {"messages": [{"body": str(i)}]})

    task = asyncio.create_task(writer())
    while not task.done():
        status, body = await api.get("/v1/admin/log?from=1")
        assert status == 200, body
        indexes = [e[0] for e in body["entries"]]
        assert indexes == list(range(1, len(indexes) + 1))
        await asyncio.sleep(0)
    await task


def _metric(text: str, name: str) -> int:
    return int(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


async def test_concurrent_writes_share_entries_and_keep_their_own_results(api):
    """Coalescing: concurrent requests ride in shared Raft entries; each answer is its own."""
    assert (await api.put("/v1/queues/coal", {"visibility_timeout_s": 60}))[0] in (200, 201)
    _, before = await api.text("/metrics")
    sends = await asyncio.gather(
        *(
            api.post("/v1/queues/coal/messages", {"messages": [{"body": f"m{i}"}]})
            for i in range(40)
        )
    )
    assert all(status == 200 for status, _ in sends)
    ids = [body["messages"][0]["id"] for _, body in sends]
    assert len(set(ids)) == 40
    _, after = await api.text("/metrics")
    commands = _metric(after, "raftq_coalesced_commands_total") - _metric(
        before, "raftq_coalesced_commands_total"
    )
    entries = _metric(after, "raftq_coalesced_entries_total") - _metric(
        before, "raftq_coalesced_entries_total"
    )
    assert commands == 40 and entries < 40  # some requests shared an entry

    status, got = await api.post("/v1/queues/coal/receive", {"max": 10})
    assert status == 200 and len(got["messages"]) == 10
    receipts = [m["receipt"] for m in got["messages"]]
    # Each ack request carries one good receipt and one bogus one: each answer names only its own.
    acks = await asyncio.gather(
        *(
            api.post("/v1/queues/coal/ack", {"receipts": [r, f"{'0' * 15}{i}.9"]})
            for i, r in enumerate(receipts)
        )
    )
    for i, (status, body) in enumerate(acks):
        assert status == 200, body
        assert body["acked"] == 1 and body["stale"] == [f"{'0' * 15}{i}.9"]
    status, info = await api.get("/v1/queues/coal")
    assert info["depth"] == 30 and info["in_flight"] == 0


@pytest.mark.parametrize("exc_name", ["ProposalDropped", "LeadershipLost"])
async def test_lost_or_dropped_proposals_answer_leader_changed(exc_name: str) -> None:
    """Both mean "outcome unknown, retry with the same dedup_id": 503 leader_changed."""
    from types import SimpleNamespace

    from node.http import ApiError
    from node.queue_service import QueueService
    from raft import errors

    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(getattr(errors, exc_name)("gone"))
    fake = SimpleNamespace(config=SimpleNamespace(propose_timeout_s=1.0))
    with pytest.raises(ApiError) as caught:
        await QueueService._proposal_outcome(fake, fut)  # type: ignore[arg-type]
    assert caught.value.status == 503 and caught.value.code == "leader_changed"
    assert "same dedup_id" in caught.value.message
