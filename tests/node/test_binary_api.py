"""The binary port of a real node: every kind of command, pipelining, and hostile frames.

Each bad-frame test checks three things: the offending connection is closed (not left
hanging), the node logged why (`binary.bad_frame` with the reason), and the node still
serves, over binary and HTTP, on other connections.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from cluster.binary_client import BinaryConnection, parse_binary_url
from cluster.launcher import ClusterStartError, LocalCluster, free_ports
from common.binwire import MAGIC, decode_answer, encode_request
from tests.support.api_client import ApiClient

pytestmark = pytest.mark.integration


@pytest.fixture
async def conn(single_node: LocalCluster) -> AsyncIterator[BinaryConnection]:
    c = BinaryConnection(single_node.binary_url(1))
    try:
        yield c
    finally:
        await c.close()


async def call(conn: BinaryConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    packed = None if body is None else msgpack.packb(body, use_bin_type=True)
    status, _headers, answer = await conn.request(method, path, packed, timeout_s=30)
    return status, answer


# ---------------------------------------------------------------- round trips


async def test_every_kind_of_command_round_trips(conn: BinaryConnection) -> None:
    assert await call(conn, "GET", "/v1/health") == (200, {"status": "ok", "node_id": 1})
    status, queue = await call(conn, "PUT", "/v1/queues/bin-jobs", {"visibility_timeout_s": 60})
    assert status == 201 and queue["name"] == "bin-jobs" and queue["visibility_timeout_s"] == 60
    assert (await call(conn, "PUT", "/v1/queues/bin-out", {}))[0] == 201
    status, sent = await call(
        conn,
        "POST",
        "/v1/queues/bin-jobs/messages",
        {"messages": [{"body": "one"}, {"body": b"\xff\x00two"}, {"body": "three"}]},
    )
    assert status == 200 and [m["seq"] for m in sent["messages"]] == [1, 2, 3]
    assert await call(
        conn, "POST", "/v1/queues/bin-jobs/messages?ack=none", {"messages": [{"body": "four"}]}
    ) == (202, {"accepted": 1})
    status, got = await call(conn, "POST", "/v1/queues/bin-jobs/receive", {"max": 3})
    assert status == 200
    msgs = got["messages"]
    assert [m["body"] for m in msgs] == [b"one", b"\xff\x00two", b"three"]  # raw bytes
    receipts = [m["receipt"] for m in msgs]
    assert await call(conn, "POST", "/v1/queues/bin-jobs/ack", {"receipts": receipts[:1]}) == (
        200,
        {"acked": 1, "stale": []},
    )
    status, extended = await call(
        conn, "POST", "/v1/queues/bin-jobs/extend", {"receipts": receipts[1:2]}
    )
    assert (status, extended) == (200, {"extended": 1, "stale": []})
    status, nacked = await call(
        conn, "POST", "/v1/queues/bin-jobs/nack", {"receipts": receipts[1:2]}
    )
    assert (status, nacked) == (200, {"nacked": 1, "stale": []})
    status, txn = await call(
        conn,
        "POST",
        "/v1/transactions",
        {
            "txn_id": "bin-txn-1",
            "ack": [{"queue": "bin-jobs", "receipt": receipts[2]}],
            "send": [{"queue": "bin-out", "messages": [{"body": "RESULT"}]}],
        },
    )
    assert status == 200 and txn["committed"] is True and txn["duplicate"] is False
    status, producer = await call(conn, "POST", "/v1/producers", {})
    assert status == 200 and isinstance(producer["producer_id"], str)
    status, info = await call(conn, "GET", "/v1/queues/bin-out?consistency=stale")
    assert status == 200 and info["name"] == "bin-out"
    status, listed = await call(conn, "GET", "/v1/queues")
    assert {"bin-jobs", "bin-out"} <= {q["name"] for q in listed["queues"]}
    status, view = await call(conn, "GET", "/v1/cluster")
    assert status == 200 and view["node_id"] == 1 and view["leader"]["id"] == 1
    assert view["binary_url"] == conn.url and view["nodes"][0]["binary_url"] == conn.url
    status, members = await call(conn, "GET", "/v1/cluster/members")
    assert status == 200 and members["voters"] == [1]
    status, text = await call(conn, "GET", "/metrics")
    assert status == 200 and isinstance(text, str) and "raftq_http_requests_total" in text
    assert (await call(conn, "POST", "/v1/queues/bin-out/purge"))[0] == 200
    assert (await call(conn, "DELETE", "/v1/queues/bin-out"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/v1/queues/bad%20name", {}, 400),
        ("POST", "/v1/queues/nosuch-bin/messages", {"messages": [{"body": "x"}]}, 404),
        ("POST", "/v1/queues/bin-err/messages", {"messages": 3}, 400),
        ("POST", "/v1/queues/bin-err/messages", {"messages": [{"body": "x"}], "zz": 1}, 400),
        ("PUT", "/v1/queues/bin-err", {"fifo": True}, 409),
        ("GET", "/v1/no/such/route", None, 404),
        ("DELETE", "/v1/health", None, 405),
        (
            "POST",
            "/v1/transactions",
            {"txn_id": "t", "ack": [{"queue": "bin-err", "receipt": "0.1"}]},
            409,
        ),
    ],
)
async def test_errors_are_the_http_apis(
    single_node: LocalCluster,
    conn: BinaryConnection,
    method: str,
    path: str,
    body: Any,
    status: int,
) -> None:
    """Same status and the same error body as HTTP, for the same request."""
    async with ApiClient(single_node.url(1)) as http:
        assert (await http.put("/v1/queues/bin-err", {}))[0] in (200, 201)
        http_status, http_body = await http.call(method, path, body)
    bin_status, bin_body = await call(conn, method, path, body)
    assert (bin_status, bin_body) == (http_status, http_body)
    assert bin_status == status and "error" in bin_body


async def test_many_requests_in_flight_on_one_connection_answer_out_of_order(
    conn: BinaryConnection,
) -> None:
    """A long-poll receive stays outstanding while 50 sends behind it complete, all on
    one connection; then a send to its queue answers it."""
    for name in ("bin-poll", "bin-busy"):
        assert (await call(conn, "PUT", f"/v1/queues/{name}", {}))[0] in (200, 201)
    link = conn._link
    poll = asyncio.ensure_future(
        call(conn, "POST", "/v1/queues/bin-poll/receive", {"max": 1, "wait_s": 15})
    )
    await asyncio.sleep(0.2)
    started = time.monotonic()
    sends = await asyncio.gather(
        *(
            call(conn, "POST", "/v1/queues/bin-busy/messages", {"messages": [{"body": f"m{i}"}]})
            for i in range(50)
        )
    )
    assert all(status == 200 for status, _ in sends)
    assert len({answer["messages"][0]["id"] for _, answer in sends}) == 50
    assert not poll.done() and time.monotonic() - started < 10
    assert conn._link is link  # no second connection was opened
    await call(conn, "POST", "/v1/queues/bin-poll/messages", {"messages": [{"body": "wake"}]})
    status, got = await asyncio.wait_for(poll, 10)
    assert status == 200 and [m["body"] for m in got["messages"]] == [b"wake"]


# ---------------------------------------------------------------- hostile frames


def _connect(cluster: LocalCluster) -> socket.socket:
    host, port = parse_binary_url(cluster.binary_url(1))
    s = socket.create_connection((host, port), timeout=10)
    return s


def _closed_by_node(s: socket.socket, timeout_s: float = 5.0) -> bool:
    """True if the node closes `s` within `timeout_s` (EOF or reset), sending nothing."""
    s.settimeout(timeout_s)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _logged(cluster: LocalCluster, reason: str, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in cluster.specs[1].log_path.read_text().splitlines():
            if '"binary.bad_frame"' in line and json.loads(line).get("reason") == reason:
                return True
        time.sleep(0.05)
    return False


def _still_serves(cluster: LocalCluster) -> None:
    """A fresh binary connection and HTTP both answer health."""
    s = _connect(cluster)
    try:
        s.sendall(MAGIC + encode_request(7, "GET", "/v1/health", None))
        header = s.recv(4, socket.MSG_WAITALL)
        (length,) = struct.unpack(">I", header)
        payload = s.recv(length, socket.MSG_WAITALL)
        assert decode_answer(payload) == (7, 200, {}, {"status": "ok", "node_id": 1})
    finally:
        s.close()
    cluster.wait_ready(1, timeout_s=10)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _payload(value: Any) -> bytes:
    packed = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(packed)) + packed


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP", "bad_magic"),
        (b"RQB2", "bad_magic"),
        (MAGIC + b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", "not_msgpack"),  # 0xc1: never used
        (MAGIC + b"\x00\x00\x00\x03\x93\x01\xa3", "not_msgpack"),  # truncated inside
        (MAGIC + _payload({"id": 1}), "bad_shape"),
        (MAGIC + _payload([1, "GET", "/v1/health"]), "bad_shape"),
        (MAGIC + _payload(["1", "GET", "/v1/health", None]), "bad_request_id"),
        (MAGIC + _payload([-1, "GET", "/v1/health", None]), "bad_request_id"),
        (MAGIC + _payload([1, 5, "/v1/health", None]), "bad_method"),
        (MAGIC + _payload([1, "GET", "v1/health", None]), "bad_path"),
        (MAGIC + _payload([1, "GET", "/v1/health", {"a": 1}]), "bad_body"),
        (MAGIC + _payload([1, "GET", "/v1/health", "text"]), "bad_body"),
    ],
    ids=[
        "http-magic",
        "other-version",
        "not-msgpack",
        "msgpack-cut-short",
        "map-not-array",
        "three-elements",
        "string-id",
        "negative-id",
        "int-method",
        "relative-path",
        "map-body",
        "str-body",
    ],
)
def test_bad_frame_closes_the_connection(
    single_node: LocalCluster, data: bytes, reason: str
) -> None:
    s = _connect(single_node)
    try:
        s.sendall(data)
        assert _closed_by_node(s)
    finally:
        s.close()
    assert _logged(single_node, reason)
    _still_serves(single_node)


def test_frame_over_the_limit_is_refused_before_its_payload(single_node: LocalCluster) -> None:
    """Announce 2 GiB and send nothing more: the node closes at once (it did not wait
    for, nor allocate, the payload) and its memory did not grow."""
    pid = single_node.pids[1]
    before = _rss_bytes(pid)
    s = _connect(single_node)
    try:
        s.sendall(MAGIC + struct.pack(">I", 2 << 30))
        started = time.monotonic()
        assert _closed_by_node(s, timeout_s=5)
        assert time.monotonic() - started < 2
    finally:
        s.close()
    assert _logged(single_node, "frame_too_large")
    assert _rss_bytes(pid) - before < 64 << 20
    _still_serves(single_node)


def test_truncated_frame_then_close(single_node: LocalCluster) -> None:
    """Half a frame, then the client closes: logged as truncated, nothing else happens."""
    s = _connect(single_node)
    frame = encode_request(1, "PUT", "/v1/queues/never-made", msgpack.packb({}))
    s.sendall(MAGIC + frame[: len(frame) // 2])
    time.sleep(0.2)
    s.close()
    assert _logged(single_node, "truncated_frame")
    _still_serves(single_node)


def test_unknown_route_answers_404_and_keeps_the_connection(single_node: LocalCluster) -> None:
    """A well-formed request for no route is an answer, not a protocol error."""
    s = _connect(single_node)
    try:
        s.sendall(MAGIC + encode_request(1, "GET", "/v2/nothing", None))
        s.sendall(encode_request(2, "GET", "/v1/health", None))
        answers = []
        for _ in range(2):
            (length,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
            answers.append(decode_answer(s.recv(length, socket.MSG_WAITALL)))
    finally:
        s.close()
    by_id = {a[0]: a for a in answers}
    assert by_id[1][1] == 404 and by_id[1][3]["error"]["code"] == "not_found"
    assert by_id[2][1:] == (200, {}, {"status": "ok", "node_id": 1})


def test_a_connection_that_never_sends_its_magic_blocks_no_one(single_node: LocalCluster) -> None:
    """A connection that never sends its magic does not block other clients."""
    idle = _connect(single_node)
    try:
        _still_serves(single_node)
    finally:
        idle.close()


async def test_sigterm_with_a_binary_long_poll_outstanding_stops_cleanly(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A node stopping answers the long-poll held on its binary port (empty, as over HTTP)
    and exits 0 well within its grace period."""
    cluster = make_cluster(1)
    conn = BinaryConnection(cluster.binary_url(1))
    try:
        assert (await call(conn, "PUT", "/v1/queues/bin-stop", {}))[0] == 201
        poll = asyncio.ensure_future(
            call(conn, "POST", "/v1/queues/bin-stop/receive", {"wait_s": 20})
        )
        await asyncio.sleep(0.3)
        assert not poll.done()
        started = time.monotonic()
        code = await asyncio.to_thread(cluster.stop, 1, 15)
        assert code == 0 and time.monotonic() - started < 5
        # answered before the connection closes: stop() wakes long-polls first, then
        # waits for requests in flight
        assert await asyncio.wait_for(poll, 5) == (200, {"messages": []})
    finally:
        await conn.close()
    log = cluster.specs[1].log_path.read_text()
    assert '"binary.stopped"' in log and '"node.stopped"' in log


def _port_pair() -> tuple[int, socket.socket]:
    """A free HTTP port P and a socket listening on P + 200 (the default binary port)."""
    for _ in range(50):
        (http,) = free_ports(1)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", http + 200))
        except OSError:
            s.close()
            continue
        s.listen()
        return http, s
    raise AssertionError("no free port pair")


def test_default_binary_port_taken_the_node_serves_http_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    http, squatter = _port_pair()
    cluster = LocalCluster(1, tmp_path / "d", http_port=[http], raft_port=free_ports(1))
    try:
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        view = cluster.cluster_view(1)
        assert view is not None and view["binary_url"] is None
        assert _logged_event(cluster, "node.binary_unavailable")
    finally:
        cluster.stop_all()
        squatter.close()


def test_explicit_binary_port_taken_the_node_does_not_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    http, squatter = _port_pair()
    cluster = LocalCluster(
        1, tmp_path / "d", http_port=[http], raft_port=free_ports(1), binary_port=[http + 200]
    )
    try:
        cluster.start()
        with pytest.raises(ClusterStartError):
            cluster.wait_for_leader(timeout_s=30)
        assert cluster.returncodes()[1] not in (None, 0)
    finally:
        cluster.stop_all()
        squatter.close()


def _logged_event(cluster: LocalCluster, event: str) -> bool:
    return any(
        json.loads(line).get("event") == event
        for line in cluster.specs[1].log_path.read_text().splitlines()
        if line.startswith("{")
    )
