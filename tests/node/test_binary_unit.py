"""Binary protocol on bytes alone: the frame codec, the route matcher, the --binary flag."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from aiohttp import web

from common.binwire import (
    MAGIC,
    BadFrame,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    frame,
    frame_length,
)
from node.api import ROUTES, health, put_queue, remove_member, send_messages
from node.app_context import SERVICE_KEY
from node.auth import OPEN
from node.binary_api import BinaryApi, FrameRequest, RouteTable, _answer_body, _waiting_for_a_leader
from node.config import ConfigError, load_config
from node.http import MSGPACK, RAW_BODY_KEY, ApiError, read_body, wants_msgpack
from node.request_budget import ByteBudget
from tests.support.apps import serving_app


def test_request_round_trip() -> None:
    body = msgpack.packb({"messages": [{"body": b"\x00\xff"}]}, use_bin_type=True)
    data = encode_request(7, "POST", "/v1/queues/q/messages?ack=none", body)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4 == frame_length(data[:4], 1 << 20)
    assert decode_request(data[4:]) == (7, "POST", "/v1/queues/q/messages?ack=none", body)
    assert decode_request(encode_request(0, "GET", "/v1/health", None)[4:])[3] is None


def test_frame_length_refuses_over_the_limit_from_the_header_alone() -> None:
    assert frame_length(struct.pack(">I", 100), 100) == 100
    with pytest.raises(BadFrame) as info:
        frame_length(struct.pack(">I", 101), 100)
    assert info.value.reason == "frame_too_large"
    with pytest.raises(BadFrame):
        frame_length(struct.pack(">I", 2**32 - 1), 16 << 20)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "not_msgpack"),
        (b"", "not_msgpack"),
        (msgpack.packb([1, "GET", "/", None]) + b"\x01", "not_msgpack"),  # trailing bytes
        (b"\x94\x01\xa3GET\xa2/\xff", "not_msgpack"),  # a str that is not UTF-8
        (msgpack.packb({"id": 1}), "bad_shape"),
        (msgpack.packb([1, "GET", "/"]), "bad_shape"),
        (msgpack.packb([1, "GET", "/", None, None]), "bad_shape"),
        (msgpack.packb([True, "GET", "/", None]), "bad_request_id"),
        (msgpack.packb([1.0, "GET", "/", None]), "bad_request_id"),
        (msgpack.packb([-1, "GET", "/", None]), "bad_request_id"),
        (msgpack.packb([1, "", "/", None]), "bad_method"),
        (msgpack.packb([1, "G" * 17, "/", None]), "bad_method"),
        (msgpack.packb([1, b"GET", "/", None], use_bin_type=True), "bad_method"),
        (msgpack.packb([1, "GET", "", None]), "bad_path"),
        (msgpack.packb([1, "GET", "/" + "a" * 8190, None]), "bad_path"),
        (msgpack.packb([1, "GET", "/", "str"]), "bad_body"),
        (msgpack.packb([1, "GET", "/", [1]]), "bad_body"),
    ],
)
def test_decode_request_refuses_every_other_shape(payload: bytes, reason: str) -> None:
    with pytest.raises(BadFrame) as info:
        decode_request(payload)
    assert info.value.reason == reason


def test_answer_splices_the_packed_body_into_one_msgpack_array() -> None:
    body = {"messages": [{"id": "1", "body": b"raw"}]}
    packed = msgpack.packb(body, use_bin_type=True)
    data = encode_answer(2**40, 200, {"Retry-After": "1"}, packed)
    expected = msgpack.packb([2**40, 200, {"Retry-After": "1"}, body], use_bin_type=True)
    assert data == frame(expected)
    assert decode_answer(data[4:]) == (2**40, 200, {"Retry-After": "1"}, body)
    assert decode_answer(encode_answer(1, 204, {}, b"\xc0")[4:]) == (1, 204, {}, None)


def test_decode_answer_refuses_bad_answers() -> None:
    for payload in (b"\xc1", msgpack.packb([1, 200, None]), msgpack.packb([1, "200", None, 1])):
        with pytest.raises(BadFrame):
            decode_answer(payload)


def test_magic_names_protocol_and_version() -> None:
    assert MAGIC == b"RQB1" and len(MAGIC) == 4


# ---------------------------------------------------------------- routes


def test_route_table_matches_like_aiohttp() -> None:
    table = RouteTable()
    assert table.match("GET", "/v1/health")[:2] == (health, "/v1/health")
    handler, route, info = table.match("POST", "/v1/queues/jobs/messages")
    assert (handler, route, info) == (send_messages, "/v1/queues/{name}/messages", {"name": "jobs"})
    assert table.match("PUT", "/v1/queues/bad%20name") == (
        put_queue,
        "/v1/queues/{name}",
        {"name": "bad name"},
    )
    assert table.match("DELETE", "/v1/cluster/members/3")[2] == {"id": "3"}
    assert table.match("DELETE", "/v1/cluster/members/3")[0] is remove_member
    with pytest.raises(web.HTTPNotFound):
        table.match("GET", "/v1/queues/a/b/c")
    with pytest.raises(web.HTTPNotFound):
        table.match("GET", "/v1/health/")
    with pytest.raises(web.HTTPNotFound):
        table.match("GET", "/v1/queues//messages")
    with pytest.raises(web.HTTPMethodNotAllowed):
        table.match("DELETE", "/v1/health")


def test_every_route_is_reachable() -> None:
    table = RouteTable()
    for method, path, handler, _access in ROUTES:
        concrete = path
        for param, value in (
            ("{name}", "q"),
            ("{id}", "2"),
            ("{user}", "u"),
            ("{group}", "g"),
            ("{p}", "0"),
        ):
            concrete = concrete.replace(param, value)
        assert table.match(method, concrete)[0] is handler


async def test_frame_request_gives_handlers_the_frame_body() -> None:
    app = web.Application()
    raw = msgpack.packb({"max": 3}, use_bin_type=True)
    request = FrameRequest(app, "POST", "/v1/queues/a%2Fb/receive?x=1&x=2&y=", {"name": "a/b"}, raw)
    assert request.path == "/v1/queues/a/b/receive" and request.query.getall("x") == ["1", "2"]
    assert request.query.get("y") == "" and request.match_info["name"] == "a/b"
    assert wants_msgpack(request)  # type: ignore[arg-type]
    assert request[RAW_BODY_KEY] == raw and await request.read() == raw
    assert await read_body(request, 1 << 20, 32) == {"max": 3}  # type: ignore[arg-type]
    empty = FrameRequest(app, "GET", "/v1/health", {}, None)
    assert await read_body(empty, 1 << 20, 32) == {}  # type: ignore[arg-type]


def test_answer_body_of_text_and_msgpack_and_empty() -> None:
    assert _answer_body(web.Response(text="a 1\n", content_type="text/plain")) == msgpack.packb(
        "a 1\n"
    )
    packed = msgpack.packb({"k": 1})
    assert _answer_body(web.Response(body=packed, content_type="application/msgpack")) == packed
    assert _answer_body(web.Response(status=204)) == b"\xc0"


# ---------------------------------------------------------------- config


BASE = ["--id", "1", "--http", "127.0.0.1:7001", "--raft", "127.0.0.1:7101", "--data-dir", "d"]


def test_binary_port_defaults_to_http_plus_200() -> None:
    cfg = load_config(BASE)
    assert (cfg.binary_host, cfg.binary_port) == ("127.0.0.1", 7201)
    assert cfg.binary_url == "raftq://127.0.0.1:7201" and not cfg.binary_required


def test_binary_port_explicit_or_off() -> None:
    cfg = load_config([*BASE, "--binary", "0.0.0.0:9000"])
    assert (cfg.binary_host, cfg.binary_port) == ("0.0.0.0", 9000) and cfg.binary_required
    for off in ("off", "0"):
        cfg = load_config([*BASE, "--binary", off])
        assert cfg.binary_port is None and cfg.binary_url is None
    with pytest.raises(ConfigError):
        load_config([*BASE, "--binary", "nope"])
    with pytest.raises(ConfigError):
        load_config(["--id", "1", "--http", "h:65400", "--raft", "h:1", "--data-dir", "d"])


def test_binary_port_from_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.toml"
    path.write_text('binary = "127.0.0.1:9100"\n')
    cfg = load_config(["--config", str(path), *BASE])
    assert cfg.binary_port == 9100
    path.write_text("binary = false\n")
    assert load_config(["--config", str(path), *BASE]).binary_port is None


# ---------------------------------------------------------------- BinaryApi in-process


async def _started(routes: list[tuple[str, str, Any]], max_in_flight: int) -> BinaryApi:
    app = serving_app()
    api = BinaryApi(app, "127.0.0.1", 0, max_body_bytes=1 << 20, max_in_flight=max_in_flight)
    api.routes = RouteTable([(m, p, h, OPEN) for m, p, h in routes])
    await api.start()
    return api


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, int, dict[str, str], Any]:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return decode_answer(await reader.readexactly(length))


async def test_in_flight_requests_per_connection_are_bounded() -> None:
    """With room for 2, a third request is not even read until one of the two finishes."""
    entered: list[int] = []
    release = {i: asyncio.Event() for i in range(3)}

    async def block(request: Any) -> web.Response:
        n = int(request.query["n"])
        entered.append(n)
        await release[n].wait()
        return web.Response(body=msgpack.packb(n), content_type=MSGPACK)

    api = await _started([("GET", "/block", block)], max_in_flight=2)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(
            MAGIC + b"".join(encode_request(n, "GET", f"/block?n={n}", None) for n in range(3))
        )
        await asyncio.sleep(0.3)
        assert entered == [0, 1]
        release[1].set()
        assert await asyncio.wait_for(_read_answer(reader), 5) == (1, 200, {}, 1)
        await asyncio.sleep(0.1)
        assert entered == [0, 1, 2]
        release[2].set()
        release[0].set()
        answers = {(await asyncio.wait_for(_read_answer(reader), 5))[0] for _ in range(2)}
        assert answers == {0, 2}
    finally:
        writer.close()
        await api.close(grace_s=1)


async def test_close_lets_requests_finish_then_cancels_and_closes_connections() -> None:
    """Closing with a request in flight: it gets `grace_s`, then it is cancelled, every
    connection is closed, and new connections are refused."""
    started = asyncio.Event()

    async def forever(_request: Any) -> web.Response:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not reached")

    async def quick(_request: Any) -> web.Response:
        return web.Response(body=msgpack.packb("ok"), content_type=MSGPACK)

    api = await _started([("GET", "/forever", forever), ("GET", "/quick", quick)], 8)
    port = api.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(MAGIC + encode_request(1, "GET", "/forever", None))
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.wait_for(api.close(grace_s=0.3), 5)
    assert 0.25 <= loop.time() - t0 < 3
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing answered
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_unknown_routes_and_handler_errors_count_in_the_metrics() -> None:
    async def boom(_request: Any) -> web.Response:
        raise RuntimeError("bug")

    api = await _started([("GET", "/boom", boom)], 8)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    try:
        writer.write(MAGIC + encode_request(1, "GET", "/boom", None))
        writer.write(encode_request(2, "GET", "/nowhere", None))
        answers = {a[0]: a for a in [await _read_answer(reader), await _read_answer(reader)]}
        assert answers[1][1] == 500 and answers[1][3]["error"]["code"] == "internal"
        assert answers[2][1] == 404 and answers[2][3]["error"]["code"] == "not_found"
        seen = sorted(api.app[SERVICE_KEY].metrics.seen)  # type: ignore[attr-defined]
        assert seen == [("GET", "/boom", 500), ("GET", "?", 404)]
    finally:
        writer.close()
        await api.close(grace_s=1)


async def test_a_request_waits_out_an_election_instead_of_answering_no_leader() -> None:
    """During an election the binary port holds a request (as HTTP forwarding does) and
    runs it again once a leader is known; other errors and a leader that never comes are
    answered as they are."""
    tries: list[int] = []

    def no_leader() -> ApiError:
        return ApiError(503, "no_leader", "no leader is known; election in progress")

    async def elected_on_third_try(_request: object) -> web.Response:
        tries.append(1)
        if len(tries) < 3:
            raise no_leader()
        return web.Response(status=200)

    response = await _waiting_for_a_leader(elected_on_third_try, 2.0)(None)
    assert response.status == 200 and len(tries) == 3

    async def never(_request: object) -> web.Response:
        raise no_leader()

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ApiError) as err:
        await _waiting_for_a_leader(never, 0.3)(None)
    assert err.value.code == "no_leader" and 0.25 <= loop.time() - started < 2.0

    async def refused(_request: object) -> web.Response:
        tries.append(1)
        raise ApiError(400, "bad_request", "nope")

    tries.clear()
    with pytest.raises(ApiError) as err:
        await _waiting_for_a_leader(refused, 5.0)(None)
    assert err.value.code == "bad_request" and len(tries) == 1


# ---------------------------------------------------------------- resource limits


@contextlib.asynccontextmanager
async def _limited(**limits: Any) -> AsyncIterator[BinaryApi]:
    """A BinaryApi with `limits`, a slow and a quick route; closed on the way out."""

    async def slow(_request: Any) -> web.Response:
        await asyncio.sleep(0.8)
        return web.Response(body=msgpack.packb("slow"), content_type=MSGPACK)

    async def quick(_request: Any) -> web.Response:
        return web.Response(body=msgpack.packb("ok"), content_type=MSGPACK)

    api = BinaryApi(serving_app(), "127.0.0.1", 0, max_body_bytes=1 << 20, **limits)
    api.routes = RouteTable([("GET", "/slow", slow, OPEN), ("GET", "/quick", quick, OPEN)])
    await api.start()
    try:
        yield api
    finally:
        await api.close(grace_s=0.1)


async def _connect(port: int, source: str = "127.0.0.1") -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(MAGIC)
    return reader, writer


async def _quick_answer(port: int, source: str = "127.0.0.1") -> Any:
    reader, writer = await _connect(port, source)
    try:
        writer.write(encode_request(1, "GET", "/quick", None))
        return (await asyncio.wait_for(_read_answer(reader), 5))[3]
    finally:
        writer.close()


async def test_one_address_holds_at_most_its_share_of_connections() -> None:
    async with _limited(max_connections_per_address=3) as api:
        held = [await _connect(api.port, "127.0.0.2") for _ in range(3)]
        reader, writer = await _connect(api.port, "127.0.0.2")  # the fourth: closed at once
        with contextlib.suppress(ConnectionResetError):  # closed with our MAGIC unread
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert api.refused_connections == 1
        assert await _quick_answer(api.port) == "ok"  # another address is served
        held[0][1].close()  # one closes: its address may connect again
        await asyncio.sleep(0.1)
        assert await _quick_answer(api.port, "127.0.0.2") == "ok"
        for _r, w in held[1:]:
            w.close()


async def test_an_idle_connection_is_closed_but_one_waiting_for_an_answer_is_not() -> None:
    async with _limited(idle_timeout_s=0.3) as api:
        idle_reader, idle_writer = await _connect(api.port)
        busy_reader, busy_writer = await _connect(api.port)
        busy_writer.write(encode_request(7, "GET", "/slow", None))  # answered after 0.8 s
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed after 0.3 s
        answer = await asyncio.wait_for(_read_answer(busy_reader), 5)
        assert answer[0] == 7 and answer[3] == "slow"
        for w in (idle_writer, busy_writer):
            w.close()


async def test_a_frame_trickling_in_is_cut_off_after_the_read_timeout() -> None:
    async with _limited(read_timeout_s=0.3) as api:
        reader, writer = await _connect(api.port)
        writer.write(struct.pack(">I", 100) + b"\x94" * 10)  # 10 of 100 announced bytes
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert api.bad_frames == 1
        assert await _quick_answer(api.port) == "ok"


async def test_a_full_request_budget_stops_reading_until_bytes_come_back() -> None:
    """The node's budget of request bytes is full: the frame's payload is not read (TCP
    pushes back) until a request elsewhere gives its bytes back; then it is served."""
    budget = ByteBudget(1000)
    assert budget.try_take(1000)  # another port's requests hold all of it
    async with _limited(budget=budget) as api:
        reader, writer = await _connect(api.port)
        writer.write(encode_request(3, "GET", "/quick", None))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_read_answer(reader), 0.3)
        assert budget.waiting == 1
        budget.give_back(1000)
        assert (await asyncio.wait_for(_read_answer(reader), 5))[3] == "ok"
        await asyncio.sleep(0.05)
        assert budget.used_bytes == 0
        writer.close()
