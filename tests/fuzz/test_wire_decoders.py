"""The decoders of the peer port (frames, the handshake, Raft messages, configurations)
and of the binary client port, fed random and mutated bytes.

The property: each one returns a value or raises its own protocol error (which the
transport turns into a closed connection), never anything else; what it accepts it
re-encodes to bytes that decode to the same value; and a frame stream cut anywhere gives
the same frames as whole.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import binwire
from raft.errors import InvalidMessage
from raft.framing import (
    FrameDecoder,
    FrameError,
    HandshakeRejected,
    decode_handshake,
    encode_handshake,
    frame,
)
from raft.messages import (
    ConfState,
    Entry,
    EntryKind,
    Member,
    Message,
    MessageType,
    SnapChunk,
    SnapshotMeta,
    decode_conf,
    decode_message,
    encode_conf,
    encode_message,
)
from tests.fuzz import fuzz_settings

U63 = st.integers(0, (1 << 63) - 1)
SMALL = st.integers(0, 1 << 20)
ids = st.integers(1, 1 << 20)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    mtype = draw(st.sampled_from(list(MessageType)))
    index = draw(SMALL)
    entries = tuple(
        Entry(index + 1 + i, draw(SMALL), draw(st.sampled_from(list(EntryKind))), data)
        for i, data in enumerate(draw(st.lists(st.binary(max_size=40), max_size=4)))
    )
    snapshot = chunk = None
    if mtype in (MessageType.SNAP, MessageType.SNAP_RESP) and draw(st.booleans()):
        voters = tuple(sorted(set(draw(st.lists(ids, min_size=1, max_size=3)))))
        snapshot = SnapshotMeta(draw(SMALL), draw(SMALL), ConfState(voters=voters))
        total = draw(SMALL)
        chunk = SnapChunk(
            draw(st.binary(max_size=16)), draw(st.integers(0, total)), total, draw(SMALL)
        )
    return Message(
        type=mtype,
        to=draw(ids),
        frm=draw(ids),
        term=draw(U63),
        log_term=draw(SMALL),
        index=index,
        entries=entries,
        commit=draw(SMALL),
        reject=draw(st.booleans()),
        reject_hint=draw(SMALL),
        hint_term=draw(SMALL),
        context=draw(st.binary(max_size=16)),
        snapshot=snapshot,
        chunk=chunk,
    )


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` with a few bytes flipped, cut, inserted or deleted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos]
    return bytes(data)


def msgpack_values() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.binary(max_size=20)
        | st.text(max_size=20)
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=16) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
        ),
        max_leaves=40,
    )


def _decode_message_or_refuse(data: bytes) -> Message | None:
    try:
        return decode_message(data)
    except InvalidMessage:
        return None


# ---------------------------------------------------------------- Raft messages


@fuzz_settings(300)
@given(messages())
def test_a_valid_message_round_trips(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@fuzz_settings(600)
@given(st.data())
def test_a_mutated_message_decodes_to_a_stable_value_or_is_refused(data: st.DataObject) -> None:
    raw = data.draw(mutated(encode_message(data.draw(messages()))))
    got = _decode_message_or_refuse(raw)
    if got is not None:
        assert decode_message(encode_message(got)) == got


@fuzz_settings(400)
@given(st.binary(max_size=200) | msgpack_values().map(lambda v: msgpack.packb(v)))
def test_random_bytes_never_escape_the_message_decoder(raw: bytes) -> None:
    _decode_message_or_refuse(raw)


@fuzz_settings(300)
@given(msgpack_values())
def test_random_configurations_decode_or_are_refused(value: Any) -> None:
    try:
        conf = decode_conf(msgpack.packb(value))
    except InvalidMessage:
        return
    assert decode_conf(encode_conf(conf)) == conf


@pytest.mark.parametrize("members", [None, {}, 7, "m", [None], [[1]]])
def test_a_configuration_whose_members_are_not_members_is_refused(members: Any) -> None:
    """Found by the fuzzer: members that were not an array raised TypeError out of the
    decoder (and out of decode_message, for a snapshot's configuration)."""
    with pytest.raises(InvalidMessage):
        decode_conf(msgpack.packb([[1], [], members]))


def test_a_configuration_with_members_round_trips() -> None:
    conf = ConfState(
        voters=(1, 2),
        learners=(3,),
        members=(Member(1, "http://a:1", "a:2", "x" * 32), Member(3, promote=False)),
    )
    assert decode_conf(encode_conf(conf)) == conf


# ---------------------------------------------------------------- frames and the handshake


@fuzz_settings(300)
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(0, 4000), max_size=10),
)
def test_a_frame_stream_cut_anywhere_gives_the_same_frames(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(b) for b in bodies)
    decoder = FrameDecoder(max_frame_bytes=300)
    got: list[bytes] = []
    start = 0
    for cut in sorted({min(c, len(stream)) for c in cuts} | {len(stream)}):
        got.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert got == bodies and decoder.pending_bytes() == 0


@fuzz_settings(400)
@given(st.binary(max_size=600), st.integers(1, 300))
def test_random_bytes_never_escape_the_frame_decoder(raw: bytes, limit: int) -> None:
    decoder = FrameDecoder(max_frame_bytes=limit)
    try:
        bodies = decoder.feed(raw)
    except FrameError as exc:
        assert exc.reason == "frame_too_large"
        return
    assert all(len(b) <= limit for b in bodies)
    assert sum(len(b) + 4 for b in bodies) + decoder.pending_bytes() == len(raw)


@fuzz_settings(400)
@given(st.data())
def test_a_mutated_handshake_is_accepted_unchanged_or_refused(data: st.DataObject) -> None:
    secret = data.draw(st.none() | st.binary(min_size=1, max_size=16))
    challenge, nonce = bytes(range(16)), bytes(range(16, 32))
    good = encode_handshake("raftq", 2, 1, secret, b"", "a" * 32, challenge, nonce)
    raw = data.draw(mutated(good) | st.binary(max_size=100))
    try:
        hs = decode_handshake(raw, cluster="raftq", our_id=1, secret=secret, challenge=challenge)
    except HandshakeRejected:
        return
    assert (hs.cluster, hs.to) == ("raftq", 1) and hs.frm not in (0, 1)
    if secret is not None:  # only the secret's holder can say who calls
        assert hs.frm == 2


# ---------------------------------------------------------------- the binary client port


@fuzz_settings(400)
@given(st.binary(max_size=200) | msgpack_values().map(lambda v: msgpack.packb(v)))
def test_random_payloads_never_escape_the_binary_request_decoder(raw: bytes) -> None:
    try:
        request_id, method, path, body = binwire.decode_request(raw)
    except binwire.BadFrame:
        return
    assert binwire.decode_request(binwire.encode_request(request_id, method, path, body)[4:]) == (
        request_id,
        method,
        path,
        body,
    )


@fuzz_settings(300)
@given(st.binary(max_size=200) | msgpack_values().map(lambda v: msgpack.packb(v)))
def test_random_payloads_never_escape_the_binary_answer_decoder(raw: bytes) -> None:
    try:
        binwire.decode_answer(raw)
    except binwire.BadFrame:
        pass


@fuzz_settings(200)
@given(st.binary(min_size=4, max_size=4), st.integers(0, 1 << 24))
def test_a_binary_frame_header_over_the_limit_is_refused_before_its_payload(
    header: bytes, limit: int
) -> None:
    announced = int.from_bytes(header, "big")
    try:
        assert binwire.frame_length(header, limit) == announced <= limit
    except binwire.BadFrame:
        assert announced > limit
