"""Peer transport over real loopback sockets: delivery, order, reconnects, one-way links,
bounded queues, and every kind of hostile input on the peer port."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest
import structlog

from cluster.launcher import free_ports
from raft.errors import UndeliverableMessage
from raft.framing import (
    NONCE_BYTES,
    PROTO_VERSION,
    FrameDecoder,
    FrameError,
    FrameOpener,
    FrameSealer,
    HandshakeRejected,
    config_digest,
    decode_challenge,
    decode_handshake,
    encode_handshake,
    frame,
    new_nonce,
    session_key,
)
from raft.messages import Entry, Message, MessageType, decode_message, encode_message
from raft.transport import Transport
from tests.support.sockets import closed_by_peer

CLUSTER = "test-cluster"
FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "connect_timeout_s": 1.0}
WAIT_S = 10.0

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------- helpers


class Inbox:
    """Records what a transport hands to on_message, and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def wait_for_count(self, n: int, timeout_s: float = WAIT_S) -> list[Message]:
        async with asyncio.timeout(timeout_s):
            while len(self.messages) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


async def wait_until(pred: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)


def app(frm: int, to: int, index: int, payload: bytes = b"data") -> Message:
    return Message(
        type=MessageType.APP,
        to=to,
        frm=frm,
        term=2,
        log_term=2,
        index=index,
        entries=(Entry(index + 1, 2, data=payload),),
        commit=index,
    )


def heartbeat(frm: int, to: int, commit: int) -> Message:
    return Message(type=MessageType.HEARTBEAT, to=to, frm=frm, term=2, commit=commit)


def raw_message(**overrides: Any) -> list[Any]:
    """A well-formed message as the wire array, with fields replaced for bad-input tests."""
    fields = {
        "ver": 1,
        "type": int(MessageType.APP),
        "to": 1,
        "frm": 3,
        "term": 2,
        "log_term": 2,
        "index": 5,
        "entries": [[6, 2, 0, b"x"]],
        "commit": 5,
        "reject": False,
        "hint": 0,
        "hint_term": 0,
        "ctx": b"",
    }
    fields.update(overrides)
    return list(fields.values())


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.fixture
def logs() -> Any:
    with structlog.testing.capture_logs() as entries:
        yield entries


def events(entries: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["event"] == name]


@pytest.fixture
async def make_transport() -> AsyncIterator[Callable[..., Any]]:
    """Start transports on free loopback ports; every one is stopped after the test."""
    started: list[Transport] = []

    async def make(
        node_id: int,
        peers: dict[int, tuple[str, int]] | None = None,
        inbox: Inbox | None = None,
        port: int = 0,
        **kwargs: Any,
    ) -> Transport:
        opts = {**FAST, **kwargs}
        t = Transport(node_id, CLUSTER, ("127.0.0.1", port), peers or {}, inbox or Inbox(), **opts)
        started.append(t)
        await t.start()
        return t

    yield make
    for t in started:
        await t.stop()


async def mesh(
    make: Callable[..., Any], n: int, **kwargs: Any
) -> tuple[list[Transport], list[Inbox]]:
    """n transports that all know each other."""
    inboxes = [Inbox() for _ in range(n)]
    nodes = [await make(i + 1, inbox=inboxes[i], **kwargs) for i in range(n)]
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.update_peer(b.node_id, b.listen_addr)
    return nodes, inboxes


# ---------------------------------------------------------------- framing (bytes only)


def test_frame_decoder_reassembles_frames_fed_byte_by_byte() -> None:
    bodies = [b"a", b"", b"hello" * 100, b"z"]
    stream = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder(max_frame_bytes=1024)
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == bodies
    assert decoder.pending_bytes() == 0


def test_frame_decoder_refuses_oversized_header_before_body_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    assert decoder.feed(frame(b"ok")) == [b"ok"]
    with pytest.raises(FrameError) as info:
        decoder.feed(struct.pack(">I", 1025))  # only the header: no body sent at all
    assert info.value.reason == "frame_too_large"
    assert decoder.pending_bytes() == 0


def test_frame_decoder_reports_partial_frame_as_pending() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    assert decoder.feed(frame(b"0123456789")[:7]) == []
    assert decoder.pending_bytes() == 7


def test_handshake_roundtrip_and_hmac() -> None:
    challenge, nonce = new_nonce(), new_nonce()
    body = encode_handshake(CLUSTER, 2, 1, b"s3cret", challenge=challenge, nonce=nonce)
    hs = decode_handshake(body, cluster=CLUSTER, our_id=1, secret=b"s3cret", challenge=challenge)
    assert (hs.proto, hs.cluster, hs.frm, hs.to, hs.nonce) == (PROTO_VERSION, CLUSTER, 2, 1, nonce)
    with pytest.raises(HandshakeRejected) as info:
        decode_handshake(body, cluster=CLUSTER, our_id=1, secret=b"other", challenge=challenge)
    assert info.value.reason == "hmac_mismatch"
    # A MAC is bound to the fields: re-addressing a captured handshake breaks it.
    fields = msgpack.unpackb(body)
    fields["from"] = 3
    with pytest.raises(HandshakeRejected) as info:
        decode_handshake(
            pack(fields), cluster=CLUSTER, our_id=1, secret=b"s3cret", challenge=challenge
        )
    assert info.value.reason == "hmac_mismatch"
    # ... and to the challenge: a captured handshake is worth nothing on another connection.
    with pytest.raises(HandshakeRejected) as info:
        decode_handshake(body, cluster=CLUSTER, our_id=1, secret=b"s3cret", challenge=new_nonce())
    assert info.value.reason == "hmac_mismatch"


def test_sealed_frames_open_in_order_and_refuse_forged_replayed_or_reordered_ones() -> None:
    key = session_key(b"s3cret", new_nonce(), new_nonce())
    frames = [frame(encode_message(app(2, 1, i, payload=b"x" * 50))) for i in range(10)]
    sealer = FrameSealer(key, max_inner_bytes=200)  # a few frames per seal
    stream = sealer.seal_all(frames[:5]) + sealer.seal_all(frames[5:])
    seals = FrameDecoder(1 << 20).feed(stream)
    assert len(seals) > 2
    opener = FrameOpener(key, 1 << 20)
    assert [b for one in seals for b in opener.open(one)] == [f[4:] for f in frames]

    def refused(opener: FrameOpener, sealed: bytes) -> bool:
        try:
            opener.open(sealed)
        except FrameError as exc:
            return exc.reason == "bad_seal"
        return False

    assert refused(FrameOpener(key, 1 << 20), seals[1])  # out of order (or replayed later)
    assert refused(FrameOpener(session_key(b"s3cret", new_nonce(), new_nonce()), 1 << 20), seals[0])
    forged = bytearray(seals[0])
    forged[-1] ^= 1
    assert refused(FrameOpener(key, 1 << 20), bytes(forged))
    assert refused(FrameOpener(key, 1 << 20), seals[0][:10])
    first = FrameOpener(key, 1 << 20)
    first.open(seals[0])
    assert refused(first, seals[0])  # the same seal again: a replay


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"proto": True, "cluster": CLUSTER, "from": 2, "to": 1}, "bad_proto"),
        ({"proto": PROTO_VERSION, "cluster": CLUSTER, "from": 1, "to": 1}, "bad_from"),
        ({"proto": PROTO_VERSION, "cluster": CLUSTER, "from": 0, "to": 1}, "bad_from"),
        ({"proto": PROTO_VERSION, "cluster": CLUSTER, "from": "2", "to": 1}, "bad_from"),
        (
            {"proto": PROTO_VERSION, "cluster": b"test-cluster", "from": 2, "to": 1},
            "cluster_mismatch",
        ),
        ({"proto": PROTO_VERSION, "cluster": CLUSTER, "from": 2, "to": 1.0}, "wrong_to"),
    ],
)
def test_handshake_field_checks(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(HandshakeRejected) as info:
        decode_handshake(pack(fields), cluster=CLUSTER, our_id=1, secret=None)
    assert info.value.reason == reason


# ---------------------------------------------------------------- delivery


async def test_two_transports_exchange_messages_both_ways_in_order(make_transport: Any) -> None:
    (a, b), (inbox_a, inbox_b) = await mesh(make_transport, 2)
    for i in range(300):
        a.send(app(1, 2, i))
        b.send(heartbeat(2, 1, i) if i % 2 else app(2, 1, i))
    got_b = await inbox_b.wait_for_count(300)
    got_a = await inbox_a.wait_for_count(300)
    assert got_b == [app(1, 2, i) for i in range(300)]
    assert got_a == [heartbeat(2, 1, i) if i % 2 else app(2, 1, i) for i in range(300)]
    assert a.connected(2) and b.connected(1)
    assert a.stats()[2].sent == 300 and a.stats()[2].dropped == 0


async def test_flush_writes_at_once_in_order_unless_the_writer_is_behind(
    make_transport: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flush` puts queued frames on the socket before the loop turns; never out of order."""
    (a, _b), (_, inbox_b) = await mesh(make_transport, 2)
    a.send(app(1, 2, 0))
    await inbox_b.wait_for_count(1)
    peer = a._peers[2]
    await wait_until(lambda: peer.idle_writer is not None)
    for i in range(1, 4):
        a.send(app(1, 2, i))
    assert a.stats()[2].queued == 3  # send alone only queues for the writer task
    a.flush()
    assert a.stats()[2].queued == 0 and a.stats()[2].sent == 4  # written, no await between
    # Bytes still buffered from before: flush leaves the frames to the writer task.
    writer = peer.idle_writer
    assert writer is not None
    monkeypatch.setattr(writer.transport, "get_write_buffer_size", lambda: 1)
    a.send(app(1, 2, 4))
    a.flush()
    assert a.stats()[2].queued == 1
    monkeypatch.undo()
    a.send(app(1, 2, 5))
    got = await inbox_b.wait_for_count(6)
    assert got == [app(1, 2, i) for i in range(6)]


async def test_three_transports_full_mesh_keeps_per_link_order(make_transport: Any) -> None:
    nodes, inboxes = await mesh(make_transport, 3)
    for i in range(100):
        for src in nodes:
            for dst in nodes:
                if src is not dst:
                    src.send(app(src.node_id, dst.node_id, i))
    for node, inbox in zip(nodes, inboxes, strict=True):
        got = await inbox.wait_for_count(200)
        for src in nodes:
            if src is node:
                continue
            from_src = [m.index for m in got if m.frm == src.node_id]
            assert from_src == list(range(100))
        assert all(m.to == node.node_id for m in got)


async def test_messages_queued_before_peer_is_up_are_delivered(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    (port,) = free_ports(1)
    a = Transport(1, CLUSTER, ("127.0.0.1", 0), {2: ("127.0.0.1", port)}, Inbox(), **FAST)
    a.send(app(1, 2, 0))  # queued even before start()
    try:
        await a.start()
        await _queued_before_peer_is_up(a, port, make_transport, logs)
    finally:
        await a.stop()


async def _queued_before_peer_is_up(
    a: Transport, port: int, make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    for i in range(1, 50):
        a.send(app(1, 2, i))
    await wait_until(lambda: len(events(logs, "raft.transport.connect_failed")) >= 2)
    assert not a.connected(2)
    assert a.stats()[2].queued == 50
    inbox_b = Inbox()
    await make_transport(2, {1: a.listen_addr}, inbox_b, port=port)
    got = await inbox_b.wait_for_count(50)
    assert [m.index for m in got] == list(range(50))
    await wait_until(lambda: a.stats()[2].queued == 0)
    # Repeated failures are logged once at info level, the rest at debug.
    failures = events(logs, "raft.transport.connect_failed")
    assert [e["log_level"] for e in failures[:2]] == ["info", "debug"]


async def test_peer_restart_mid_stream_reconnects(make_transport: Any) -> None:
    (port,) = free_ports(1)
    inbox_b1 = Inbox()
    b1 = await make_transport(2, inbox=inbox_b1, port=port)
    a = await make_transport(1, {2: ("127.0.0.1", port)})
    for i in range(100):
        a.send(app(1, 2, i))
    await inbox_b1.wait_for_count(100)
    await b1.stop()
    await wait_until(lambda: not a.connected(2))
    for i in range(100, 200):
        a.send(app(1, 2, i))
    assert a.stats()[2].queued == 100
    inbox_b2 = Inbox()
    await make_transport(2, inbox=inbox_b2, port=port)
    got = await inbox_b2.wait_for_count(100)
    assert [m.index for m in got] == list(range(100, 200))
    assert a.stats()[2].reconnects == 1
    assert a.connected(2)


async def test_update_peer_moves_the_link_and_remove_peer_forgets_it(make_transport: Any) -> None:
    a = await make_transport(1, {2: ("127.0.0.1", free_ports(1)[0])})
    a.send(app(1, 2, 0))
    inbox_b = Inbox()
    b = await make_transport(2, inbox=inbox_b)
    a.update_peer(2, b.listen_addr)
    assert (await inbox_b.wait_for_count(1))[0].index == 0
    a.remove_peer(2)
    a.send(app(1, 2, 1))
    assert 2 not in a.stats()
    assert not a.connected(2)
    await asyncio.sleep(0.1)
    assert len(inbox_b.messages) == 1


async def test_update_peer_while_connected_moves_to_the_new_address(make_transport: Any) -> None:
    inbox_old, inbox_new = Inbox(), Inbox()
    old = await make_transport(2, inbox=inbox_old)
    a = await make_transport(1, {2: old.listen_addr})
    a.send(app(1, 2, 0))
    await inbox_old.wait_for_count(1)
    new = await make_transport(2, inbox=inbox_new)
    a.update_peer(2, new.listen_addr)
    await wait_until(lambda: a.stats()[2].addr == new.listen_addr and a.connected(2))
    for i in range(1, 4):
        a.send(app(1, 2, i))
    got = await inbox_new.wait_for_count(3)
    assert [m.index for m in got] == [1, 2, 3]
    assert [m.index for m in inbox_old.messages] == [0]


def test_backoff_is_capped_jittered_and_exponential() -> None:
    import random

    t = Transport(
        1,
        CLUSTER,
        ("127.0.0.1", 0),
        {},
        Inbox(),
        backoff_base_s=0.1,
        backoff_max_s=1.0,
        rng=random.Random(7),
    )
    for attempt, cap in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (50, 1.0)]:
        delays = [t._backoff_s(attempt) for _ in range(200)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed schedule


async def test_stop_is_idempotent_and_closes_the_port(make_transport: Any) -> None:
    (a, b), _ = await mesh(make_transport, 2)
    await wait_until(lambda: a.connected(2) and b.connected(1))
    await a.stop()
    await a.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection(*a.listen_addr)
    await wait_until(lambda: not b.connected(1))


async def test_on_message_exception_does_not_kill_the_link(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    seen: list[int] = []

    def flaky(msg: Message) -> None:
        seen.append(msg.index)
        if msg.index == 1:
            raise RuntimeError("driver bug")

    b = await make_transport(2, inbox=flaky)  # type: ignore[arg-type]
    a = await make_transport(1, {2: b.listen_addr})
    for i in range(3):
        a.send(app(1, 2, i))
    await wait_until(lambda: len(seen) == 3)
    assert seen == [0, 1, 2]
    assert events(logs, "raft.transport.on_message_failed")


# ---------------------------------------------------------------- one-way links


async def test_accepted_connections_are_never_written(make_transport: Any) -> None:
    """Node 1 answers peer "2" only on its own outbound connection, never on the inbound one."""
    outbound_frames: list[bytes] = []
    got_frames = asyncio.Event()

    async def fake_peer_listener(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        decoder = FrameDecoder(1 << 20)
        while chunk := await reader.read(65536):
            outbound_frames.extend(decoder.feed(chunk))
            if len(outbound_frames) >= 21:
                got_frames.set()
        writer.close()

    server = await asyncio.start_server(fake_peer_listener, "127.0.0.1", 0)
    try:
        inbox_a = Inbox()
        a = await make_transport(1, {2: server.sockets[0].getsockname()[:2]}, inbox_a)
        # Fake peer 2 dials node 1 and handshakes, as a real peer's writer would.
        reader, writer = await asyncio.open_connection(*a.listen_addr)
        writer.write(frame(encode_handshake(CLUSTER, 2, 1, None)))
        writer.write(frame(encode_message(app(2, 1, 7))))
        await writer.drain()
        assert (await inbox_a.wait_for_count(1))[0] == app(2, 1, 7)
        for i in range(20):
            a.send(app(1, 2, i))
        async with asyncio.timeout(WAIT_S):
            await got_frames.wait()
        hs = decode_handshake(outbound_frames[0], cluster=CLUSTER, our_id=2, secret=None)
        assert hs.frm == 1 and hs.to == 2
        assert [decode_message(f) for f in outbound_frames[1:]] == [app(1, 2, i) for i in range(20)]
        # The accepted connection stayed open and silent the whole time.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        assert not reader.at_eof()
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_frames_split_into_single_bytes_are_reassembled(make_transport: Any) -> None:
    """What a slicer toxic does to the stream: every byte in its own TCP write."""
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox)
    stream = handshake(frm=3) + b"".join(frame(encode_message(app(3, 1, i))) for i in range(3))
    _reader, writer = await asyncio.open_connection(*a.listen_addr)
    try:
        for i in range(len(stream)):
            writer.write(stream[i : i + 1])
            await writer.drain()
        got = await inbox.wait_for_count(3)
        assert got == [app(3, 1, i) for i in range(3)]
    finally:
        writer.close()


class LinkProxy:
    """A minimal TCP forwarder standing in for the chaos proxy on one directed link."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.bytes_downstream = 0  # bytes the accepting side wrote back through the proxy
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        return self._server.sockets[0].getsockname()[:2]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)
        self._writers += [client_w, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, downstream: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if downstream:
                        self.bytes_downstream += len(data)
                    w.write(data)
                    await w.drain()
            w.close()

        for coro in (pipe(client_r, up_w, False), pipe(up_r, client_w, True)):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        """Disable the link: stop listening and close every live connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in self._writers:
            w.close()
        self._writers.clear()
        for task in list(self._tasks):
            task.cancel()


async def test_one_proxy_per_directed_link_cuts_exactly_one_direction(make_transport: Any) -> None:
    inbox_a, inbox_b = Inbox(), Inbox()
    a = await make_transport(1, inbox=inbox_a)
    b = await make_transport(2, {1: a.listen_addr}, inbox_b)
    a_to_b = LinkProxy(b.listen_addr)
    proxy_addr = await a_to_b.start()
    a.update_peer(2, proxy_addr)  # 1 reaches 2 only through the proxy; 2 reaches 1 directly
    try:
        a.send(app(1, 2, 0))
        b.send(app(2, 1, 0))
        await inbox_b.wait_for_count(1)
        await inbox_a.wait_for_count(1)
        assert a_to_b.bytes_downstream == 0  # node 2 never wrote on the link it accepted
        await a_to_b.cut()
        await wait_until(lambda: not a.connected(2))
        for i in range(1, 6):
            a.send(app(1, 2, i))
            b.send(app(2, 1, i))
        got_a = await inbox_a.wait_for_count(6)
        assert [m.index for m in got_a] == list(range(6))  # 2 -> 1 still flows
        await asyncio.sleep(0.2)
        assert [m.index for m in inbox_b.messages] == [0]  # 1 -> 2 is cut
        assert a.stats()[2].queued == 5
        await a_to_b.start(port=proxy_addr[1])  # heal
        got_b = await inbox_b.wait_for_count(6)
        assert [m.index for m in got_b] == list(range(6))
    finally:
        await a_to_b.cut()


# ---------------------------------------------------------------- bounded queue


async def test_bounded_queue_drops_heartbeats_before_other_messages(make_transport: Any) -> None:
    (port,) = free_ports(1)
    a = await make_transport(1, {2: ("127.0.0.1", port)})
    assert a.max_queue_msgs == 4096
    sent: list[Message] = []
    for i in range(10_000):
        msg = app(1, 2, i) if i % 10 < 3 else heartbeat(1, 2, i)
        sent.append(msg)
        a.send(msg)
    st = a.stats()[2]
    assert st.queued == 4096
    assert st.dropped == 10_000 - 4096
    apps = [m for m in sent if m.type is MessageType.APP]
    hbs = [m for m in sent if m.type is MessageType.HEARTBEAT]
    # All 3000 APPs survive; only the newest heartbeats fill the remaining slots.
    expected = sorted(apps + hbs[-(4096 - len(apps)) :], key=lambda m: m.commit)
    inbox_b = Inbox()
    await make_transport(2, inbox=inbox_b, port=port)
    got = await inbox_b.wait_for_count(4096)
    assert got == expected
    assert a.stats()[2].queued == 0


async def test_bounded_queue_without_heartbeats_drops_the_oldest(make_transport: Any) -> None:
    (port,) = free_ports(1)
    a = await make_transport(1, {2: ("127.0.0.1", port)}, max_queue_msgs=100)
    for i in range(1000):
        a.send(app(1, 2, i))
    assert a.stats()[2].queued == 100
    assert a.stats()[2].dropped == 900
    inbox_b = Inbox()
    await make_transport(2, inbox=inbox_b, port=port)
    got = await inbox_b.wait_for_count(100)
    assert [m.index for m in got] == list(range(900, 1000))


async def test_send_refuses_foreign_frm_and_oversized_messages(make_transport: Any) -> None:
    (port,) = free_ports(1)
    a = await make_transport(1, {2: ("127.0.0.1", port)}, max_frame_bytes=1000)
    a.send(app(3, 2, 0))  # not from this node: the peer would drop the link for it
    # The peer would refuse the frame every time: never a silent drop, a loud error.
    with pytest.raises(UndeliverableMessage, match="frame limit"):
        a.send(app(1, 2, 1, payload=b"x" * 2000))
    a.send(app(1, 9, 2))  # unknown peer
    assert a.stats()[2].queued == 0
    assert a.send_refused == 2 and a.stats()[2].dropped == 1


# ---------------------------------------------------------------- hostile input


@pytest.fixture
async def guarded(make_transport: Any) -> Any:
    """Node 1 under test, plus a well-behaved node 2 to prove it still serves after abuse."""
    return await _guarded(make_transport, secret=None)


async def _guarded(make_transport: Any, secret: bytes | None) -> Any:
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, secret=secret)
    good = await make_transport(2, {1: a.listen_addr}, secret=secret)
    a.update_peer(2, good.listen_addr)

    class Guarded:
        node = a
        messages = inbox

        async def attack(self, data: bytes, *, eof: bool = False) -> None:
            """Send raw bytes to node 1's peer port; assert node 1 closes the connection
            (having sent nothing but its challenge, with a secret)."""
            reader, writer = await asyncio.open_connection(*a.listen_addr)
            try:
                writer.write(data)
                await writer.drain()
                if eof:
                    writer.write_eof()
                said = await asyncio.wait_for(reader.read(), WAIT_S)
                if secret is not None:
                    (challenge,) = FrameDecoder(4096).feed(said)
                    assert len(decode_challenge(challenge)) == NONCE_BYTES
                else:
                    assert said == b""
            finally:
                writer.close()

        async def still_serves_good_peer(self) -> None:
            good.send(app(2, 1, 77, payload=b"good"))
            got = await inbox.wait_for_count(1)
            assert got == [app(2, 1, 77, payload=b"good")]

    return Guarded()


def handshake(
    frm: int = 3, to: int = 1, cluster: str = CLUSTER, secret: bytes | None = None
) -> bytes:
    # An attacker does not wait for the challenge: with a secret it signs another one.
    nonce = new_nonce() if secret is not None else b""
    return frame(encode_handshake(cluster, frm, to, secret, challenge=new_nonce(), nonce=nonce))


def reasons(entries: list[dict[str, Any]], name: str) -> list[str]:
    return [e["reason"] for e in events(entries, name)]


async def test_oversized_length_prefix_is_rejected_without_reading_body(
    guarded: Any, logs: list[dict[str, Any]]
) -> None:
    # Only the 4-byte header is sent: the node must not wait for 4 GiB of body.
    await guarded.attack(handshake() + b"\xff\xff\xff\xff")
    assert reasons(logs, "raft.transport.bad_frame") == ["frame_too_large"]
    await guarded.still_serves_good_peer()


async def test_invalid_msgpack_is_rejected(guarded: Any, logs: list[dict[str, Any]]) -> None:
    await guarded.attack(handshake() + frame(b"\xc1\x93\x01"))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"]
    await guarded.still_serves_good_peer()


@pytest.mark.parametrize(
    "overrides",
    [
        {"term": True},  # bool where an int belongs
        {"reject": 1},  # int where a bool belongs
        {"index": -1, "entries": []},  # negative index
        {"commit": 2**64 - 1},  # beyond 2^63 (2**70 cannot even be encoded in msgpack)
        {"ctx": "text"},  # str where bytes belong
        {"entries": [[6, 2, 0, "text"]]},  # str entry data
        {"entries": [[6, 2, 0]]},  # malformed entry
        {"entries": [[7, 2, 0, b"x"]]},  # entry index does not follow message index
        {"ver": 2},  # unknown wire version
    ],
    ids=lambda o: ",".join(o),
)
async def test_wrong_shapes_and_types_are_rejected(
    guarded: Any, logs: list[dict[str, Any]], overrides: dict[str, Any]
) -> None:
    await guarded.attack(handshake() + frame(pack(raw_message(**overrides))))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"]
    await guarded.still_serves_good_peer()


async def test_huge_int_outside_msgpack_range_is_rejected(
    guarded: Any, logs: list[dict[str, Any]]
) -> None:
    with pytest.raises(OverflowError):
        pack(2**70)
    # The closest a peer can get: a 2**70 smuggled as an ext type or float is still refused.
    for value in (msgpack.ExtType(1, (2**70).to_bytes(9, "big")), float(2**70)):
        await guarded.attack(handshake() + frame(pack(raw_message(term=value))))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"] * 2
    await guarded.still_serves_good_peer()


async def test_not_an_array_and_wrong_length_are_rejected(
    guarded: Any, logs: list[dict[str, Any]]
) -> None:
    await guarded.attack(handshake() + frame(pack({"type": 5})))
    await guarded.attack(handshake() + frame(pack(raw_message()[:12])))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"] * 2
    await guarded.still_serves_good_peer()


async def test_unknown_message_type_is_rejected(guarded: Any, logs: list[dict[str, Any]]) -> None:
    await guarded.attack(handshake() + frame(pack(raw_message(type=99))))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"]
    await guarded.still_serves_good_peer()


async def test_truncated_frame_is_rejected(guarded: Any, logs: list[dict[str, Any]]) -> None:
    body = pack(raw_message())
    await guarded.attack(handshake() + frame(body)[:-3], eof=True)
    assert reasons(logs, "raft.transport.bad_frame") == ["truncated_frame"]
    await guarded.still_serves_good_peer()


async def test_valid_frames_before_a_bad_one_are_delivered_then_link_closed(
    guarded: Any, logs: list[dict[str, Any]]
) -> None:
    good = frame(pack(raw_message()))
    await guarded.attack(handshake() + good + frame(b"\xc1"))
    assert reasons(logs, "raft.transport.bad_frame") == ["invalid_message"]
    assert [m.frm for m in guarded.messages.messages] == [3]
    guarded.messages.messages.clear()
    await guarded.still_serves_good_peer()


async def test_frm_mismatch_is_rejected(guarded: Any, logs: list[dict[str, Any]]) -> None:
    # Handshake says node 3, message claims node 2 (spoofing the good peer).
    await guarded.attack(handshake(frm=3) + frame(pack(raw_message(frm=2))))
    assert reasons(logs, "raft.transport.bad_frame") == ["frm_mismatch"]
    await guarded.still_serves_good_peer()


async def test_to_mismatch_is_rejected(guarded: Any, logs: list[dict[str, Any]]) -> None:
    await guarded.attack(handshake() + frame(pack(raw_message(to=4))))
    assert reasons(logs, "raft.transport.bad_frame") == ["to_mismatch"]
    await guarded.still_serves_good_peer()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (handshake(cluster="other-cluster"), "cluster_mismatch"),
        (frame(pack({"proto": 1, "cluster": CLUSTER, "from": 3, "to": 1})), "bad_proto"),
        (frame(pack({"cluster": CLUSTER, "from": 3, "to": 1})), "bad_proto"),
        (handshake(to=5), "wrong_to"),
        (frame(b"\xc1"), "undecodable"),
        (frame(pack([1, CLUSTER, 3, 1])), "not_a_map"),
        (b"\x00\x10\x00\x00", "too_large"),
        (frame(pack({"proto": 1}))[:-1], "truncated"),
    ],
    ids=[
        "cluster",
        "proto_version",
        "proto_missing",
        "to",
        "undecodable",
        "not_map",
        "too_large",
        "truncated",
    ],
)
async def test_bad_handshake_is_rejected(
    guarded: Any, logs: list[dict[str, Any]], data: bytes, reason: str
) -> None:
    # Each bad handshake is followed by a valid message that must never be delivered
    # (except the truncated one, which ends the stream mid-handshake).
    if reason == "truncated":
        await guarded.attack(data, eof=True)
    else:
        await guarded.attack(data + frame(pack(raw_message())))
    assert reasons(logs, "raft.transport.handshake_rejected") == [reason]
    await guarded.still_serves_good_peer()


async def test_silent_client_is_dropped_after_handshake_timeout(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    a = await make_transport(1, handshake_timeout_s=0.2)
    reader, writer = await asyncio.open_connection(*a.listen_addr)
    try:
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
    finally:
        writer.close()
    assert reasons(logs, "raft.transport.handshake_rejected") == ["timeout"]


@pytest.mark.parametrize(
    ("secret_used", "reason"),
    [(None, "hmac_missing"), (b"wrong-secret", "hmac_mismatch")],
    ids=["missing", "wrong"],
)
async def test_hmac_is_required_when_secret_is_set(
    make_transport: Any,
    logs: list[dict[str, Any]],
    secret_used: bytes | None,
    reason: str,
) -> None:
    guarded = await _guarded(make_transport, secret=b"cluster-secret")
    await guarded.attack(handshake(secret=secret_used) + frame(pack(raw_message())))
    assert reasons(logs, "raft.transport.handshake_rejected") == [reason]
    await guarded.still_serves_good_peer()  # the good peer authenticates with the secret


async def test_transport_with_wrong_secret_never_delivers(make_transport: Any) -> None:
    inbox_a = Inbox()
    a = await make_transport(1, inbox=inbox_a, secret=b"right")
    b = await make_transport(2, {1: a.listen_addr}, secret=b"wrong")
    for i in range(5):
        b.send(app(2, 1, i))
    await asyncio.sleep(0.3)
    assert inbox_a.messages == []
    assert a.rejected_connections >= 1


async def _capture_a_genuine_connection(make_transport: Any, secret: bytes) -> bytes:
    """What node 2 (holding the secret) sends node 1 on one connection: the handshake
    answering a challenge, then sealed frames. An eavesdropper on the link has these."""
    captured = bytearray()
    enough = asyncio.Event()

    async def listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(pack({"proto": PROTO_VERSION, "challenge": new_nonce()})))
        while chunk := await reader.read(65536):
            captured.extend(chunk)
            if len(FrameDecoder(1 << 20).feed(bytes(captured))) >= 2:
                enough.set()
        writer.close()

    server = await asyncio.start_server(listener, "127.0.0.1", 0)
    try:
        b = await make_transport(2, {1: server.sockets[0].getsockname()[:2]}, secret=secret)
        b.send(app(2, 1, 1, payload=b"genuine"))
        async with asyncio.timeout(WAIT_S):
            await enough.wait()
        await b.stop()
    finally:
        server.close()
    return bytes(captured)


async def test_a_replayed_handshake_and_its_frames_are_refused(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    """Node 1 challenges every connection afresh, so a recorded handshake fails its MAC
    and none of the recorded (sealed) frames after it is delivered."""
    secret = b"cluster-secret-0123"
    recorded = await _capture_a_genuine_connection(make_transport, secret)
    guarded = await _guarded(make_transport, secret=secret)
    await guarded.attack(recorded)
    assert reasons(logs, "raft.transport.handshake_rejected") == ["hmac_mismatch"]
    assert guarded.messages.messages == []
    await guarded.still_serves_good_peer()


async def test_a_frame_injected_into_an_authenticated_connection_is_refused(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    """A man in the middle lets the genuine handshake through and then writes a forged
    AppendEntries with a higher term: its seal fails, node 1 closes the connection without
    delivering it, and node 2's next connection carries on."""
    secret = b"cluster-secret-0123"
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, secret=secret)
    injected = asyncio.Event()

    async def mitm(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*a.listen_addr)

        async def down() -> None:  # node 1's challenge back to node 2
            while data := await up_r.read(65536):
                client_w.write(data)
            client_w.close()

        relay = asyncio.ensure_future(down())
        seen = bytearray()
        with contextlib.suppress(Exception):
            while data := await client_r.read(65536):
                up_w.write(data)
                seen.extend(data)
                if not injected.is_set() and FrameDecoder(1 << 20).feed(bytes(seen)):
                    forged = app(2, 1, 1, payload=b"forged")
                    up_w.write(frame(encode_message(dataclasses.replace(forged, term=99))))
                    injected.set()
        up_w.close()
        relay.cancel()

    proxy = await asyncio.start_server(mitm, "127.0.0.1", 0)
    try:
        b = await make_transport(2, {1: proxy.sockets[0].getsockname()[:2]}, secret=secret)
        async with asyncio.timeout(WAIT_S):
            await injected.wait()
        await wait_until(lambda: reasons(logs, "raft.transport.bad_frame") == ["bad_seal"])
    finally:
        proxy.close()
    assert all(m.term != 99 for m in inbox.messages)
    b.update_peer(1, a.listen_addr)  # the direct link: node 2 reconnects and is heard
    b.send(app(2, 1, 5, payload=b"after"))
    got = await inbox.wait_for_count(1)
    assert got[-1] == app(2, 1, 5, payload=b"after")


async def test_seeded_bit_flips_never_crash_or_deliver_garbage(
    guarded: Any, logs: list[dict[str, Any]]
) -> None:
    """Fuzz: flip random bytes of valid frames; whatever arrives must be a valid message."""
    import random

    rng = random.Random(1234)
    template = frame(encode_message(app(3, 1, 5, payload=b"fuzz-payload")))
    n_cases = 150
    for _ in range(n_cases):
        data = bytearray(template)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        reader, writer = await asyncio.open_connection(*guarded.node.listen_addr)
        try:
            writer.write(handshake(frm=3) + bytes(data))
            writer.write_eof()
            await asyncio.wait_for(reader.read(), WAIT_S)  # the node closes every case
        finally:
            writer.close()
    for msg in guarded.messages.messages:  # survivors of the flips are still valid messages
        assert isinstance(msg, Message) and msg.frm == 3 and msg.to == 1
        assert decode_message(encode_message(msg)) == msg
    stats = guarded.node.inbound_stats()
    assert stats["bad_frames"] + stats["received"] >= n_cases
    guarded.messages.messages.clear()
    await guarded.still_serves_good_peer()


# ---------------------------------------------------------------- configuration digest


def test_config_digest_names_members_and_entry_limit_not_their_order() -> None:
    base = config_digest((1, 2, 3), 8 << 20)
    assert config_digest((3, 1, 2), 8 << 20) == base
    assert config_digest((1, 2, 3, 4), 8 << 20) != base  # another majority
    assert config_digest((1, 2, 4), 8 << 20) != base
    assert config_digest((1, 2, 3), 4 << 20) != base  # frames the other may refuse


async def test_peers_with_different_member_lists_refuse_each_other(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    """Nodes started with different --peers would count different majorities."""
    three = config_digest((1, 2, 3), 8 << 20)
    four = config_digest((1, 2, 3, 4), 8 << 20)
    inbox_b = Inbox()
    b = await make_transport(2, inbox=inbox_b, config_digest=three)
    a = await make_transport(1, {2: b.listen_addr}, config_digest=four)
    a.send(app(1, 2, 1))
    await asyncio.sleep(0.5)
    assert inbox_b.messages == []
    assert "config_mismatch" in reasons(logs, "raft.transport.handshake_rejected")
    same = await make_transport(3, {2: b.listen_addr}, config_digest=three)
    same.send(app(3, 2, 2))
    assert [m.index for m in await inbox_b.wait_for_count(1)] == [2]


async def test_the_driver_puts_members_and_entry_limit_in_the_handshake(tmp_path: Any) -> None:
    """A node bootstrapping from `peers` names them; one whose log already holds a
    configuration (its `peers` are history, membership lives in the log) does not."""
    from raft.driver import RaftNode
    from raft.memory_storage import MemoryStorage
    from raft.messages import ConfState

    class NoMachine:
        def applied_index(self) -> int:
            return 0

        def apply(self, entries: Any) -> list[Any]:
            return [None] * len(entries)

    peers = {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2), 3: ("127.0.0.1", 3)}
    for storage, expected in (
        (MemoryStorage(), config_digest((1, 2, 3), 8 << 20)),
        (MemoryStorage(conf_state=ConfState((1, 2, 4))), config_digest((), 8 << 20)),
    ):
        node = RaftNode(
            1,
            peers,
            storage,
            NoMachine(),  # type: ignore[arg-type]
            cluster_id=CLUSTER,
            listen=("127.0.0.1", 0),
        )
        await node.start()
        try:
            assert node._transport_options["config_digest"] == expected
        finally:
            await node.stop()


async def test_each_message_carries_the_incarnation_its_connection_announced(
    make_transport: Any,
) -> None:
    """The driver judges a message by the data dir of the process that sent it: what a
    node said before it lost its disk must not count as said by its new incarnation."""
    got: list[tuple[int, str]] = []

    def receive(msg: Message, incarnation: str) -> None:
        got.append((msg.index, incarnation))

    b = await make_transport(2, inbox=receive, with_incarnation=True)  # type: ignore[arg-type]
    old = await make_transport(1, {2: b.listen_addr}, incarnation="old")
    old.send(app(1, 2, 1))
    await wait_until(lambda: (1, "old") in got)
    await old.stop()
    new = await make_transport(1, {2: b.listen_addr}, incarnation="new")
    new.send(app(1, 2, 2))
    await wait_until(lambda: (2, "new") in got)
    assert got == [(1, "old"), (2, "new")]
    assert b.peer_incarnations[1] == "new"


async def test_addresses_from_peers_win_over_the_configurations(tmp_path: Any) -> None:
    """A node reaches a peer the way it was told to (a proxy, a NAT may sit on this one
    path); the address a configuration records only serves members it was not told of."""
    from raft.driver import RaftNode
    from raft.memory_storage import MemoryStorage
    from raft.messages import ConfState, Member

    class NoMachine:
        def applied_index(self) -> int:
            return 0

        def apply(self, entries: Any) -> list[Any]:
            return [None] * len(entries)

    conf = ConfState(
        (1, 2, 3),
        (),
        (Member(2, raft_addr="10.0.0.2:7102"), Member(3, raft_addr="127.0.0.1:7103")),
    )
    node = RaftNode(
        1,
        {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 9102)},  # 2 through a proxy, 3 not listed
        MemoryStorage(conf_state=conf),
        NoMachine(),  # type: ignore[arg-type]
        cluster_id=CLUSTER,
        listen=("127.0.0.1", 0),
    )
    await node.start()
    try:
        assert node.peers[2] == ("127.0.0.1", 9102)
        assert node.peers[3] == ("127.0.0.1", 7103)
    finally:
        await node.stop()


async def test_flush_on_a_connection_closed_under_it_keeps_the_frames_for_the_next() -> None:
    """The peer's connection closes while the writer idles: a flush (the driver calls it
    before every inline fsync) must neither raise (under uvloop, a write to a closed stream
    raised and failed a leader's driver) nor lose the frames (asyncio drops them)."""

    async def scenario() -> list[Message]:
        inbox_b = Inbox()
        a = Transport(1, CLUSTER, ("127.0.0.1", 0), {}, Inbox(), **FAST)
        b = Transport(2, CLUSTER, ("127.0.0.1", 0), {}, inbox_b, **FAST)
        await a.start()
        await b.start()
        try:
            a.update_peer(2, b.listen_addr)
            a.send(app(1, 2, 0))
            await inbox_b.wait_for_count(1)
            peer = a._peers[2]
            await wait_until(lambda: peer.idle_writer is not None)
            writer = peer.idle_writer
            assert writer is not None
            writer.transport.abort()  # closed under the idle writer, before anyone noticed
            await asyncio.sleep(0)
            for i in range(1, 4):
                a.send(app(1, 2, i))
            a.flush()  # must not raise
            return await inbox_b.wait_for_count(4)
        finally:
            await a.stop()
            await b.stop()

    assert await scenario() == [app(1, 2, i) for i in range(4)]


# ---------------------------------------------------------------- resource limits


async def _handshaken(addr: tuple[str, int], source: str = "127.0.0.2") -> Any:
    """A raw connection from `source` that introduced itself as node 3 (no secret)."""
    reader, writer = await asyncio.open_connection(*addr, local_addr=(source, 0))
    writer.write(handshake())
    await writer.drain()
    return reader, writer


async def test_one_address_holds_at_most_its_share_of_peer_connections(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, max_connections_per_address=2)
    held = [
        await asyncio.open_connection(*a.listen_addr, local_addr=("127.0.0.2", 0)) for _ in range(2)
    ]
    reader, writer = await asyncio.open_connection(*a.listen_addr, local_addr=("127.0.0.2", 0))
    assert await closed_by_peer(reader, 2.0)  # closed at once, not after the 5 s handshake
    writer.close()
    refused = events(logs, "raft.transport.connection_refused")
    assert [(e["refused_total"], e["limit"]) for e in refused] == [(1, 2)]
    good = await make_transport(2, {1: a.listen_addr})  # another address still gets in
    good.send(app(2, 1, 7))
    assert await inbox.wait_for_count(1) == [app(2, 1, 7)]
    for _r, w in held:
        w.close()


async def test_a_silent_peer_connection_is_closed_but_a_quiet_peer_keeps_its_link(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    """A connection that says nothing for idle_timeout_s is closed; a real dialer with
    nothing to send writes keep-alives, so its link stays up and carries on."""
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, idle_timeout_s=0.4)
    reader, writer = await _handshaken(a.listen_addr)
    quiet = await make_transport(2, {1: a.listen_addr}, idle_timeout_s=0.4)
    await wait_until(lambda: quiet.connected(1))
    assert await closed_by_peer(reader, 3.0)  # the silent one
    writer.close()
    await asyncio.sleep(1.2)  # three idle timeouts with nothing to send
    assert quiet.connected(1) and quiet.stats()[1].reconnects == 0
    assert [e["peer"] for e in events(logs, "raft.transport.idle_closed")] == [3]
    quiet.send(app(2, 1, 9))
    assert await inbox.wait_for_count(1) == [app(2, 1, 9)]


async def test_keepalives_are_sealed_with_a_secret(make_transport: Any) -> None:
    secret = b"cluster-secret-0123"
    inbox = Inbox()
    a = await make_transport(1, inbox=inbox, secret=secret, idle_timeout_s=0.3)
    b = await make_transport(2, {1: a.listen_addr}, secret=secret, idle_timeout_s=0.3)
    await wait_until(lambda: b.connected(1))
    await asyncio.sleep(1.0)  # keep-alive seals in sequence between the frames
    b.send(app(2, 1, 4))
    assert await inbox.wait_for_count(1) == [app(2, 1, 4)]
    assert b.stats()[1].reconnects == 0 and a.bad_frames == 0


async def test_a_frame_trickling_in_is_cut_off_after_the_read_timeout(
    make_transport: Any, logs: list[dict[str, Any]]
) -> None:
    a = await make_transport(1, read_timeout_s=0.3)
    reader, writer = await _handshaken(a.listen_addr)
    writer.write(struct.pack(">I", 100) + b"\x9d" * 10)  # 10 of 100 announced bytes
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):  # a byte now and then keeps it from being idle, not from the cut
        await asyncio.sleep(0.1)
        if reader.at_eof() or writer.is_closing():
            break
        with contextlib.suppress(ConnectionError):
            writer.write(b"\x00")
    assert await closed_by_peer(reader, 3.0)
    assert loop.time() - started < 2.0
    writer.close()
    assert reasons(logs, "raft.transport.bad_frame") == ["slow_frame"]
