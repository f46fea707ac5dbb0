"""Exchanges in the state machine: records, bindings, routing per type, all-or-nothing
publishes, alternate queues, bindings dropped with their queue, and queue expiry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from node.state import exchanges
from tests.node.harness import Harness
from tests.node.test_state_machine import assert_refused


@pytest.fixture
def h(tmp_path) -> Iterator[Harness]:
    harness = Harness(str(tmp_path / "env"))
    try:
        yield harness
    finally:
        harness.close()


def exchange(h: Harness, name: str, kind: str, **extra) -> dict:
    return h.ok("exchange_put", name=name, type=kind, **extra)


def bind(h: Harness, name: str, queue: str, **spec) -> dict:
    return h.ok("exchange_bind", exchange=name, queue=queue, **spec)


def publish(h: Harness, name: str, *messages: dict) -> list[dict]:
    return h.ok("exchange_publish", exchange=name, messages=list(messages))["messages"]


def bodies(h: Harness, queue: str) -> list[bytes]:
    return [m["body"] for m in h.receive(queue, 100)]


def test_exchange_record_create_update_and_type_fixed(h: Harness) -> None:
    h.create("alt")
    first = exchange(h, "ev", "fanout")
    assert first["created"] is True
    assert first["exchange"] == {
        "name": "ev",
        "type": "fanout",
        "alternate_queue": None,
        "binding_count": 0,
        "published_total": 0,
        "routed_total": 0,
        "unroutable_total": 0,
    }
    again = exchange(h, "ev", "fanout", alternate_queue="alt")
    assert again["created"] is False and again["exchange"]["alternate_queue"] == "alt"
    assert_refused(h, "conflict", "exchange_put", name="ev", type="topic")
    assert_refused(h, "bad_request", "exchange_put", name="ev2", type="nope")
    assert_refused(h, "bad_request", "exchange_put", name="a/b", type="direct")
    assert_refused(h, "bad_request", "exchange_put", name="x", type="direct", alternate_queue="no")
    assert [e["name"] for e in h.sm.list_exchanges()] == ["ev"]
    assert h.sm.exchange_info("missing") is None


def test_fanout_copies_to_every_bound_queue_in_sorted_order(h: Harness) -> None:
    for q in ("email", "analytics", "crm"):
        h.create(q)
    exchange(h, "signup", "fanout")
    for q in ("email", "crm", "analytics"):
        assert bind(h, "signup", q)["created"] is True
    assert bind(h, "signup", "crm")["created"] is False  # the same binding twice is one
    [result] = publish(h, "signup", {"body": b"alice", "routing_key": "anything"})
    assert result["routed_to"] == ["analytics", "crm", "email"]
    assert result["unroutable"] is False and result["duplicates"] == []
    # sorted queue order: the copies' sequence numbers follow it
    assert [int(result["ids"][q], 16) for q in result["routed_to"]] == sorted(
        int(i, 16) for i in result["ids"].values()
    )
    for q in ("email", "analytics", "crm"):
        assert bodies(h, q) == [b"alice"]
    info = h.sm.exchange_info("signup")
    assert info["published_total"] == 1 and info["routed_total"] == 3
    assert [b["queue"] for b in info["bindings"]] == ["analytics", "crm", "email"]


def test_direct_routes_by_exact_key(h: Harness) -> None:
    h.create("err")
    h.create("all")
    exchange(h, "logs", "direct")
    bind(h, "logs", "err", routing_key="error")
    for key in ("error", "info"):
        bind(h, "logs", "all", routing_key=key)
    out = publish(
        h,
        "logs",
        {"body": b"1", "routing_key": "error"},
        {"body": b"2", "routing_key": "info"},
        {"body": b"3", "routing_key": "debug"},
        {"body": b"4", "routing_key": "error.x"},
    )
    assert [r["routed_to"] for r in out] == [["all", "err"], ["all"], [], []]
    assert [r["unroutable"] for r in out] == [False, False, True, True]
    assert bodies(h, "err") == [b"1"]
    assert bodies(h, "all") == [b"1", b"2"]
    assert h.sm.exchange_info("logs")["unroutable_total"] == 2


def test_topic_routes_by_pattern_once_per_queue(h: Harness) -> None:
    for q in ("payment", "inventory", "shipping", "audit"):
        h.create(q)
    exchange(h, "orders", "topic")
    bind(h, "orders", "payment", pattern="order.created")
    bind(h, "orders", "inventory", pattern="order.*")
    bind(h, "orders", "shipping", pattern="order.paid")
    bind(h, "orders", "audit", pattern="#")
    bind(h, "orders", "audit", routing_key="order.#")  # matches too: still one copy
    out = publish(
        h,
        "orders",
        {"body": b"c", "routing_key": "order.created"},
        {"body": b"p", "routing_key": "order.paid"},
        {"body": b"r", "routing_key": "order.refund.partial"},
    )
    assert out[0]["routed_to"] == ["audit", "inventory", "payment"]
    assert out[1]["routed_to"] == ["audit", "inventory", "shipping"]
    assert out[2]["routed_to"] == ["audit"]
    assert bodies(h, "audit") == [b"c", b"p", b"r"]
    assert bodies(h, "inventory") == [b"c", b"p"]


def test_headers_match_all_or_any_and_headers_become_attributes(h: Harness) -> None:
    h.create("pdf-eu")
    h.create("anything-eu")
    exchange(h, "docs", "headers")
    bind(h, "docs", "pdf-eu", headers={"format": "pdf", "region": "eu"})
    bind(h, "docs", "anything-eu", headers={"region": "eu", "format": "zip"}, match="any")
    out = publish(
        h,
        "docs",
        {"body": b"1", "headers": {"format": "pdf", "region": "eu", "x": "y"}},
        {"body": b"2", "headers": {"format": "pdf"}},
        {"body": b"3", "headers": {"region": "eu"}, "attributes": {"region": "own"}},
    )
    assert [r["routed_to"] for r in out] == [["anything-eu", "pdf-eu"], [], ["anything-eu"]]
    got = h.receive("anything-eu")
    assert got[0]["attributes"] == {"format": "pdf", "region": "eu", "x": "y"}
    assert got[1]["attributes"] == {"region": "own"}  # its own attributes win
    assert_refused(h, "bad_request", "exchange_bind", exchange="docs", queue="pdf-eu")
    assert_refused(
        h, "bad_request", "exchange_bind", exchange="docs", queue="pdf-eu", headers={}, match="x"
    )


def test_unroutable_goes_to_the_alternate_queue(h: Harness) -> None:
    h.create("lost")
    h.create("a")
    exchange(h, "d", "direct", alternate_queue="lost")
    bind(h, "d", "a", routing_key="a")
    out = publish(h, "d", {"body": b"x", "routing_key": "b"}, {"body": b"y", "routing_key": "a"})
    assert out[0] == {
        "routed_to": ["lost"],
        "ids": {"lost": out[0]["ids"]["lost"]},
        "duplicates": [],
        "unroutable": True,
    }
    assert bodies(h, "lost") == [b"x"]
    h.ok("queue_delete", name="lost")  # an alternate deleted later is skipped
    [r] = publish(h, "d", {"body": b"z", "routing_key": "b"})
    assert r["routed_to"] == [] and r["unroutable"] is True
    assert h.sm.exchange_info("d")["unroutable_total"] == 2


def test_a_publish_whose_one_copy_is_refused_changes_nothing(h: Harness) -> None:
    h.create("big")
    h.create("small", max_message_bytes=4)
    h.create("g.fifo")
    exchange(h, "f", "fanout")
    bind(h, "f", "big")
    bind(h, "f", "small")
    publish(h, "f", {"body": b"ok"})
    assert_refused(h, "too_large", "exchange_publish", exchange="f", messages=[{"body": b"12345"}])
    bind(h, "f", "g.fifo")
    assert_refused(h, "bad_request", "exchange_publish", exchange="f", messages=[{"body": b"1"}])
    assert_refused(
        h, "bad_request", "exchange_publish", exchange="f", messages=[{"body": b"1", "x": 1}]
    )
    assert_refused(h, "not_found", "exchange_publish", exchange="nope", messages=[{"body": b"1"}])
    assert_refused(h, "bad_request", "exchange_publish", exchange="f", messages=[])
    assert_refused(
        h,
        "bad_request",
        "exchange_publish",
        exchange="f",
        messages=[{"body": b"1", "routing_key": "k" * 256, "group_id": "g"}],
    )
    [r] = publish(h, "f", {"body": b"1", "group_id": "g"})
    assert r["routed_to"] == ["big", "g.fifo", "small"]
    assert h.info("big")["sent_total"] == 2 and h.info("small")["sent_total"] == 2


def test_dedup_ids_answer_the_first_copy_per_queue(h: Harness) -> None:
    h.create("a")
    h.create("b")
    exchange(h, "f", "fanout")
    bind(h, "f", "a")
    bind(h, "f", "b")
    [first] = publish(h, "f", {"body": b"1", "dedup_id": "d1"})
    [again] = publish(h, "f", {"body": b"1", "dedup_id": "d1"})
    assert again["ids"] == first["ids"] and again["duplicates"] == ["a", "b"]
    assert h.info("a")["depth"] == 1
    assert h.sm.exchange_info("f")["routed_total"] == 2  # duplicates are not copies


def test_unbind_and_delete(h: Harness) -> None:
    h.create("a")
    exchange(h, "t", "topic")
    bind(h, "t", "a", pattern="x.*")
    assert_refused(h, "not_found", "exchange_unbind", exchange="t", queue="a", pattern="y")
    assert h.ok("exchange_unbind", exchange="t", queue="a", pattern="x.*")["deleted"] is True
    assert h.sm.exchange_info("t")["binding_count"] == 0
    bind(h, "t", "a", pattern="x.*")
    assert h.ok("exchange_delete", name="t") == {"deleted": "t", "bindings": 1}
    assert_refused(h, "not_found", "exchange_delete", name="t")
    exchange(h, "t", "topic")  # a new exchange of the name starts with no bindings
    assert h.sm.exchange_info("t")["bindings"] == []
    assert_refused(h, "not_found", "exchange_bind", exchange="t", queue="missing", pattern="#")
    assert_refused(h, "bad_request", "exchange_bind", exchange="t", queue="a", headers={"a": "b"})


def test_deleting_a_queue_removes_its_bindings(h: Harness) -> None:
    h.create("a")
    h.create("b")
    exchange(h, "f", "fanout")
    exchange(h, "d", "direct")
    bind(h, "f", "a")
    bind(h, "f", "b")
    bind(h, "d", "a", routing_key="k1")
    bind(h, "d", "a", routing_key="k2")
    result = h.ok("queue_delete", name="a")
    assert result["unbound"] == {"d": 2, "f": 1}
    assert [b["queue"] for b in h.sm.exchange_info("f")["bindings"]] == ["b"]
    assert h.sm.exchange_info("d")["binding_count"] == 0
    h.create("a")  # a new queue of the name is not bound
    [r] = publish(h, "f", {"body": b"x"})
    assert r["routed_to"] == ["b"]


def test_replicas_agree_byte_for_byte(tmp_path) -> None:
    """The same log applied to two state machines gives the same state hash."""
    replicas = [Harness(str(tmp_path / f"r{i}")) for i in (1, 2)]
    try:
        for r in replicas:
            for q in ("q1", "q2", "q3"):
                r.create(q)
            exchange(r, "t", "topic")
            for q, p in (("q3", "#"), ("q1", "a.*"), ("q2", "*.b")):
                bind(r, "t", q, pattern=p)
            publish(
                r,
                "t",
                *(
                    {"body": bytes([i]), "routing_key": k}
                    for i, k in enumerate(["a.b", "a.c", "c.b", "x"])
                ),
            )
        assert replicas[0].sm.state_hash() == replicas[1].sm.state_hash()
    finally:
        for r in replicas:
            r.close()


# ---------------------------------------------------------------- queue expiry


def test_an_unused_queue_expires_at_a_tick(h: Harness) -> None:
    h.create("reply", expires_s=10)
    assert h.info("reply")["expires_s"] == 10
    h.advance(6)
    h.send("reply", b"r")  # a use moves the deadline
    h.advance(6)
    assert "queues_expired" not in h.ok("tick")
    assert h.sm.queue_config("reply") is not None
    h.receive("reply")
    h.advance(9)
    assert "queues_expired" not in h.ok("tick")
    h.advance(2)
    assert h.sm.next_deadline_ms() is not None and h.sm.next_deadline_ms() <= h.now_ms
    assert h.ok("tick")["queues_expired"] == ["reply"]
    assert h.sm.queue_config("reply") is None
    assert h.sm.next_deadline_ms() is None


def test_expiry_can_be_turned_off_and_a_used_dlq_waits(h: Harness) -> None:
    h.create("keep", expires_s=5)
    h.create("keep", expires_s=None)
    h.create("dlq", expires_s=5)
    h.create("src", dead_letter_queue="dlq", max_receives=1)
    exchange(h, "f", "fanout")
    bind(h, "f", "dlq")
    h.advance(6)
    assert "queues_expired" not in h.ok("tick")
    assert h.sm.queue_config("keep") is not None and h.sm.queue_config("dlq") is not None
    h.ok("queue_delete", name="src")
    h.advance(6)
    assert h.ok("tick")["queues_expired"] == ["dlq"]
    assert h.sm.exchange_info("f")["bindings"] == []
    assert_refused(h, "bad_request", "queue_put", name="x", config={"expires_s": 0})
    assert_refused(h, "bad_request", "queue_put", name="x", config={"expires_s": "5"})


def test_a_publish_of_too_many_copies_is_refused(h: Harness, monkeypatch) -> None:
    monkeypatch.setattr(exchanges, "MAX_COPIES", 5)
    for q in ("a", "b", "c"):
        h.create(q)
    exchange(h, "f", "fanout")
    for q in ("a", "b", "c"):
        bind(h, "f", q)
    publish(h, "f", {"body": b"1"})
    assert_refused(
        h, "too_large", "exchange_publish", exchange="f", messages=[{"body": b"1"}, {"body": b"2"}]
    )
