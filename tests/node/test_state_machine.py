"""QueueStateMachine on a real LMDB env: every op, its errors, time, crash-safety."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from node.commands import decode_command, encode_command
from node.errors import BadRequest
from node.state import keys, messages, timers
from node.state.messages import receipt_tag
from node.state.transactions import MAX_TXN_ID_CHARS
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry, EntryKind
from raft.state_machine import StateMachine
from tests.node.harness import Harness


@pytest.fixture
def h(tmp_path) -> Iterator[Harness]:
    harness = Harness(str(tmp_path / "env"))
    try:
        yield harness
    finally:
        harness.close()


def assert_refused(h: Harness, code: str, op: str, **fields) -> dict:
    """The command fails with `code` and changes nothing at all."""
    before = h.sm.state_hash()
    result = h.run(op, **fields)
    assert "error" in result, result
    assert result["error"]["code"] == code, result
    assert isinstance(result["error"]["message"], str) and result["error"]["message"]
    assert h.sm.state_hash() == before
    return result["error"]


# ---- commands ---------------------------------------------------------------------------


def test_command_round_trip_keeps_bytes() -> None:
    data = encode_command("send", 5, queue="q", messages=[{"body": b"\x00\xff"}])
    cmd = decode_command(data)
    assert cmd == {"v": 1, "op": "send", "ts": 5, "queue": "q", "messages": [{"body": b"\x00\xff"}]}


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2, "op": "tick", "ts": 1}),
        msgpack.packb({"v": 1, "op": "explode", "ts": 1}),
        msgpack.packb({"v": 1, "op": "tick", "ts": -1}),
        msgpack.packb({"v": 1, "op": "tick", "ts": True}),
        msgpack.packb({"v": True, "op": "tick", "ts": 1}),
    ],
)
def test_decode_command_refuses_bad_envelopes(data: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_command(data)


def test_bad_command_bytes_are_an_error_result_and_change_nothing(h: Harness) -> None:
    h.create("q")
    before = h.sm.state_hash()
    results = h.sm.apply([Entry(h.index + 1, 1, data=b"\x93garbage")])
    h.index += 1
    assert results[0]["error"]["code"] == "bad_request"
    assert h.sm.applied_index() == h.index  # only applied_index moved
    assert h.sm.state_hash() == before


def test_queue_info_of_a_bad_or_missing_name_is_none(h: Harness) -> None:
    assert h.sm.queue_info("x" * 600, h.now_ms) is None
    assert h.sm.queue_info("missing", h.now_ms) is None


def test_is_a_raft_state_machine(h: Harness) -> None:
    assert isinstance(h.sm, StateMachine)
    assert h.sm.applied_index() == 0


# ---- queue_put / delete / purge -----------------------------------------------------------


def test_queue_put_creates_with_defaults_then_updates(h: Harness) -> None:
    created = h.create("orders")
    assert created["created"] is True
    assert created["queue"] == {
        "name": "orders",
        "fifo": False,
        "visibility_timeout_s": 30,
        "max_receives": 0,
        "dead_letter_queue": None,
        "retention_s": 345600,
        "delay_s": 0,
        "dedup_window_s": 300,
        "max_message_bytes": 262144,
        "content_based_dedup": False,
        "expires_s": None,
    }
    updated = h.ok("queue_put", name="orders", config={"visibility_timeout_s": 5})
    assert updated["created"] is False
    assert updated["queue"]["visibility_timeout_s"] == 5
    assert updated["queue"]["retention_s"] == 345600
    assert h.info("orders")["visibility_timeout_s"] == 5


def test_fifo_name_implies_fifo(h: Harness) -> None:
    assert h.create("jobs.fifo")["queue"]["fifo"] is True
    err = assert_refused(h, "bad_request", "queue_put", name="x.fifo", config={"fifo": False})
    assert err["field"] == "fifo"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"visibility_timeout_s": -1}, "visibility_timeout_s"),
        ({"visibility_timeout_s": "30"}, "visibility_timeout_s"),
        ({"visibility_timeout_s": True}, "visibility_timeout_s"),
        ({"max_receives": 3}, "max_receives"),
        ({"dedup_window_s": 86401}, "dedup_window_s"),
        ({"retention_s": 0}, "retention_s"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
        ({"fifo": 1}, "fifo"),
        ({"content_based_dedup": True}, "content_based_dedup"),
        ({"dead_letter_queue": "missing"}, "dead_letter_queue"),
        ({"dead_letter_queue": "bad name!"}, "dead_letter_queue"),
        ({"dead_letter_queue": "q"}, "dead_letter_queue"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_queue_put_refuses_bad_config(h: Harness, config: dict, field: str) -> None:
    err = assert_refused(h, "bad_request", "queue_put", name="q", config=config)
    assert err["field"] == field
    assert h.sm.queue_info("q", h.now_ms) is None


def test_queue_put_refuses_bad_names_and_non_map_config(h: Harness) -> None:
    assert_refused(h, "bad_request", "queue_put", name="has space", config={})
    assert_refused(h, "bad_request", "queue_put", name="", config={})
    assert_refused(h, "bad_request", "queue_put", name=7, config={})
    assert_refused(h, "bad_request", "queue_put", name="q", config=[1])
    # `$` matches before a trailing newline: the rule must hold for the whole name
    assert_refused(h, "bad_request", "queue_put", name="foo\n", config={})
    h.create("work")
    err = assert_refused(
        h, "bad_request", "queue_put", name="q", config={"dead_letter_queue": "work\n"}
    )
    assert err["field"] == "dead_letter_queue"
    assert h.sm.queue_info("work\n", h.now_ms) is None


def test_changing_fifo_is_a_conflict(h: Harness) -> None:
    h.create("plain")
    assert_refused(h, "conflict", "queue_put", name="plain", config={"fifo": True})


def test_dead_letter_queue_must_match_fifo(h: Harness) -> None:
    h.create("dlq")
    err = assert_refused(
        h,
        "bad_request",
        "queue_put",
        name="jobs.fifo",
        config={"max_receives": 2, "dead_letter_queue": "dlq"},
    )
    assert err["field"] == "dead_letter_queue"


def test_delete_removes_queue_messages_and_dedup(h: Harness) -> None:
    h.create("q")
    h.send("q", b"a", b"b", dedup_id=None)
    h.ok("send", queue="q", messages=[{"body": b"c", "dedup_id": "d1"}])
    h.receive("q", 1)
    assert h.ok("queue_delete", name="q") == {"deleted": True, "messages": 3}
    assert h.sm.queue_info("q", h.now_ms) is None
    assert h.sm.list_queues(h.now_ms) == []
    h.create("q")  # a new queue with the same name starts empty, dedup forgotten
    assert h.info("q")["depth"] == 0
    again = h.ok("send", queue="q", messages=[{"body": b"c", "dedup_id": "d1"}])
    assert again["messages"][0]["duplicate"] is False
    assert_refused(h, "not_found", "queue_delete", name="missing")


def test_delete_of_a_dead_letter_queue_in_use_is_a_conflict(h: Harness) -> None:
    h.create("dlq")
    h.create("q", max_receives=1, dead_letter_queue="dlq")
    err = assert_refused(h, "conflict", "queue_delete", name="dlq")
    assert err["used_by"] == ["q"]


def test_purge_drops_every_message_but_keeps_totals(h: Harness) -> None:
    h.create("q")
    h.send("q", b"a", b"b", b"c")
    h.send("q", b"later", delay_s=60)
    h.receive("q", 1)
    assert h.ok("queue_purge", name="q") == {"purged": 4}
    info = h.info("q")
    assert (info["depth"], info["in_flight"], info["delayed"], info["sent_total"]) == (0, 0, 0, 4)
    assert h.receive("q") == []
    assert h.sm.next_deadline_ms() is None
    assert_refused(h, "not_found", "queue_purge", name="missing")


# ---- send -------------------------------------------------------------------------------


def test_send_assigns_unique_increasing_ids_and_counts(h: Harness) -> None:
    h.create("a")
    h.create("b")
    first = h.send("a", b"1", b"2")
    second = h.send("b", b"3")
    seqs = [m["seq"] for m in first + second]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert len({m["id"] for m in first + second}) == 3
    assert all(m["duplicate"] is False for m in first + second)
    assert h.info("a")["depth"] == 2 and h.info("a")["sent_total"] == 2


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([], "bad_request"),
        ("nope", "bad_request"),
        ([{"body": "text"}], "bad_request"),
        ([{"body": b"x", "priority": 10}], "bad_request"),
        ([{"body": b"x", "priority": "1"}], "bad_request"),
        ([{"body": b"x", "delay_s": -1}], "bad_request"),
        ([{"body": b"x", "attributes": {"k": 1}}], "bad_request"),
        ([{"body": b"x", "dedup_id": ""}], "bad_request"),
        ([{"body": b"x", "dedup_id": "\U0001f600" * 101}], "bad_request"),  # 404 bytes
        ([{"body": b"x", "group_id": "\U0001f600" * 101}], "bad_request"),
        ([{"body": b"x", "surprise": 1}], "bad_request"),
        ([{"body": b"ok"}, {"body": b"x" * 101}], "too_large"),
        ([{"body": b"x"}] * 1001, "too_large"),
    ],
)
def test_send_refuses_bad_batches_whole(h: Harness, messages, code: str) -> None:
    h.create("q", max_message_bytes=100)
    assert_refused(h, code, "send", queue="q", messages=messages)
    assert h.info("q")["depth"] == 0


def test_send_to_missing_queue_is_not_found(h: Harness) -> None:
    assert_refused(h, "not_found", "send", queue="nope", messages=[{"body": b"x"}])


def test_dedup_id_answers_original_even_after_ack_until_window_ends(h: Harness) -> None:
    h.create("q", dedup_window_s=60)
    first = h.ok("send", queue="q", messages=[{"body": b"x", "dedup_id": "k"}])["messages"][0]
    again = h.ok("send", queue="q", messages=[{"body": b"y", "dedup_id": "k"}])["messages"][0]
    assert again == {"id": first["id"], "seq": first["seq"], "duplicate": True}
    got = h.receive("q")
    assert [m["body"] for m in got] == [b"x"]
    h.ok("ack", queue="q", receipts=[got[0]["receipt"]])
    h.advance(59)
    assert h.ok("send", queue="q", messages=[{"body": b"z", "dedup_id": "k"}])["messages"][0][
        "duplicate"
    ]
    h.advance(1)
    fresh = h.ok("send", queue="q", messages=[{"body": b"z", "dedup_id": "k"}])["messages"][0]
    assert fresh["duplicate"] is False and fresh["id"] != first["id"]
    assert h.info("q")["sent_total"] == 2


def test_dedup_within_one_batch_and_table_stays_bounded(h: Harness) -> None:
    h.create("q", dedup_window_s=10)
    res = h.ok("send", queue="q", messages=[{"body": b"a", "dedup_id": "same"}] * 3)["messages"]
    assert [m["duplicate"] for m in res] == [False, True, True]
    for i in range(50):
        h.ok("send", queue="q", messages=[{"body": b"x", "dedup_id": f"id-{i}"}])
    h.advance(11)
    assert h.ok("tick")["dedup_expired"] == 51
    count = h.env.read(lambda txn: txn.stat(h.sm.tables.dedup)["entries"])
    assert count == 0


def test_a_batch_mixing_new_and_known_dedup_ids_claims_one_by_one(h: Harness) -> None:
    """The all-at-once claim finds a known id, leaves nothing behind, and the one-by-one
    path answers exactly as if it had never been tried: seqs stay consecutive."""
    h.create("q", dedup_window_s=60)
    known = h.ok("send", queue="q", messages=[{"body": b"k", "dedup_id": "known"}])["messages"]
    batch = [
        {"body": b"a", "dedup_id": "new-a"},
        {"body": b"k2", "dedup_id": "known"},
        {"body": b"b"},
        {"body": b"c", "dedup_id": "new-c"},
    ]
    res = h.ok("send", queue="q", messages=batch)["messages"]
    seq = known[0]["seq"]
    assert res == [
        {"id": format(seq + 1, "016x"), "seq": seq + 1, "duplicate": False},
        {**known[0], "duplicate": True},
        {"id": format(seq + 2, "016x"), "seq": seq + 2, "duplicate": False},
        {"id": format(seq + 3, "016x"), "seq": seq + 3, "duplicate": False},
    ]
    dedup_seqs = h.env.read(
        lambda txn: sorted(
            keys.split_dedup_record(v)[0] for _, v in txn.cursor(db=h.sm.tables.dedup)
        )
    )
    assert dedup_seqs == [seq, seq + 1, seq + 3]  # no record left by the failed claim
    assert [m["body"] for m in h.receive("q", 10)] == [b"k", b"a", b"b", b"c"]


def test_an_all_new_batch_gets_the_same_seqs_as_one_by_one_sends(h: Harness) -> None:
    h.create("q", dedup_window_s=60)
    res = h.ok(
        "send",
        queue="q",
        messages=[{"body": b"a", "dedup_id": "x"}, {"body": b"b"}, {"body": b"c", "dedup_id": "y"}],
    )["messages"]
    assert [m["seq"] for m in res] == [1, 2, 3] and not any(m["duplicate"] for m in res)
    again = h.ok("send", queue="q", messages=[{"body": b"c2", "dedup_id": "y"}])["messages"]
    assert again == [{**res[2], "duplicate": True}]


def test_new_meta_encode_and_decode_agree_on_the_field_order() -> None:
    meta = messages.new_meta(
        seq=5,
        ident=messages.message_id(5),
        enqueued_at=1,
        expire_ms=2,
        priority=3,
        group_id="g",
        attributes={"a": "b"},
        dedup_id="d",
        source_queue="src",
        receive_count=4,
        lease=6,
    )
    assert tuple(meta) == messages.META_FIELDS
    decoded = messages.decode_meta(messages.encode_meta(meta))
    assert decoded == meta and tuple(decoded) == messages.META_FIELDS
    assert msgpack.unpackb(messages.encode_meta(meta)) == list(meta.values())


def test_message_records_are_positional_and_older_map_records_still_work(h: Harness) -> None:
    """Records are lists now; a record an earlier version wrote as a map is still read,
    delivered, acked and purged like any other."""
    h.create("q")
    first, second = h.send("q", b"old", b"new")
    db = h.sm.tables.messages

    def records(txn: Any) -> list[Any]:
        return [msgpack.unpackb(v, raw=False) for _, v in txn.cursor(db=db)]

    stored = h.env.read(records)
    assert [type(r) for r in stored] == [list, list]
    as_map = messages.decode_meta(msgpack.packb(stored[0]))  # what an old version wrote
    assert as_map["id"] == first["id"] and as_map["seq"] == first["seq"]

    def rewrite_first_as_map(txn: Any) -> None:
        key = next(iter(txn.cursor(db=db)))[0]
        txn.put(key, msgpack.packb(as_map), db=db)

    h.env.write(rewrite_first_as_map)
    assert [type(r) for r in h.env.read(records)] == [dict, list]
    got = h.receive("q")
    assert [(m["id"], m["body"]) for m in got] == [(first["id"], b"old"), (second["id"], b"new")]
    assert h.ok("ack", queue="q", receipts=[got[0]["receipt"]]) == {"acked": 1, "stale": []}
    h.ok("nack", queue="q", receipts=[got[1]["receipt"]])
    assert h.ok("queue_purge", name="q") == {"purged": 1}
    assert h.env.read(records) == []


def test_dedup_table_stays_flat_over_several_windows(h: Harness) -> None:
    """A steady stream of unique ids: the table holds about one window's worth, no more."""
    h.create("steady", dedup_window_s=10)
    per_second, sizes, n = 20, [], 0
    for second in range(60):  # six windows
        batch = [{"body": b"x", "dedup_id": f"u-{n + i}"} for i in range(per_second)]
        n += per_second
        h.ok("send", queue="steady", messages=batch)
        h.advance(1)
        if second % 10 == 9:
            sizes.append(h.env.read(lambda txn: txn.stat(h.sm.tables.dedup)["entries"]))
    window_worth = 10 * per_second
    assert all(window_worth - per_second <= s <= window_worth + per_second for s in sizes), sizes
    assert max(sizes) - min(sizes) <= per_second, sizes  # flat, not growing with n=1,200


def test_content_based_dedup_on_fifo(h: Harness) -> None:
    h.create("q.fifo", content_based_dedup=True)
    a = h.send("q.fifo", b"same", group_id="g")
    b = h.send("q.fifo", b"same", group_id="g")
    c = h.send("q.fifo", b"other", group_id="g")
    assert b[0] == {**a[0], "duplicate": True}
    assert c[0]["duplicate"] is False
    assert h.info("q.fifo")["depth"] == 2


def test_longest_ids_fit_in_lmdb_keys(h: Harness) -> None:
    h.create("q.fifo")
    longest = "\U0001f600" * 100  # 400 bytes of UTF-8: the limit
    msg = {"body": b"x", "dedup_id": longest, "group_id": longest}
    first = h.ok(
        "send", queue="q.fifo", messages=[msg], producer={"id": longest, "epoch": 0, "seq": 0}
    )
    assert h.receive("q.fifo")[0]["group_id"] == longest
    assert h.ok("send", queue="q.fifo", messages=[msg])["messages"][0] == {
        **first["messages"][0],
        "duplicate": True,
    }
    assert h.ok("txn", txn_id="t" * 256, send=[])["committed"] is True


def test_fifo_requires_group_id(h: Harness) -> None:
    h.create("q.fifo")
    err = assert_refused(h, "bad_request", "send", queue="q.fifo", messages=[{"body": b"x"}])
    assert err["field"] == "messages[0].group_id"


# ---- receive / ack / nack / extend ------------------------------------------------------


def test_receive_orders_by_priority_then_seq_and_counts_deliveries(h: Harness) -> None:
    h.create("q")
    h.ok(
        "send",
        queue="q",
        messages=[
            {"body": b"low1"},
            {"body": b"high", "priority": 9},
            {"body": b"mid", "priority": 5, "attributes": {"b": "2", "a": "1"}},
            {"body": b"low2"},
        ],
    )
    got = h.receive("q", 3)
    assert [m["body"] for m in got] == [b"high", b"mid", b"low1"]
    assert got[1]["attributes"] == {"a": "1", "b": "2"}
    assert all(m["receive_count"] == 1 for m in got)
    assert got[0]["enqueued_at"] == h.now_ms and got[0]["priority"] == 9
    info = h.info("q")
    assert (info["depth"], info["in_flight"]) == (1, 3)
    assert [m["body"] for m in h.receive("q")] == [b"low2"]
    assert h.receive("q") == []


def test_receive_stops_at_its_queue_and_at_the_end_of_the_ready_index(h: Harness) -> None:
    """The receive loop walks node.ready with one cursor: it must stop where the next
    queue's keys begin, and when it deletes the very last key of the index."""
    h.create("first")
    h.create("last")  # the larger queue id: its keys end the index
    h.send("first", b"f1", b"f2")
    h.send("last", b"l1", b"l2")
    assert [m["body"] for m in h.receive("first", 10)] == [b"f1", b"f2"]
    assert [m["body"] for m in h.receive("last", 10)] == [b"l1", b"l2"]
    assert h.receive("first") == [] and h.receive("last") == []
    for name in ("first", "last"):
        info = h.info(name)
        assert (info["depth"], info["in_flight"]) == (0, 2)


def test_receive_dead_letters_mid_walk_and_leases_the_rest(h: Harness) -> None:
    """A message the walk moves to the dead-letter queue sits before ones it leases."""
    h.create("dlq")
    h.create("q", visibility_timeout_s=1, max_receives=1, dead_letter_queue="dlq")
    h.send("q", b"once")
    assert [m["body"] for m in h.receive("q")] == [b"once"]
    h.advance(2)  # its lease ends: ready again, its one receive spent
    h.send("q", b"keep1", b"keep2")
    assert [m["body"] for m in h.receive("q", 10)] == [b"keep1", b"keep2"]
    assert [m["body"] for m in h.receive("dlq", 10)] == [b"once"]
    info = h.info("q")
    assert (info["depth"], info["in_flight"], info["dead_lettered_total"]) == (0, 2, 1)


def test_receive_drops_an_expired_message_mid_walk(h: Harness, monkeypatch) -> None:
    """Retention normally ends before the command runs (release_due); when that release
    is behind (its per-command limit), the walk itself drops the expired message."""
    h.create("q", retention_s=600)
    h.send("q", b"y0")
    h.create("q", retention_s=60)
    h.send("q", b"x1")
    h.create("q", retention_s=600)
    h.send("q", b"x2")
    h.advance(120)  # x1's retention is over, y0's and x2's are not
    monkeypatch.setattr(timers, "RELEASE_LIMIT", 0)
    assert [m["body"] for m in h.receive("q", 10)] == [b"y0", b"x2"]
    info = h.info("q")
    assert (info["depth"], info["in_flight"], info["expired_total"]) == (0, 2, 1)


def test_receive_refuses_bad_fields(h: Harness) -> None:
    h.create("q")
    assert_refused(h, "bad_request", "receive", queue="q", max=0)
    assert_refused(h, "bad_request", "receive", queue="q", max=1001)
    assert_refused(h, "bad_request", "receive", queue="q", max=1, visibility_timeout_s=-1)
    assert_refused(h, "bad_request", "receive", queue="q", max=1, auto_ack="yes")
    assert_refused(h, "not_found", "receive", queue="other", max=1)


def test_ack_deletes_and_reports_stale_receipts(h: Harness) -> None:
    h.create("q")
    h.send("q", b"a", b"b")
    got = h.receive("q")
    receipts = [m["receipt"] for m in got]
    res = h.ok("ack", queue="q", receipts=[receipts[0], receipts[0], "garbage", 17])
    assert res == {"acked": 1, "stale": [receipts[0], "garbage", 17]}
    info = h.info("q")
    assert (info["in_flight"], info["acked_total"]) == (1, 1)
    assert_refused(h, "bad_request", "ack", queue="q", receipts=[])
    assert_refused(h, "not_found", "ack", queue="zz", receipts=receipts)


def test_receipt_of_another_queue_is_stale(h: Harness) -> None:
    h.create("a")
    h.create("b")
    h.send("a", b"x")
    receipt = h.receive("a")[0]["receipt"]
    assert h.ok("ack", queue="b", receipts=[receipt]) == {"acked": 0, "stale": [receipt]}


def test_a_receipt_cannot_be_guessed_from_the_message_id(h: Harness) -> None:
    """A receipt is {id}.{lease}.{tag}; one with the right id and lease but another tag
    (none, forged, or made with another cluster's key) is stale and changes nothing."""
    h.create("q")
    h.send("q", b"x")
    got = h.receive("q", visibility_timeout_s=60)[0]
    ident, lease, tag = got["receipt"].split(".")
    assert (ident, lease) == (got["id"], "1") and len(tag) == 16
    other_key = receipt_tag(b"another-cluster", "q", ident, 1)
    guesses = [f"{ident}.{lease}", f"{ident}.{lease}.{'A' * 16}", f"{ident}.{lease}.{other_key}"]
    for guess in guesses:
        assert h.ok("ack", queue="q", receipts=[guess]) == {"acked": 0, "stale": [guess]}
        assert h.ok("extend", queue="q", receipts=[guess], visibility_timeout_s=1)["stale"] == [
            guess
        ]
    assert h.info("q")["in_flight"] == 1
    assert h.ok("ack", queue="q", receipts=[got["receipt"]]) == {"acked": 1, "stale": []}


def test_receipts_are_tagged_with_the_clusters_key(tmp_path) -> None:
    """Replicas with the same key make and accept the same receipts; another key's
    receipts are stale."""
    keyed = [Harness(str(tmp_path / name)) for name in ("a", "b", "c")]
    for h, key in zip(keyed, (b"k" * 32, b"k" * 32, b"z" * 32), strict=True):
        h.sm = QueueStateMachine(h.env, receipt_key=key)
        h.create("q")
        h.send("q", b"x")
    a, b, c = (h.receive("q")[0]["receipt"] for h in keyed)
    assert a == b != c
    assert keyed[0].ok("ack", queue="q", receipts=[c])["stale"] == [c]
    assert keyed[1].ok("ack", queue="q", receipts=[a])["acked"] == 1
    for h in keyed:
        h.close()


def test_counter_records_are_fixed_width_and_older_map_records_still_work(h: Harness) -> None:
    from node.state import counters, keys

    h.create("q")
    h.send("q", b"a", b"b")
    qid = _queue_id(h, "q")
    key = keys.u64(qid)
    raw = h.env.read(lambda txn: txn.get(key, db=h.sm.tables.counters))
    assert len(raw) == 8 * len(counters.COUNTER_NAMES)
    stored = counters.decode(raw)
    assert stored["depth"] == stored["sent_total"] == 2

    # What an earlier version wrote: a msgpack map.
    h.env.write(lambda txn: txn.put(key, msgpack.packb(stored), db=h.sm.tables.counters))
    h.reopen()
    assert h.info("q")["depth"] == 2  # read as it is
    h.send("q", b"c")
    assert h.info("q")["depth"] == 3 and h.info("q")["sent_total"] == 3
    raw = h.env.read(lambda txn: txn.get(key, db=h.sm.tables.counters))
    assert counters.decode(raw) == {**stored, "depth": 3, "sent_total": 3}
    assert len(raw) == 8 * len(counters.COUNTER_NAMES)  # rewritten fixed-width


def test_lease_expires_by_later_command_time_and_old_receipt_goes_stale(h: Harness) -> None:
    h.create("q", visibility_timeout_s=10)
    h.send("q", b"x")
    first = h.receive("q")[0]
    h.advance(9.999)
    assert h.receive("q") == []
    h.advance(0.001)
    second = h.receive("q")  # the lease ended exactly now: visible again
    assert [m["receive_count"] for m in second] == [2]
    assert second[0]["receipt"] != first["receipt"]
    res = h.ok("ack", queue="q", receipts=[first["receipt"], second[0]["receipt"]])
    assert res == {"acked": 1, "stale": [first["receipt"]]}


def test_ack_after_deadline_is_stale_even_before_any_release(h: Harness) -> None:
    h.create("q", visibility_timeout_s=5)
    h.send("q", b"x")
    receipt = h.receive("q")[0]["receipt"]
    h.advance(5)
    assert h.ok("ack", queue="q", receipts=[receipt]) == {"acked": 0, "stale": [receipt]}
    assert h.info("q")["depth"] == 1


def test_time_never_goes_backwards(h: Harness) -> None:
    h.create("q", visibility_timeout_s=10)
    h.send("q", b"x")
    h.receive("q")
    h.advance(20)
    h.ok("tick")  # releases the lease at t+20
    assert h.info("q")["depth"] == 1
    got = h.ok("receive", ts_ms=h.now_ms - 15_000, queue="q", max=1)["messages"]
    assert got  # effective time is still t+20: the new lease runs from there
    h.advance(9)
    assert h.receive("q") == []
    assert h.sm.last_ts_ms() == h.now_ms


def test_visibility_timeout_override_and_queue_default(h: Harness) -> None:
    h.create("q", visibility_timeout_s=100)
    h.send("q", b"a", b"b")
    h.receive("q", 1, visibility_timeout_s=1)
    h.receive("q", 1)
    h.advance(1)
    assert [m["body"] for m in h.receive("q")] == [b"a"]


def test_nack_makes_visible_again_with_optional_delay(h: Harness) -> None:
    h.create("q", visibility_timeout_s=100)
    h.send("q", b"a", b"b")
    a, b = h.receive("q")
    res = h.ok("nack", queue="q", receipts=[a["receipt"], "bogus"])
    assert res == {"nacked": 1, "stale": ["bogus"]}
    again = h.receive("q")
    assert [(m["body"], m["receive_count"]) for m in again] == [(b"a", 2)]
    h.ok("nack", queue="q", receipts=[b["receipt"]], delay_s=30)
    assert h.info("q")["delayed"] == 1
    h.advance(29)
    assert h.receive("q") == []
    h.advance(1)
    assert [m["body"] for m in h.receive("q")] == [b"b"]
    assert_refused(h, "bad_request", "nack", queue="q", receipts=["x"], delay_s=-5)


def test_extend_moves_the_deadline(h: Harness) -> None:
    h.create("q", visibility_timeout_s=10)
    h.send("q", b"a")
    receipt = h.receive("q")[0]["receipt"]
    h.advance(8)
    assert h.ok("extend", queue="q", receipts=[receipt, "x"], visibility_timeout_s=10) == {
        "extended": 1,
        "stale": ["x"],
    }
    h.advance(9)
    assert h.receive("q") == []
    assert h.ok("ack", queue="q", receipts=[receipt])["acked"] == 1
    assert_refused(
        h, "bad_request", "extend", queue="q", receipts=[receipt], visibility_timeout_s="1"
    )


def test_auto_ack_deletes_at_delivery(h: Harness) -> None:
    h.create("q")
    h.send("q", b"a", b"b")
    got = h.receive("q", 1, auto_ack=True)
    assert got[0]["body"] == b"a"
    info = h.info("q")
    assert (info["depth"], info["in_flight"], info["acked_total"]) == (1, 0, 1)
    assert h.ok("ack", queue="q", receipts=[got[0]["receipt"]])["stale"] == [got[0]["receipt"]]


# ---- delays, retention ------------------------------------------------------------------


def test_queue_delay_and_message_delay(h: Harness) -> None:
    h.create("q", delay_s=5)
    h.send("q", b"queue-delay")
    h.send("q", b"own-delay", delay_s=2)
    assert h.info("q")["delayed"] == 2
    assert h.sm.next_deadline_ms() == h.now_ms + 2000
    h.advance(2)
    assert [m["body"] for m in h.receive("q")] == [b"own-delay"]
    h.advance(3)
    assert h.ok("tick")["delays_ended"] == 1
    assert [m["body"] for m in h.receive("q")] == [b"queue-delay"]


def test_retention_drops_messages_in_any_state(h: Harness) -> None:
    h.create("q", retention_s=60, visibility_timeout_s=600)
    h.send("q", b"ready", b"inflight")
    h.send("q", b"delayed", delay_s=120)
    h.receive("q", 1)
    h.advance(30)
    h.send("q", b"young")
    h.advance(30)
    assert h.ok("tick")["expired"] == 3
    info = h.info("q")
    assert (info["depth"], info["in_flight"], info["delayed"], info["expired_total"]) == (
        1,
        0,
        0,
        3,
    )
    assert info["oldest_age_ms"] == 30_000
    assert [m["body"] for m in h.receive("q")] == [b"young"]


# ---- FIFO -------------------------------------------------------------------------------


def test_fifo_group_blocks_until_ack_and_keeps_send_order(h: Harness) -> None:
    h.create("q.fifo", visibility_timeout_s=10)
    h.ok(
        "send",
        queue="q.fifo",
        messages=[
            {"body": b"a1", "group_id": "a"},
            {"body": b"b1", "group_id": "b", "priority": 9},
            {"body": b"a2", "group_id": "a", "priority": 9},
            {"body": b"b2", "group_id": "b"},
        ],
    )
    first = h.receive("q.fifo", 10)
    assert [m["body"] for m in first] == [b"a1", b"b1"]  # one per group, seq order
    assert h.receive("q.fifo", 10) == []
    h.ok("ack", queue="q.fifo", receipts=[first[0]["receipt"]])
    assert [m["body"] for m in h.receive("q.fifo", 10)] == [b"a2"]
    h.advance(10)  # b1's lease ends: b1 again, not b2
    assert [(m["body"], m["receive_count"]) for m in h.receive("q.fifo", 10)] == [
        (b"b1", 2),
        (b"a2", 2),
    ]


def test_fifo_auto_ack_hands_out_a_group_in_order(h: Harness) -> None:
    h.create("q.fifo")
    h.send("q.fifo", b"1", b"2", b"3", group_id="g")
    got = h.receive("q.fifo", 10, auto_ack=True)
    assert [m["body"] for m in got] == [b"1", b"2", b"3"]


def test_fifo_delayed_head_blocks_its_group(h: Harness) -> None:
    h.create("q.fifo")
    h.send("q.fifo", b"1", group_id="g", delay_s=10)
    h.send("q.fifo", b"2", group_id="g")
    h.send("q.fifo", b"x", group_id="other")
    assert [m["body"] for m in h.receive("q.fifo", 10, auto_ack=True)] == [b"x"]
    h.advance(10)
    assert [m["body"] for m in h.receive("q.fifo", 10, auto_ack=True)] == [b"1", b"2"]


# ---- dead letters and redrive -----------------------------------------------------------


def test_dead_letter_after_max_receives_then_redrive(h: Harness) -> None:
    h.create("dlq")
    h.create("q", max_receives=2, dead_letter_queue="dlq", visibility_timeout_s=1)
    sent = h.send("q", b"poison", b"fine")
    for expected_count in (1, 2):
        got = h.receive("q", 1)
        assert [(m["body"], m["receive_count"]) for m in got] == [(b"poison", expected_count)]
        h.advance(1)
    got = h.receive("q", 1)  # the third delivery would exceed 2: poison moves to the DLQ
    assert [m["body"] for m in got] == [b"fine"]
    h.ok("ack", queue="q", receipts=[got[0]["receipt"]])
    assert h.info("q")["dead_lettered_total"] == 1
    dead = h.receive("dlq", 10, visibility_timeout_s=1)
    assert [(m["id"], m["body"], m["receive_count"]) for m in dead] == [
        (sent[0]["id"], b"poison", 3)
    ]
    h.advance(1)
    assert h.ok("redrive", queue="dlq") == {"redriven": 1}
    assert h.info("dlq")["depth"] == 0
    back = h.receive("q", 10)
    assert [(m["body"], m["receive_count"]) for m in back] == [(b"poison", 1)]
    assert_refused(h, "not_found", "redrive", queue="missing")


def test_redrive_skips_in_flight_messages(h: Harness) -> None:
    h.create("dlq", visibility_timeout_s=100)
    h.create("q", max_receives=1, dead_letter_queue="dlq", visibility_timeout_s=1)
    h.send("q", b"a", b"b")
    h.receive("q", 10)
    h.advance(1)
    assert h.receive("q", 10) == []
    assert h.info("dlq")["depth"] == 2
    h.receive("dlq", 1)
    assert h.ok("redrive", queue="dlq") == {"redriven": 1}
    assert h.info("dlq")["in_flight"] == 1 and h.info("q")["depth"] == 1


def test_fifo_dead_letter_keeps_groups(h: Harness) -> None:
    h.create("dlq.fifo")
    h.create("q.fifo", max_receives=1, dead_letter_queue="dlq.fifo", visibility_timeout_s=1)
    h.send("q.fifo", b"1", b"2", group_id="g")
    h.receive("q.fifo")
    h.advance(1)
    # 1 goes to the DLQ; 2 becomes the group's head and is delivered
    assert [m["body"] for m in h.receive("q.fifo")] == [b"2"]
    assert [m["group_id"] for m in h.receive("dlq.fifo")] == ["g"]


# ---- batches, crash safety, determinism -------------------------------------------------


def test_failed_command_in_a_batch_changes_nothing_while_others_commit(h: Harness) -> None:
    h.create("q")
    entries = [
        h.entry("send", queue="q", messages=[{"body": b"1"}]),
        h.entry("send", queue="q", messages=[{"body": b"ok"}, {"body": 5}]),
        Entry(h.index + 1, 1, EntryKind.NOOP),
        h.entry("send", queue="missing", messages=[{"body": b"2"}]),
        h.entry("send", queue="q", messages=[{"body": b"3"}]),
    ]
    h.index += 1  # the NOOP
    entries[3:] = [Entry(e.index + 1, e.term, e.kind, e.data) for e in entries[3:]]
    h.index = entries[-1].index
    results = h.sm.apply(entries)
    assert "messages" in results[0] and "messages" in results[4]
    assert results[1]["error"]["code"] == "bad_request"
    assert results[2] is None
    assert results[3]["error"]["code"] == "not_found"
    assert [m["body"] for m in h.receive("q")] == [b"1", b"3"]
    assert h.sm.applied_index() == h.index


def test_reapplying_an_applied_batch_is_a_no_op(h: Harness) -> None:
    h.create("q")
    batch = [h.entry("send", queue="q", messages=[{"body": b"x"}]) for _ in range(3)]
    h.sm.apply(batch)
    before = h.sm.state_hash()
    assert h.sm.apply(batch) == [None, None, None]
    assert h.sm.state_hash() == before
    assert h.info("q")["depth"] == 3


def test_reopen_gives_identical_state_and_applied_index(h: Harness) -> None:
    h.create("dlq")
    h.create("q", max_receives=3, dead_letter_queue="dlq")
    h.send("q", b"a", b"b", b"c", priority=3)
    h.receive("q", 2)
    before = (h.sm.state_hash(), h.sm.applied_index(), h.sm.list_queues(h.now_ms))
    h.reopen()
    assert (h.sm.state_hash(), h.sm.applied_index(), h.sm.list_queues(h.now_ms)) == before
    assert [m["body"] for m in h.receive("q")] == [b"c"]


def test_same_log_gives_same_state_hash_on_two_replicas(tmp_path) -> None:
    a = Harness(str(tmp_path / "a"))
    b = Harness(str(tmp_path / "b"))
    try:
        log = [a.entry("queue_put", name="q", config={"visibility_timeout_s": 1})]
        log += [a.entry("send", queue="q", messages=[{"body": b"%d" % i}]) for i in range(20)]
        log += [a.entry("receive", ts_ms=a.now_ms + 500, queue="q", max=5)]
        log += [a.entry("tick", ts_ms=a.now_ms + 5000)]
        results_a = [a.sm.apply([e])[0] for e in log]
        results_b = b.sm.apply(log)  # one batch vs one entry at a time
        assert results_a == results_b
        assert a.sm.state_hash() == b.sm.state_hash()
    finally:
        a.close()
        b.close()


def test_a_batch_with_refused_commands_matches_one_entry_at_a_time(tmp_path) -> None:
    """A refusal anywhere in a batch makes it run again with a child transaction per
    command: results and state must be what applying each entry alone gives."""
    a = Harness(str(tmp_path / "a"))
    b = Harness(str(tmp_path / "b"))
    try:
        log = [a.entry("queue_put", name="q", config={"visibility_timeout_s": 1})]
        log += [a.entry("send", queue="q", messages=[{"body": b"%d" % i}]) for i in range(5)]
        log += [a.entry("receive", queue="q", max=3)]
        # refused, and stamped after the first lease ends: kept, its clock would expire it
        log += [a.entry("send", ts_ms=a.now_ms + 1000, queue="missing", messages=[{"body": b"x"}])]
        first = f"0000000000000001.1.{receipt_tag(b'', 'q', '0000000000000001', 1)}"
        log += [a.entry("ack", queue="q", receipts=[first, "bogus"])]
        log += [a.entry("receive", ts_ms=a.now_ms + 2000, queue="q", max=10)]
        log += [a.entry("queue_put", name="q", config={"fifo": True})]  # refused last
        results_a = [a.sm.apply([e])[0] for e in log]
        results_b = b.sm.apply(log)
        assert results_a == results_b
        assert results_b[7]["error"]["code"] == "not_found"
        # the refused send left the clock alone: the first lease is still current
        assert results_b[8] == {"acked": 1, "stale": ["bogus"]}
        assert results_b[-1]["error"]["code"] == "conflict"
        assert a.sm.state_hash() == b.sm.state_hash()
        assert b.sm.applied_index() == log[-1].index
    finally:
        a.close()
        b.close()


def test_state_hash_covers_only_node_tables_and_changes_with_state(h: Harness) -> None:
    empty = h.sm.state_hash()
    assert len(empty) == 64
    other = h.env.db("raft.something")
    h.env.write(lambda txn: txn.put(b"k", b"v", db=other))
    assert h.sm.state_hash() == empty
    h.create("q")
    assert h.sm.state_hash() != empty


def test_tick_reports_counts_and_next_deadline(h: Harness) -> None:
    assert h.sm.next_deadline_ms() is None
    h.create("q", visibility_timeout_s=3, retention_s=100)
    h.send("q", b"a")
    assert h.sm.next_deadline_ms() == h.now_ms + 100_000
    h.receive("q")
    assert h.sm.next_deadline_ms() == h.now_ms + 3000
    h.advance(3)
    assert h.ok("tick") == {
        "expired": 0,
        "leases_expired": 1,
        "delays_ended": 0,
        "dedup_expired": 0,
        "txns_expired": 0,
    }


def test_large_queue_stays_out_of_python_memory_and_receive_stays_cheap(h: Harness) -> None:
    """200,000 messages: traced Python memory stays flat, receive touches O(batch) keys."""
    h.create("big", visibility_timeout_s=600)
    body = hashlib.sha256(b"x").digest() * 8  # 256 bytes; 200k of them = ~51 MB of bodies
    batch = [{"body": body, "priority": 0}] * 1000
    for _ in range(150):
        h.ok("send", queue="big", messages=batch)
    # Trace the last 50,000 (tracing is slow): kept in Python they would be > 12 MB.
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(50):
            h.ok("send", queue="big", messages=batch)
        grown, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert h.info("big")["depth"] == 200_000
    assert grown - base < 1 << 20, grown - base  # state is in LMDB, not in Python
    assert peak - base < 8 << 20, peak - base  # one batch at a time
    # Delivery cost does not depend on depth: 10 messages out of 200k must be quick even on
    # a loaded CI core (a scan would read ~60 MB and take seconds).
    started = time.perf_counter()
    for _ in range(20):
        assert len(h.receive("big", 10)) == 10
    per_receive_s = (time.perf_counter() - started) / 20
    assert per_receive_s < 0.05, per_receive_s
    assert h.info("big")["in_flight"] == 200


# ---- exactly-once: producer sessions ----------------------------------------------------


def test_producer_init_new_ids_and_bumped_epochs(h: Harness) -> None:
    first = h.ok("producer_init")
    second = h.ok("producer_init")
    assert first["epoch"] == second["epoch"] == 0
    assert first["producer_id"] != second["producer_id"]
    assert h.ok("producer_init", producer_id=first["producer_id"]) == {
        "producer_id": first["producer_id"],
        "epoch": 1,
    }
    assert h.ok("producer_init", producer_id="mine")["epoch"] == 0
    assert_refused(h, "bad_request", "producer_init", producer_id="")


def test_producer_sequence_dedups_retries_and_refuses_gaps(h: Harness) -> None:
    h.create("q")
    p = h.ok("producer_init")
    producer = {"id": p["producer_id"], "epoch": 0, "seq": 0}
    first = h.ok("send", queue="q", messages=[{"body": b"a"}, {"body": b"b"}], producer=producer)
    retry = h.ok("send", queue="q", messages=[{"body": b"a"}, {"body": b"b"}], producer=producer)
    assert retry == {"messages": [{**m, "duplicate": True} for m in first["messages"]]}
    assert h.info("q")["depth"] == 2
    err = assert_refused(
        h,
        "out_of_order_sequence",
        "send",
        queue="q",
        messages=[{"body": b"c"}],
        producer={**producer, "seq": 2},
    )
    assert err["expected_seq"] == 1
    h.ok("send", queue="q", messages=[{"body": b"c"}], producer={**producer, "seq": 1})
    assert h.info("q")["depth"] == 3
    # sessions are per queue: another queue starts its own sequence
    h.create("other")
    h.ok("send", queue="other", messages=[{"body": b"x"}], producer={**producer, "seq": 7})


def test_new_epoch_fences_the_zombie_producer(h: Harness) -> None:
    h.create("q")
    p = h.ok("producer_init", producer_id="worker")
    old = {"id": "worker", "epoch": p["epoch"], "seq": 0}
    h.ok("send", queue="q", messages=[{"body": b"a"}], producer=old)
    h.ok("producer_init", producer_id="worker")  # the restarted producer: epoch 1
    err = assert_refused(
        h,
        "producer_fenced",
        "send",
        queue="q",
        messages=[{"body": b"z"}],
        producer={**old, "seq": 1},
    )
    assert err["epoch"] == 1
    fresh = {"id": "worker", "epoch": 1, "seq": 0}
    assert not h.ok("send", queue="q", messages=[{"body": b"b"}], producer=fresh)["messages"][0][
        "duplicate"
    ]


@pytest.mark.parametrize(
    "producer",
    ["p", {"id": "p", "epoch": -1, "seq": 0}, {"id": "p", "epoch": 0}, {"epoch": 0, "seq": 0}],
)
def test_bad_producer_fields_are_refused(h: Harness, producer) -> None:
    h.create("q")
    assert_refused(
        h, "bad_request", "send", queue="q", messages=[{"body": b"a"}], producer=producer
    )


def test_producer_sessions_are_replicated_state(h: Harness) -> None:
    h.create("q")
    producer = {"id": "w", "epoch": 0, "seq": 5}
    first = h.ok("send", queue="q", messages=[{"body": b"a"}], producer=producer)
    h.reopen()  # a restarted node (or a new leader) still knows the session
    again = h.ok("send", queue="q", messages=[{"body": b"a"}], producer=producer)
    assert again["messages"][0] == {**first["messages"][0], "duplicate": True}


# ---- exactly-once: transactions ---------------------------------------------------------


def test_txn_acks_and_sends_once(h: Harness) -> None:
    h.create("in")
    h.create("out")
    h.send("in", b"job1", b"job2")
    got = h.receive("in", 2)
    txn = {
        "txn_id": "t-1",
        "ack": [{"queue": "in", "receipt": m["receipt"]} for m in got],
        "send": [{"queue": "out", "messages": [{"body": b"result"}]}],
        "commit_offsets": [],
    }
    result = h.ok("txn", **txn)
    assert result["committed"] is True and result["duplicate"] is False
    assert result["txn_id"] == "t-1"
    assert result["results"]["ack"] == 2
    assert result["results"]["send"][0]["queue"] == "out"
    before = h.sm.state_hash()
    h.advance(1)
    repeat = h.ok("txn", **txn)
    assert repeat == {**result, "duplicate": True}
    assert h.info("out")["depth"] == 1 and h.info("in")["depth"] == 0
    assert h.info("in")["acked_total"] == 2
    assert h.sm.state_hash() != before  # only the clock moved...
    assert h.info("out")["sent_total"] == 1  # ...nothing was applied twice


def test_txn_with_a_stale_receipt_applies_nothing(h: Harness) -> None:
    h.create("in", visibility_timeout_s=5)
    h.create("out")
    h.send("in", b"a", b"b")
    a, b = h.receive("in", 2)
    h.ok("ack", queue="in", receipts=[b["receipt"]])  # b's receipt is now stale
    err = assert_refused(
        h,
        "conflict",
        "txn",
        txn_id="t-2",
        ack=[{"queue": "in", "receipt": a["receipt"]}, {"queue": "in", "receipt": b["receipt"]}],
        send=[{"queue": "out", "messages": [{"body": b"x"}]}],
    )
    assert err["stale"] == [{"queue": "in", "receipt": b["receipt"]}]
    assert h.info("in")["in_flight"] == 1 and h.info("out")["depth"] == 0
    # the txn id was not used up: the same id may commit once the receipts are good
    ok = h.ok("txn", txn_id="t-2", ack=[{"queue": "in", "receipt": a["receipt"]}], send=[])
    assert ok["duplicate"] is False


def test_txn_from_a_zombie_after_lease_expiry_is_refused(h: Harness) -> None:
    h.create("in", visibility_timeout_s=5)
    h.create("out")
    h.send("in", b"a")
    zombie = h.receive("in")[0]
    h.advance(5)
    assert_refused(
        h,
        "conflict",
        "txn",
        txn_id="z",
        ack=[{"queue": "in", "receipt": zombie["receipt"]}],
        send=[{"queue": "out", "messages": [{"body": b"x"}]}],
    )


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"ack": [], "send": []}, "bad_request"),  # no txn_id
        ({"txn_id": "t", "ack": "x"}, "bad_request"),
        ({"txn_id": "t" * (MAX_TXN_ID_CHARS + 1)}, "bad_request"),
        ({"txn_id": "t", "ack": [{"queue": "in"}]}, "bad_request"),
        ({"txn_id": "t", "send": [{"queue": "nope", "messages": [{"body": b"x"}]}]}, "not_found"),
        ({"txn_id": "t", "send": [{"queue": "in", "messages": [{"body": 1}]}]}, "bad_request"),
        ({"txn_id": "t", "commit_offsets": [{"group": "g"}]}, "bad_request"),
    ],
)
def test_bad_txns_are_refused_whole(h: Harness, fields: dict, code: str) -> None:
    h.create("in")
    h.send("in", b"a")
    receipt = h.receive("in")[0]["receipt"]
    fields = {**fields}
    if "txn_id" in fields and "ack" not in fields:
        fields["ack"] = [{"queue": "in", "receipt": receipt}]  # would succeed alone
    assert_refused(h, code, "txn", **fields)
    assert h.info("in")["in_flight"] == 1


def test_txn_ids_expire_after_the_window(h: Harness) -> None:
    h.create("out")
    send = [{"queue": "out", "messages": [{"body": b"x"}]}]
    h.ok("txn", txn_id="t", send=send)
    h.advance(299)
    assert h.ok("txn", txn_id="t", send=send)["duplicate"] is True
    h.advance(1)
    assert h.ok("txn", txn_id="t", send=send)["duplicate"] is False
    assert h.info("out")["depth"] == 2
    h.advance(300)
    assert h.ok("tick")["txns_expired"] == 1


def test_map_full_grows_and_retries_the_whole_batch(tmp_path) -> None:
    env = LmdbEnv(str(tmp_path / "small"), map_size=256 << 10, sync=False)
    try:
        sm = QueueStateMachine(env)
        body = bytes(range(256)) * 64  # 16 KiB
        entries = [Entry(1, 1, data=encode_command("queue_put", 1, name="q", config={}))]
        entries += [
            Entry(i, 1, data=encode_command("send", 1, queue="q", messages=[{"body": body}] * 8))
            for i in range(2, 12)
        ]
        results = sm.apply(entries)
        assert all("error" not in r for r in results)
        assert sm.applied_index() == 11
        assert sm.queue_info("q", 1)["depth"] == 80  # each message stored exactly once
        assert env.env.info()["map_size"] > 256 << 10
    finally:
        env.close()


def test_a_rerun_batch_forgets_the_timer_floors_its_undone_writes_raised(h: Harness) -> None:
    """A batch with a refused command runs again, one child transaction per command. What
    the undone attempt released (and what the refused command released) comes back, so the
    timer floors those releases raised must go too: kept, they would make the rerun skip a
    due lease on this replica only (a restarted replica knows no floors and would release it).
    """
    h.create("q")
    [sent] = h.send("q", b"m")
    h.receive("q", visibility_timeout_s=5)
    h.advance(10)  # the lease is due; nothing has released it yet
    refused, received = h.sm.apply(
        [
            h.entry("send", queue="missing", messages=[{"body": b"x"}]),  # refused after release
            h.entry("receive", queue="q", max=1),
        ]
    )
    assert refused["error"]["code"] == "not_found"
    assert [(m["id"], m["receive_count"]) for m in received["messages"]] == [(sent["id"], 2)]


def test_a_map_full_retry_starts_from_the_committed_timer_floors(tmp_path) -> None:
    """MapFullError aborts the whole write and LmdbEnv runs the batch again: the lease that
    the first attempt released is back, and the retry must release it again."""
    env = LmdbEnv(str(tmp_path / "small"), map_size=256 << 10, sync=False)
    try:
        sm = QueueStateMachine(env)
        sm.apply([Entry(1, 1, data=encode_command("queue_put", 1, name="q", config={}))])
        sm.apply(
            [Entry(2, 1, data=encode_command("send", 1, queue="q", messages=[{"body": b"m"}]))]
        )
        [leased] = sm.apply(
            [Entry(3, 1, data=encode_command("receive", 1, queue="q", visibility_timeout_s=1))]
        )[0]["messages"]
        body = bytes(range(256)) * 64  # 16 KiB
        later = 10_000  # the lease ended at 1,001
        entries = [Entry(4, 1, data=encode_command("receive", later, queue="q"))]
        entries += [
            Entry(
                i, 1, data=encode_command("send", later, queue="q", messages=[{"body": body}] * 8)
            )
            for i in range(5, 15)
        ]
        results = sm.apply(entries)
        assert env.env.info()["map_size"] > 256 << 10  # it did run out and retry
        assert [(m["id"], m["receive_count"]) for m in results[0]["messages"]] == [
            (leased["id"], 2)
        ]
    finally:
        env.close()


def test_release_is_bounded_per_command_and_late_acks_stay_stale(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timers, "RELEASE_LIMIT", 2)
    h.create("q", visibility_timeout_s=5)
    h.send("q", *[b"%d" % i for i in range(5)])
    receipts = [m["receipt"] for m in h.receive("q", 5)]
    h.advance(5)
    first = h.ok("ack", queue="q", receipts=receipts)  # releases 2 leases, sees 5 expired
    assert first == {"acked": 0, "stale": receipts}
    assert h.info("q")["depth"] == 2 and h.info("q")["in_flight"] == 3
    assert h.sm.next_deadline_ms() <= h.now_ms  # the leader knows to tick again
    assert h.ok("tick")["leases_expired"] == 2
    assert h.ok("tick")["leases_expired"] == 1
    assert h.info("q")["depth"] == 5


def test_queue_config_cache_follows_updates_and_deletes(h: Harness) -> None:
    h.create("cfg", visibility_timeout_s=5)
    assert h.sm.queue_config("cfg")["visibility_timeout_s"] == 5
    assert h.sm.queue_config("cfg")["visibility_timeout_s"] == 5  # answered from the cache
    h.ok("queue_put", name="cfg", config={"visibility_timeout_s": 9})
    assert h.sm.queue_config("cfg")["visibility_timeout_s"] == 9
    assert h.sm.queue_config("nope") is None
    h.create("nope")
    assert h.sm.queue_config("nope") is not None  # a cached miss is dropped too
    h.ok("queue_delete", name="cfg")
    assert h.sm.queue_config("cfg") is None


def test_dedup_records_are_fixed_width_and_legacy_maps_still_read() -> None:
    from node.state import keys

    assert keys.split_dedup_record(keys.dedup_record(5, 9)) == (5, 9)
    legacy = msgpack.packb({"id": "0000000000000005", "seq": 5, "expire": 9})
    assert keys.split_dedup_record(legacy) == (5, 9)


def _queue_id(h: Harness, name: str) -> int:
    from node.state import queues
    from node.state.tables import Ctx

    return h.env.read(lambda txn: queues.get_queue(Ctx(txn, h.sm.tables, 0), name)["id"])


def _table_entries(h: Harness, name: str) -> int:
    return h.env.read(lambda txn: txn.stat(getattr(h.sm.tables, name))["entries"])


def test_one_expiry_record_per_send_and_per_id_records_still_expire(h: Harness) -> None:
    """A send lists its new dedup ids in one expiry record; the older one-record-per-id
    format (written by earlier versions) is still read and expired."""
    from node.state import keys

    h.create("q", dedup_window_s=10)
    qid = _queue_id(h, "q")
    h.ok("send", queue="q", messages=[{"body": b"x", "dedup_id": f"n{i}"} for i in range(3)])
    h.ok("send", queue="q", messages=[{"body": b"y", "dedup_id": "n0"}])  # a duplicate
    assert _table_entries(h, "dedup") == 3
    assert _table_entries(h, "dedup_expiry") == 1
    old_key, old_expire = keys.dedup_key(qid, "old"), h.now_ms + 5_000

    def write_old_format(txn) -> None:
        txn.put(old_key, keys.dedup_record(999, old_expire), db=h.sm.tables.dedup)
        txn.put(keys.expiry_key(old_expire, old_key), b"", db=h.sm.tables.dedup_expiry)

    h.env.write(write_old_format)
    h.reopen()  # as after an upgrade: the old records were on disk when this version started
    dup = h.ok("send", queue="q", messages=[{"body": b"z", "dedup_id": "old"}])["messages"][0]
    assert dup == {"id": "00000000000003e7", "seq": 999, "duplicate": True}
    h.advance(11)
    assert h.ok("tick")["dedup_expired"] == 4
    assert _table_entries(h, "dedup") == _table_entries(h, "dedup_expiry") == 0


def test_sends_sharing_a_stamp_write_expiry_records_of_their_own(h: Harness) -> None:
    """Under load many sends share a stamp: each lists its ids in its own record (no
    read-modify-write of one growing list), and the layout before that, (expiry, queue)
    -> ids, still expires."""
    from node.state import keys

    h.create("q", dedup_window_s=10)
    h.create("other", dedup_window_s=10)
    qid = _queue_id(h, "q")
    for i in range(3):  # the same stamp: h.now_ms does not move
        h.ok(
            "send", queue="q", messages=[{"body": b"x", "dedup_id": f"s{i}-{j}"} for j in range(4)]
        )
    h.ok("send", queue="other", messages=[{"body": b"x", "dedup_id": "o"}])
    assert _table_entries(h, "dedup") == 13 and _table_entries(h, "dedup_expiry") == 4
    listed = h.env.read(
        lambda txn: [
            msgpack.unpackb(v, raw=False)
            for k, v in txn.cursor(db=h.sm.tables.dedup_expiry)
            if k[8:16] == keys.u64(qid)
        ]
    )
    assert listed == [[f"s{i}-{j}" for j in range(4)] for i in range(3)]

    older_expire = h.now_ms + 5_000

    def write_older_layout(txn) -> None:
        dedup_key = keys.dedup_key(qid, "older")
        txn.put(dedup_key, keys.dedup_record(999, older_expire), db=h.sm.tables.dedup)
        record_key = keys.expiry_key(older_expire, keys.u64(qid))
        txn.put(record_key, msgpack.packb(["older"]), db=h.sm.tables.dedup_expiry)

    h.env.write(write_older_layout)
    h.reopen()  # as after an upgrade: the old records were on disk when this version started
    h.advance(6)
    assert h.ok("tick")["dedup_expired"] == 1  # the older layout's record, due first
    h.advance(5)
    assert h.ok("tick")["dedup_expired"] == 13
    assert _table_entries(h, "dedup") == _table_entries(h, "dedup_expiry") == 0


def test_a_reremembered_id_outlives_its_older_expiry_record(h: Harness) -> None:
    """An id remembered again after its window ended (but before the purge reached it) is
    listed in two expiry records: the older one must not forget the newer entry."""
    from node.state import dedup, keys
    from node.state.tables import Ctx

    h.create("q", dedup_window_s=10)
    qid = _queue_id(h, "q")
    key = keys.dedup_key(qid, "k")
    t0 = h.now_ms

    def remember_at(now: int, seq: int):
        def fn(txn) -> None:
            ctx = Ctx(txn, h.sm.tables, now)
            if not dedup.claim(ctx, key, seq, now + 10_000):
                dedup.remember(ctx, key, seq, now + 10_000, dedup.stored(ctx, key))
            dedup.index_expiry(ctx, qid, now + 10_000, seq, ["k"])

        return fn

    def expire_at(now: int):
        return lambda txn: dedup.expire_due(Ctx(txn, h.sm.tables, now), 100)

    h.env.write(remember_at(t0, 1))
    h.env.write(remember_at(t0 + 12_000, 2))  # window over, not purged yet
    assert h.env.write(expire_at(t0 + 12_000)) == 0  # old record: the stored expiry moved on
    assert h.env.read(lambda txn: dedup.stored(Ctx(txn, h.sm.tables, 0), key)) == (2, t0 + 22_000)
    assert _table_entries(h, "dedup_expiry") == 1
    assert h.env.write(expire_at(t0 + 22_000)) == 1
    assert _table_entries(h, "dedup") == _table_entries(h, "dedup_expiry") == 0


def test_deleting_a_queue_drops_its_dedup_expiry_records(h: Harness) -> None:
    h.create("gone", dedup_window_s=10)
    h.create("kept", dedup_window_s=10)
    for name in ("gone", "kept"):
        h.ok(
            "send",
            queue=name,
            messages=[{"body": b"x", "dedup_id": f"{name}{i}"} for i in range(5)],
        )
        h.ok("send", queue=name, messages=[{"body": b"y", "dedup_id": f"{name}-again"}])
    assert _table_entries(h, "dedup_expiry") == 4  # two sends per queue, one stamp
    h.ok("queue_delete", name="gone")
    assert _table_entries(h, "dedup") == 6 and _table_entries(h, "dedup_expiry") == 2


def test_applied_state_reads_the_index_and_the_hash_together(h: Harness) -> None:
    h.create("q")
    h.send("q", b"a")
    assert h.sm.applied_state() == (h.sm.applied_index(), h.sm.state_hash())
    before = h.sm.applied_state()
    h.send("q", b"b")
    after = h.sm.applied_state()
    assert after[0] == before[0] + 1 and after[1] != before[1]
