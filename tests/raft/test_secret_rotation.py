"""Rotating the peer secret: a node holding its new and its previous secret talks, both
ways, to nodes holding either; nodes that share no secret still refuse each other."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from raft.framing import (
    KEY_ID_BYTES,
    PROTO_VERSION,
    HandshakeRejected,
    decode_challenge_keys,
    encode_challenge,
    key_id,
    new_nonce,
    pick_secret,
)
from tests.raft import test_transport as plain
from tests.raft.test_transport import Inbox, app, events, wait_until

OLD = b"old-secret-0123456789abcdef"
NEW = b"new-secret-0123456789abcdef"

logs = plain.logs
make_transport = plain.make_transport

pytestmark = pytest.mark.timeout(60)


def test_the_challenge_names_the_acceptors_secrets_by_key_id() -> None:
    nonce = new_nonce()
    assert decode_challenge_keys(encode_challenge(nonce, [key_id(NEW), key_id(OLD)])) == (
        nonce,
        (key_id(NEW), key_id(OLD)),
    )
    assert decode_challenge_keys(encode_challenge(nonce)) == (nonce, ())  # a single secret
    assert len(key_id(NEW)) == KEY_ID_BYTES and key_id(NEW) != key_id(OLD)
    assert NEW not in key_id(NEW)


def test_the_dialer_signs_with_the_first_secret_the_acceptor_holds() -> None:
    assert pick_secret([NEW, OLD], [key_id(OLD)]) == OLD
    assert pick_secret([NEW, OLD], [key_id(OLD), key_id(NEW)]) == NEW
    assert pick_secret([NEW], [key_id(OLD)]) == NEW  # refused by the acceptor, and logged
    assert pick_secret([NEW, OLD], []) == NEW
    assert pick_secret([], [key_id(OLD)]) is None


@pytest.mark.parametrize(
    "keys", [b"x" * 8, [b"short"], [1], [b"k" * 8, b"l" * 8, b"m" * 8], "text"]
)
def test_a_malformed_key_list_is_refused(keys: Any) -> None:
    body = msgpack.packb(
        {"proto": PROTO_VERSION, "challenge": new_nonce(), "keys": keys}, use_bin_type=True
    )
    with pytest.raises(HandshakeRejected):
        decode_challenge_keys(body)


async def _link(make: Any, a_secrets: tuple[bytes, ...], b_secrets: tuple[bytes, ...]) -> Any:
    """Nodes 1 and 2 holding the given secrets (current first), linked both ways."""
    inboxes = [Inbox(), Inbox()]
    nodes = []
    for i, held in enumerate((a_secrets, b_secrets)):
        options = {"secret": held[0], "previous_secret": held[1] if len(held) > 1 else None}
        nodes.append(await make(i + 1, inbox=inboxes[i], **options))
    a, b = nodes
    a.update_peer(2, b.listen_addr)
    b.update_peer(1, a.listen_addr)
    return a, b, inboxes


@pytest.mark.parametrize(
    ("a_secrets", "b_secrets"),
    [
        ((NEW, OLD), (OLD,)),  # the first step of a rotation: b not restarted yet
        ((OLD, NEW), (OLD,)),  # the order of the two does not matter
        ((NEW, OLD), (NEW,)),  # the second step: b holds only the new one
        ((NEW, OLD), (NEW, OLD)),
    ],
)
async def test_nodes_that_share_a_secret_talk_both_ways(
    make_transport: Any, a_secrets: tuple[bytes, ...], b_secrets: tuple[bytes, ...]
) -> None:
    a, b, (inbox_a, inbox_b) = await _link(make_transport, a_secrets, b_secrets)
    a.send(app(1, 2, 1, b"a to b"))
    b.send(app(2, 1, 1, b"b to a"))
    (to_b,) = await inbox_b.wait_for_count(1)
    (to_a,) = await inbox_a.wait_for_count(1)
    assert to_b.entries[0].data == b"a to b" and to_a.entries[0].data == b"b to a"


async def test_nodes_that_share_no_secret_refuse_each_other(make_transport: Any, logs: Any) -> None:
    a, b, (inbox_a, inbox_b) = await _link(make_transport, (NEW,), (OLD,))
    a.send(app(1, 2, 1))
    b.send(app(2, 1, 1))
    await wait_until(
        lambda: len([e for e in events(logs, "raft.transport.handshake_rejected")]) >= 2
    )
    assert {e["reason"] for e in events(logs, "raft.transport.handshake_rejected")} == {
        "hmac_mismatch"
    }
    assert inbox_a.messages == inbox_b.messages == []
