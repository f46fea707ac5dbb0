"""Real node processes, peers authenticated by the launcher's secret file: a stranger on
a node's peer port, with no secret or the wrong one, is refused at the handshake and
cannot move the term with a forged vote request (or any other message)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

from cluster.launcher import LocalCluster
from node.config import Limits
from raft.framing import (
    FrameDecoder,
    config_digest,
    decode_challenge,
    encode_handshake,
    frame,
    new_nonce,
)
from raft.messages import Message, MessageType, encode_message

pytestmark = pytest.mark.integration


def _term(url: str) -> int:
    with urllib.request.urlopen(f"{url}/v1/cluster", timeout=5) as answer:
        return int(json.load(answer)["term"])


async def _attack(host: str, port: int, secret: bytes | None, to: int, term: int) -> bytes:
    """Answer the node's challenge with a handshake as peer 3 (signed with `secret`), then
    ask for its vote at a far higher term; returns what the node sent back before closing."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        header = await asyncio.wait_for(reader.readexactly(4), 5)
        challenge = decode_challenge(await reader.readexactly(int.from_bytes(header, "big")))
        writer.write(
            frame(
                encode_handshake(
                    "raftq",
                    3,
                    to,
                    secret,
                    # what any handshake on the wire shows: the entry limit (no bootstrap
                    # part once the cluster runs), so only the secret is missing
                    config=config_digest((), Limits().max_entry_bytes),
                    challenge=challenge,
                    nonce=new_nonce() if secret is not None else b"",
                )
            )
        )
        vote = Message(MessageType.VOTE, to=to, frm=3, term=term, log_term=term, index=1 << 40)
        writer.write(frame(encode_message(vote)))
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.read(), 5)  # the node closes the connection
        except ConnectionResetError:  # closed with our frames unread: a reset, not a FIN
            return b""
    finally:
        writer.close()


@pytest.mark.parametrize("secret", [None, b"not-the-clusters-secret"], ids=["none", "wrong"])
def test_a_stranger_on_the_peer_port_is_refused_and_cannot_move_the_term(
    cluster3: LocalCluster, secret: bytes | None
) -> None:
    leader = cluster3.wait_for_leader(timeout_s=30)
    follower = next(i for i in cluster3.ids if i != leader.id)
    spec = cluster3.specs[follower]
    before = _term(leader.url)
    said = asyncio.run(_attack(spec.host, spec.raft_port, secret, follower, before + 100))
    assert FrameDecoder(4096).feed(said) == []  # nothing but the closed connection
    time.sleep(1.0)  # a vote at that term would have started an election by now
    assert _term(leader.url) == before == _term(cluster3.url(follower))
    reason = "hmac_missing" if secret is None else "hmac_mismatch"
    deadline = time.monotonic() + 10
    while f'"reason": "{reason}"' not in spec.log_path.read_text():
        assert time.monotonic() < deadline, f"no handshake_rejected {reason} in {spec.log_path}"
        time.sleep(0.1)
