"""Exchanges over HTTP on real nodes: declare, bind, publish per type, unbind (DELETE with a
body and POST .../bindings/delete), long-polls woken by a publish, bad input refused with
nothing changed, a follower forwarding, and a queue that expires by itself."""

from __future__ import annotations

import asyncio
import time

import pytest

pytestmark = pytest.mark.integration


async def state_hash(api) -> str:
    status, body = await api.get("/v1/admin/state")
    assert status == 200
    return body["state_hash"]


async def test_exchange_lifecycle_and_routing(api) -> None:
    for q in ("xa-email", "xa-crm", "xa-pay", "xa-lost"):
        assert (await api.put(f"/v1/queues/{q}", {}))[0] == 201
    status, body = await api.put("/v1/exchanges/xa-signup", {"type": "fanout"})
    assert status == 201 and body["type"] == "fanout" and body["binding_count"] == 0
    assert (await api.put("/v1/exchanges/xa-signup", {"type": "fanout"}))[0] == 200
    status, body = await api.put("/v1/exchanges/xa-signup", {"type": "direct"})
    assert status == 409 and body["error"]["code"] == "conflict"
    for q in ("xa-email", "xa-crm"):
        status, body = await api.post("/v1/exchanges/xa-signup/bindings", {"queue": q})
        assert status == 201 and body == {"created": True, "binding": {"queue": q}}
    assert (await api.post("/v1/exchanges/xa-signup/bindings", {"queue": "xa-crm"}))[0] == 200
    status, body = await api.post(
        "/v1/exchanges/xa-signup/publish",
        {"messages": [{"body": "alice", "attributes": {"k": "v"}}, {"body_b64": "/w=="}]},
    )
    assert status == 200, body
    assert [m["routed_to"] for m in body["messages"]] == [["xa-crm", "xa-email"]] * 2
    status, got = await api.post("/v1/queues/xa-email/receive", {"max": 10})
    assert [m.get("body") for m in got["messages"]] == ["alice", None]
    assert got["messages"][0]["attributes"] == {"k": "v"}

    await api.put("/v1/exchanges/xa-orders", {"type": "topic", "alternate_queue": "xa-lost"})
    await api.post("/v1/exchanges/xa-orders/bindings", {"queue": "xa-pay", "pattern": "order.*"})
    status, body = await api.post(
        "/v1/exchanges/xa-orders/publish",
        {
            "messages": [
                {"routing_key": "order.created", "body": "1"},
                {"routing_key": "user.created", "body": "2"},
            ]
        },
    )
    assert [m["routed_to"] for m in body["messages"]] == [["xa-pay"], ["xa-lost"]]
    assert [m["unroutable"] for m in body["messages"]] == [False, True]
    status, info = await api.get("/v1/exchanges/xa-orders")
    assert status == 200 and info["bindings"] == [{"queue": "xa-pay", "pattern": "order.*"}]
    assert info["unroutable_total"] == 1 and info["routed_total"] == 2
    status, listed = await api.get("/v1/exchanges")
    assert {"xa-orders", "xa-signup"} <= {e["name"] for e in listed["exchanges"]}

    # unbind: DELETE with a body, or POST .../bindings/delete
    status, body = await api.call(
        "DELETE", "/v1/exchanges/xa-orders/bindings", {"queue": "xa-pay", "pattern": "order.*"}
    )
    assert status == 200 and body["deleted"] is True
    status, body = await api.post("/v1/exchanges/xa-signup/bindings/delete", {"queue": "xa-email"})
    assert status == 200
    status, body = await api.post("/v1/exchanges/xa-signup/bindings/delete", {"queue": "xa-email"})
    assert status == 404
    status, body = await api.delete("/v1/exchanges/xa-signup")
    assert status == 200 and body == {"deleted": "xa-signup", "bindings": 1}
    assert (await api.get("/v1/exchanges/xa-signup"))[0] == 404


async def test_a_publish_wakes_a_long_poll(api) -> None:
    await api.put("/v1/queues/xw-q", {})
    await api.put("/v1/exchanges/xw-ex", {"type": "direct"})
    await api.post("/v1/exchanges/xw-ex/bindings", {"queue": "xw-q", "routing_key": "k"})
    started = time.monotonic()
    waiting = asyncio.ensure_future(api.post("/v1/queues/xw-q/receive", {"wait_s": 10}))
    await asyncio.sleep(0.3)
    await api.post(
        "/v1/exchanges/xw-ex/publish", {"messages": [{"routing_key": "k", "body": "hi"}]}
    )
    status, got = await waiting
    assert status == 200 and [m["body"] for m in got["messages"]] == ["hi"]
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("method", "path", "payload", "status"),
    [
        ("PUT", "/v1/exchanges/xb-ex", {"type": "nope"}, 400),
        ("PUT", "/v1/exchanges/xb-ex", {"type": "direct", "extra": 1}, 400),
        ("PUT", "/v1/exchanges/xb-ex", {"type": "direct", "alternate_queue": "missing"}, 400),
        ("PUT", "/v1/exchanges/xb%20ex", {"type": "direct"}, 400),
        ("POST", "/v1/exchanges/xb-missing/publish", {"messages": [{"body": "x"}]}, 404),
        ("POST", "/v1/exchanges/xb-d/publish", {"messages": []}, 400),
        ("POST", "/v1/exchanges/xb-d/publish", {"messages": [{"body": "x", "rk": 1}]}, 400),
        ("POST", "/v1/exchanges/xb-d/publish", {"messages": [{"body": "x", "headers": 3}]}, 400),
        (
            "POST",
            "/v1/exchanges/xb-d/publish",
            {"messages": [{"body": "x", "routing_key": "k" * 300}]},
            400,
        ),
        (
            "POST",
            "/v1/exchanges/xb-d/publish",
            {"messages": [{"body": "12345", "routing_key": "k"}]},
            413,
        ),
        ("POST", "/v1/exchanges/xb-d/bindings", {"queue": "missing", "routing_key": "k"}, 404),
        ("POST", "/v1/exchanges/xb-d/bindings", {"queue": "xb-small", "pattern": "k"}, 400),
        ("POST", "/v1/exchanges/xb-d/bindings", {"queue": "xb-small", "match": "some"}, 400),
        ("POST", "/v1/exchanges/xb-d/bindings", {}, 400),
        ("DELETE", "/v1/exchanges/xb-missing", None, 404),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(api, method, path, payload, status) -> None:
    await api.put("/v1/queues/xb-small", {"max_message_bytes": 4})
    await api.put("/v1/exchanges/xb-d", {"type": "direct"})
    await api.post("/v1/exchanges/xb-d/bindings", {"queue": "xb-small", "routing_key": "k"})
    before = await state_hash(api)
    got, body = await api.call(method, path, payload)
    assert got == status, body
    assert body["error"]["code"] and body["error"]["message"]
    assert await state_hash(api) == before


async def test_a_follower_forwards_exchange_requests(cluster3_api) -> None:
    follower = cluster3_api.follower
    assert (await follower.put("/v1/queues/xf-q", {}))[0] == 201
    assert (await follower.put("/v1/exchanges/xf-ex", {"type": "headers"}))[0] == 201
    status, body = await follower.post(
        "/v1/exchanges/xf-ex/bindings",
        {"queue": "xf-q", "headers": {"a": "1", "b": "2"}, "match": "any"},
    )
    assert status == 201, body
    status, body = await follower.post(
        "/v1/exchanges/xf-ex/publish", {"messages": [{"headers": {"b": "2"}, "body": "x"}]}
    )
    assert status == 200 and body["messages"][0]["routed_to"] == ["xf-q"]
    status, got = await cluster3_api.leader.post("/v1/queues/xf-q/receive", {})
    assert got["messages"][0]["attributes"] == {"b": "2"}
    status, body = await follower.call(
        "DELETE",
        "/v1/exchanges/xf-ex/bindings",
        {"queue": "xf-q", "headers": {"b": "2", "a": "1"}, "match": "any"},
    )
    assert status == 200 and body["deleted"] is True, body
    status, info = await follower.get("/v1/exchanges/xf-ex")
    assert status == 200 and info["bindings"] == []


async def test_an_unused_queue_expires_on_a_real_node(api) -> None:
    status, body = await api.put("/v1/queues/xe-reply", {"expires_s": 1})
    assert status == 201 and body["expires_s"] == 1
    deadline = time.monotonic() + 10
    while (await api.get("/v1/queues/xe-reply"))[0] == 200:
        assert time.monotonic() < deadline, "the queue did not expire"
        await asyncio.sleep(0.2)
    assert (await api.get("/v1/queues/xe-reply"))[0] == 404
