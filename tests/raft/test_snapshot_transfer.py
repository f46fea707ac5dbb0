"""InstallSnapshot in chunks: flow control, lost chunks, corrupt chunks, a dropped
connection (resume), a receiver that started over, and giving up."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from raft.messages import ConfState, Message, MessageType, SnapChunk, SnapshotMeta
from raft.snapshot_transfer import (
    RESP_ACK,
    RESP_REFUSE,
    RESP_RESEND,
    SnapshotReceiver,
    SnapshotSender,
    SnapshotSource,
)

DATA = bytes(range(256)) * 40  # 10,240 bytes
META = SnapshotMeta(17, 3, ConfState((1, 2, 3)))


def source(data: bytes = DATA, snap_id: bytes = b"snap-1") -> SnapshotSource:
    return SnapshotSource(
        META,
        snap_id,
        len(data),
        hashlib.sha256(data).digest(),
        lambda offset, length: data[offset : offset + length],
    )


def sender(src: SnapshotSource | None = None, **kw: object) -> SnapshotSender:
    opts = {"chunk_bytes": 1000, "window_chunks": 3, "retry_s": 1.0, "give_up_s": 5.0, **kw}
    return SnapshotSender(
        node_id=1,
        to=2,
        term=4,
        commit=20,
        source=src or source(),
        now_s=0.0,
        **opts,  # type: ignore[arg-type]
    )


class Disk:
    """The receiver's side: what it stores, as a file would."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.begun = 0

    def receiver(self) -> SnapshotReceiver:
        def begin(chunk: SnapChunk) -> None:
            self.begun += 1
            self.data = bytearray()

        def write(offset: int, data: bytes) -> None:
            assert offset == len(self.data)
            self.data += data

        def finish(chunk: SnapChunk) -> bytes:
            return hashlib.sha256(bytes(self.data)).digest()

        return SnapshotReceiver(2, begin=begin, write=write, finish=finish)


def deliver_all(s: SnapshotSender, r: SnapshotReceiver, msgs: list[Message], now: float = 0.0):
    """Deliver chunks and responses until quiet; the whole SNAP for the core, if any."""
    whole = None
    while msgs:
        chunk = msgs.pop(0)
        resp, done = r.on_chunk(chunk, current_term=4)
        whole = done or whole
        if resp is not None:
            msgs += s.on_resp(resp, now)
    return whole


def test_a_snapshot_arrives_whole_in_window_sized_steps() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    first = s.start(0.0)
    assert len(first) == 3  # never more than the window ahead of the acks
    assert [m.chunk.offset for m in first] == [0, 1000, 2000]  # type: ignore[union-attr]
    whole = deliver_all(s, r, first)
    assert s.done and not s.failed and bytes(disk.data) == DATA
    assert whole is not None and whole.type is MessageType.SNAP and whole.chunk is None
    assert whole.snapshot == META and whole.frm == 1 and whole.term == 4 and whole.commit == 20
    assert s.chunks_sent == 11


def test_a_lost_chunk_is_resent_from_the_receivers_offset() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    msgs = s.start(0.0)
    lost = msgs.pop(1)  # chunk at 1000 never arrives
    resp, _ = r.on_chunk(msgs[0], 4)
    assert resp is not None and resp.reject_hint == RESP_ACK and resp.chunk.offset == 1000  # type: ignore[union-attr]
    more = s.on_resp(resp, 0.1)
    resp, _ = r.on_chunk(msgs[1], 4)  # the one at 2000: out of order
    assert resp is not None and resp.reject_hint == RESP_RESEND and resp.chunk.offset == 1000  # type: ignore[union-attr]
    resent = s.on_resp(resp, 0.2)
    assert resent[0].chunk.offset == lost.chunk.offset == 1000  # type: ignore[union-attr]
    whole = deliver_all(s, r, resent + more[1:])
    assert whole is not None and bytes(disk.data) == DATA


def test_a_corrupt_chunk_is_refused_and_resent() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    msgs = s.start(0.0)
    bad = msgs[0]
    flipped = Message(
        bad.type,
        to=bad.to,
        frm=bad.frm,
        term=bad.term,
        context=b"X" + bad.context[1:],
        snapshot=bad.snapshot,
        chunk=bad.chunk,
    )
    resp, _ = r.on_chunk(flipped, 4)
    assert resp is not None and resp.reject_hint == RESP_RESEND and resp.chunk.offset == 0  # type: ignore[union-attr]
    assert disk.data == b""
    whole = deliver_all(s, r, s.on_resp(resp, 0.1))
    assert whole is not None and bytes(disk.data) == DATA


def test_silence_means_resend_then_give_up() -> None:
    s = sender(retry_s=1.0, give_up_s=5.0)
    s.start(0.0)
    assert s.tick(0.5) == []
    again = s.tick(1.0)  # nothing acked: start over from the acked offset
    assert again and again[0].chunk.offset == 0  # type: ignore[union-attr]
    assert not s.failed
    assert s.tick(5.0) == [] and s.failed


def test_a_dropped_connection_resumes_where_the_receiver_stopped() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    msgs = s.start(0.0)
    for m in msgs[:2]:  # two chunks land, then the link drops everything in flight
        resp, _ = r.on_chunk(m, 4)
        s.on_resp(resp, 0.1)  # type: ignore[arg-type]
    assert s.acked == 2000
    # The leader gives up on this transfer and starts another of the same snapshot.
    retry = sender()
    first = retry.start(2.0)
    resp, _ = r.on_chunk(first[0], 4)  # offset 0: it is at 2000 already
    assert resp is not None and resp.chunk.offset == 2000  # type: ignore[union-attr]
    assert disk.begun == 1  # nothing received was thrown away
    whole = deliver_all(retry, r, retry.on_resp(resp, 2.1))
    assert whole is not None and bytes(disk.data) == DATA


def test_a_receiver_that_started_over_gets_it_from_the_beginning() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    msgs = s.start(0.0)
    resp, _ = r.on_chunk(msgs[0], 4)
    s.on_resp(resp, 0.1)  # type: ignore[arg-type]
    restarted = Disk()
    r2 = restarted.receiver()  # the follower restarted: its partial snapshot is gone
    resp, _ = r2.on_chunk(msgs[1], 4)
    assert resp is not None and resp.reject_hint == RESP_RESEND and resp.chunk.offset == 0  # type: ignore[union-attr]
    whole = deliver_all(s, r2, s.on_resp(resp, 0.2))
    assert whole is not None and bytes(restarted.data) == DATA


def test_a_wrong_digest_starts_the_snapshot_over() -> None:
    src = source()
    lying = SnapshotSource(src.meta, src.snap_id, src.total, b"\0" * 32, src.read)
    s, disk = sender(lying), Disk()
    r = disk.receiver()
    msgs = s.start(0.0)
    whole = None
    for _ in range(40):  # never completes: each time the digest fails, back to 0
        if not msgs:
            break
        resp, done = r.on_chunk(msgs.pop(0), 4)
        whole = whole or done
        msgs += s.on_resp(resp, 0.0)  # type: ignore[arg-type]
    assert whole is None and r.completed == 0


def test_stale_terms_are_ignored_and_oversized_snapshots_refused() -> None:
    s, disk = sender(), Disk()
    r = disk.receiver()
    chunk = s.start(0.0)[0]
    assert r.on_chunk(chunk, current_term=5) == (None, None)  # from an older leader
    small = SnapshotReceiver(2, begin=lambda c: None, write=lambda o, d: None, finish=lambda c: b"")
    small.max_total_bytes = 100
    resp, _ = small.on_chunk(chunk, 4)
    assert resp is not None and resp.reject_hint == RESP_REFUSE
    assert s.on_resp(resp, 0.1) == [] and s.failed


@pytest.mark.parametrize("bad", [{"chunk_bytes": 0}, {"window_chunks": 0}])
def test_sender_settings_are_checked(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        sender(**bad)


def test_snapshot_messages_round_trip_and_bad_fields_are_refused() -> None:
    from raft.errors import InvalidMessage
    from raft.messages import decode_message, encode_message

    chunk = sender().start(0.0)[0]
    assert decode_message(encode_message(chunk)) == chunk
    resp = Message(
        MessageType.SNAP_RESP,
        to=1,
        frm=2,
        term=4,
        reject_hint=RESP_RESEND,
        chunk=SnapChunk(b"snap-1", 1000, 10240),
    )
    assert decode_message(encode_message(resp)) == resp
    whole = Message(MessageType.SNAP, to=2, frm=1, term=4, commit=20, snapshot=META)
    assert decode_message(encode_message(whole)) == whole
    raw = msgpack.unpackb(encode_message(whole))
    for bad_meta in (
        [17, 3, [[1, 1], [], []]],
        [17, 3, [[0], [], []]],
        [17, "3", [[1], [], []]],
        [17, 3, [[1], [1], []]],
        [17, 3, [[1], [], [[1, "u", "r"]]]],
        [1, 2, 3],
    ):
        raw[13] = bad_meta
        with pytest.raises(InvalidMessage):
            decode_message(msgpack.packb(raw))
    raw[13] = None
    raw[14] = [b"x", 11, 10, 0, b""]  # an offset beyond the total
    with pytest.raises(InvalidMessage):
        decode_message(msgpack.packb(raw))
