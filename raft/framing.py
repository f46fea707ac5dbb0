"""Sans-I/O codec for the peer wire: 4-byte big-endian length prefix + body, the handshake,
and, in a cluster with a secret, the challenge before it and the seal on every frame after.

Kept apart from the sockets so the rules that protect a node from a hostile peer (size
checked before any body is buffered, truncation noticed, handshake fields validated, every
frame's tag checked before it is decoded) can be unit-tested on bytes alone.

With a shared secret a connection goes (the dialer only ever sends Raft frames; the
acceptor only ever sends the challenge):

1. the acceptor sends a challenge: a fresh random nonce;
2. the dialer answers with its handshake, which carries a fresh nonce of its own and an
   HMAC-SHA256 under the secret over every field and both nonces: a captured handshake
   is worth nothing on another connection (another challenge), and nobody without the
   secret can say who calls;
3. both sides derive a session key from the secret and the two nonces, and every later
   write of the dialer is one sealed frame: a 16-byte tag (HMAC-SHA256 under the session
   key over a sequence number and the inner bytes, which are whole Raft frames). A frame
   injected, replayed, reordered or altered on the connection fails its tag, and the
   acceptor closes the connection before decoding it.

Without a secret (a loopback-only test cluster) the dialer sends its handshake at once and
frames go unsealed; a node logs at start that its peer port is open to anyone.

Rotating the secret without downtime: a node may hold two secrets, its current one and the
previous one (`--previous-secret-file`), and accepts a handshake signed with either. The
challenge names the secrets the acceptor holds by their key ids (a PRF of each secret:
says nothing about it), and the dialer signs with the first of its own secrets the
acceptor holds, so a node that already dials with the new secret and one that holds only
the old one still talk as long as one of them holds both. Rolling the cluster through
"new and previous", then through "new only", changes the secret one node at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from raft.errors import RaftError

PROTO_VERSION = 2
FRAME_HEADER_BYTES = 4
MAX_HANDSHAKE_BYTES = 4096
NONCE_BYTES = 16
TAG_BYTES = 16
KEY_ID_BYTES = 8
MAX_ACCEPTED_SECRETS = 2  # the current one and the previous one, during a rotation

_HEADER = struct.Struct(">I")


class FrameError(RaftError):
    """The byte stream from a peer broke the framing rules (remote error); `reason` is a tag."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class HandshakeRejected(RaftError):
    """A peer's handshake did not match our cluster, id, protocol or secret."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def frame(body: bytes) -> bytes:
    """Prefix `body` with its length; the result is written to the socket as is."""
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Accumulates stream bytes and cuts them into frame bodies.

    The length prefix is checked against `max_frame_bytes` as soon as its 4 bytes are in,
    so an oversized frame is refused before a single byte of its body is kept.
    """

    __slots__ = ("_buf", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete frame body now available (may be empty).

        Raises FrameError("frame_too_large") if a header announces more than the limit.
        """
        buf = self._buf
        buf += data
        bodies: list[bytes] = []
        pos = 0
        end = len(buf)
        limit = self.max_frame_bytes
        while end - pos >= FRAME_HEADER_BYTES:
            (length,) = _HEADER.unpack_from(buf, pos)
            if length > limit:
                self._buf = bytearray()
                raise FrameError("frame_too_large", f"length {length} > max {limit}")
            if end - pos - FRAME_HEADER_BYTES < length:
                break
            start = pos + FRAME_HEADER_BYTES
            bodies.append(bytes(buf[start : start + length]))
            pos = start + length
        if pos:
            del buf[:pos]
        return bodies

    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at EOF = truncated frame)."""
        return len(self._buf)

    def pending_frame_bytes(self) -> int:
        """The length the incomplete frame's header announced (0 before its 4 bytes are in):
        what a reader waits for, to give a large frame on a slow link its time."""
        if len(self._buf) < FRAME_HEADER_BYTES:
            return 0
        return int(_HEADER.unpack_from(self._buf, 0)[0])


# ---------------------------------------------------------------- handshake


@dataclass(frozen=True, slots=True)
class Handshake:
    """The first frame on every peer connection: who is calling whom, in which cluster,
    and which incarnation of the caller (its data dir's random id) this is."""

    proto: int
    cluster: str
    frm: int
    to: int
    incarnation: str = ""
    nonce: bytes = b""  # the dialer's, with a secret: half of the session key
    #: The secret the handshake's HMAC verified under (one of the acceptor's).
    secret: bytes | None = field(default=None, repr=False)


_NO_BOOTSTRAP = bytes(16)


def config_digest(voters: tuple[int, ...], max_entry_bytes: int) -> bytes:
    """What peers must agree on, as 32 bytes for the handshake: the entry limit, and the
    bootstrap member list (`--peers`) of a node that bootstraps a cluster.

    Why: nodes with different entry limits can send frames the other refuses; nodes that
    bootstrap a cluster with different `--peers` would count different majorities until
    their first configuration entry (two "majorities" that do not intersect can elect two
    leaders in one term). Membership after bootstrap lives in the log, so a node that
    joins (no `--peers`), or whose log already holds a configuration (its `--peers` is
    history), carries no bootstrap part and is compared on the limit only.
    """
    limits = hashlib.sha256(msgpack.packb(["raftq-limits", max_entry_bytes])).digest()[:16]
    if not voters:
        return limits + _NO_BOOTSTRAP
    boot = hashlib.sha256(msgpack.packb(["raftq-bootstrap", sorted(voters)])).digest()[:16]
    return limits + boot


def configs_agree(ours: bytes, theirs: bytes) -> bool:
    """Limits equal; bootstrap lists equal unless one side bootstraps nothing."""
    if not ours or not theirs:
        return ours == theirs
    if len(ours) != 32 or len(theirs) != 32 or ours[:16] != theirs[:16]:
        return False
    return _NO_BOOTSTRAP in (ours[16:], theirs[16:]) or ours[16:] == theirs[16:]


def _mac(
    secret: bytes,
    proto: int,
    cluster: str,
    frm: int,
    to: int,
    config: bytes,
    incarnation: str,
    challenge: bytes,
    nonce: bytes,
) -> bytes:
    signed = msgpack.packb(
        ["raftq-handshake", proto, cluster, frm, to, config, incarnation, challenge, nonce],
        use_bin_type=True,
    )
    return hmac.new(secret, signed, hashlib.sha256).digest()


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def key_id(secret: bytes) -> bytes:
    """Names a secret in a challenge without revealing anything about it."""
    return hmac.digest(secret, b"raftq-key-id", "sha256")[:KEY_ID_BYTES]


def encode_challenge(challenge: bytes, key_ids: Sequence[bytes] = ()) -> bytes:
    """The acceptor's first frame body (not framed) on a connection of a cluster with a
    secret: the nonce the dialer's handshake must sign, and the key ids of the secrets the
    acceptor accepts (so the dialer can pick one it shares, during a rotation)."""
    fields: dict[str, Any] = {"proto": PROTO_VERSION, "challenge": challenge}
    if key_ids:
        fields["keys"] = list(key_ids)
    return msgpack.packb(fields, use_bin_type=True)


def decode_challenge_keys(body: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """(challenge nonce, key ids the acceptor accepts) of an acceptor's first frame; no
    key ids from an acceptor that names none. HandshakeRejected if malformed."""
    challenge = decode_challenge(body)
    keys = msgpack.unpackb(body, raw=False).get("keys", [])
    if (
        type(keys) is not list
        or len(keys) > MAX_ACCEPTED_SECRETS
        or any(type(k) is not bytes or len(k) != KEY_ID_BYTES for k in keys)
    ):
        raise HandshakeRejected("bad_challenge", f"keys {keys!r:.80}")
    return challenge, tuple(keys)


def pick_secret(ours: Sequence[bytes], theirs: Sequence[bytes]) -> bytes | None:
    """The secret to sign a handshake with: the first of `ours` the acceptor holds (by key
    id), else our first (the acceptor will refuse it, and say so in its log)."""
    for secret in ours:
        if key_id(secret) in theirs:
            return secret
    return ours[0] if ours else None


def decode_challenge(body: bytes) -> bytes:
    """The challenge nonce of an acceptor's first frame; HandshakeRejected if malformed."""
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HandshakeRejected("undecodable_challenge", str(exc)[:80]) from exc
    if type(raw) is not dict or raw.get("proto") != PROTO_VERSION:
        raise HandshakeRejected("bad_challenge", f"{raw!r:.80}")
    challenge = raw.get("challenge")
    if type(challenge) is not bytes or len(challenge) != NONCE_BYTES:
        raise HandshakeRejected("bad_challenge", f"{challenge!r:.80}")
    return challenge


def encode_handshake(
    cluster: str,
    frm: int,
    to: int,
    secret: bytes | None,
    config: bytes = b"",
    incarnation: str = "",
    challenge: bytes = b"",
    nonce: bytes = b"",
) -> bytes:
    """Encode the handshake body (not framed). With a secret: our `nonce` and an
    HMAC-SHA256 over every field, the acceptor's `challenge` and the nonce."""
    fields: dict[str, Any] = {
        "proto": PROTO_VERSION,
        "cluster": cluster,
        "from": frm,
        "to": to,
        "config": config,
        "incarnation": incarnation,
    }
    if secret is not None:
        fields["nonce"] = nonce
        fields["hmac"] = _mac(
            secret, PROTO_VERSION, cluster, frm, to, config, incarnation, challenge, nonce
        )
    return msgpack.packb(fields, use_bin_type=True)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass: refuse it


def decode_handshake(
    body: bytes,
    *,
    cluster: str,
    our_id: int,
    secret: bytes | None,
    config: bytes = b"",
    challenge: bytes = b"",
    also_accepted: Sequence[bytes] = (),
) -> Handshake:
    """Validate a handshake body; raise HandshakeRejected with a reason tag on any mismatch.
    With a secret, the HMAC must cover `challenge`, the nonce this acceptor sent, under
    `secret` or one of `also_accepted` (a previous secret, during a rotation)."""
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise HandshakeRejected("undecodable", str(exc)[:80]) from exc
    if type(raw) is not dict:
        raise HandshakeRejected("not_a_map")
    proto = raw.get("proto")
    if not _is_int(proto) or proto != PROTO_VERSION:
        raise HandshakeRejected("bad_proto", f"{proto!r:.40}")
    got_cluster = raw.get("cluster")
    if type(got_cluster) is not str or got_cluster != cluster:
        raise HandshakeRejected("cluster_mismatch", f"{got_cluster!r:.80}")
    frm = raw.get("from")
    if not _is_int(frm) or frm <= 0 or frm == our_id or frm >= 1 << 63:
        raise HandshakeRejected("bad_from", f"{frm!r:.40}")
    to = raw.get("to")
    if not _is_int(to) or to != our_id:
        raise HandshakeRejected("wrong_to", f"{to!r:.40}")
    got_config = raw.get("config", b"")
    if type(got_config) is not bytes or not configs_agree(config, got_config):
        theirs = got_config.hex() if type(got_config) is bytes else repr(got_config)[:40]
        raise HandshakeRejected(
            "config_mismatch",
            f"node {frm} has limits/bootstrap digest {theirs or 'none'}, ours is "
            f"{config.hex() or 'none'}: give every node the same --max-entry-bytes, and "
            "every node that bootstraps the cluster the same --peers",
        )
    incarnation = raw.get("incarnation", "")
    if type(incarnation) is not str or len(incarnation) > 64:
        raise HandshakeRejected("bad_incarnation", f"{incarnation!r:.40}")
    nonce = b""
    if secret is not None:
        mac = raw.get("hmac")
        if mac is None:
            raise HandshakeRejected("hmac_missing")
        nonce = raw.get("nonce", b"")
        if type(nonce) is not bytes or len(nonce) != NONCE_BYTES:
            raise HandshakeRejected("bad_nonce", f"{nonce!r:.40}")
        if type(mac) is not bytes:
            raise HandshakeRejected("hmac_mismatch")
        verified = None
        for candidate in (secret, *also_accepted):
            expected = _mac(
                candidate, proto, got_cluster, frm, to, got_config, incarnation, challenge, nonce
            )
            if hmac.compare_digest(mac, expected):
                verified = candidate
                break
        if verified is None:
            raise HandshakeRejected("hmac_mismatch")
        secret = verified
    return Handshake(
        proto=proto,
        cluster=got_cluster,
        frm=frm,
        to=to,
        incarnation=incarnation,
        nonce=nonce,
        secret=secret,
    )


# ---------------------------------------------------------------- sealed frames


def session_key(secret: bytes, challenge: bytes, nonce: bytes) -> bytes:
    """The key of one connection's frame tags: both nonces, so no two connections share it."""
    return hmac.digest(secret, b"raftq-peer-frames" + challenge + nonce, "sha256")


class FrameSealer:
    """The dialer's side: seals whole frames into one tagged frame per write.

    `max_inner_bytes` bounds one seal's inner bytes (so the outer frame stays under the
    acceptor's limit); `seal_all` packs as many frames per seal as fit.
    """

    __slots__ = ("_key", "_seq", "max_inner_bytes")

    def __init__(self, key: bytes, max_inner_bytes: int) -> None:
        self._key = key
        self._seq = 0
        self.max_inner_bytes = max_inner_bytes

    def seal(self, inner: bytes) -> bytes:
        """One outer frame (length prefix included) holding `inner`."""
        tag = hmac.digest(self._key, self._seq.to_bytes(8, "big") + inner, "sha256")
        self._seq += 1
        return _HEADER.pack(TAG_BYTES + len(inner)) + tag[:TAG_BYTES] + inner

    def seal_all(self, frames: list[bytes]) -> bytes:
        """Framed messages, in order, as few sealed frames as the size bound allows."""
        out: list[bytes] = []
        group: list[bytes] = []
        size = 0
        limit = self.max_inner_bytes
        for f in frames:
            if group and size + len(f) > limit:
                out.append(self.seal(b"".join(group)))
                group, size = [], 0
            group.append(f)
            size += len(f)
        if group:
            out.append(self.seal(b"".join(group)))
        return b"".join(out)


class FrameOpener:
    """The acceptor's side: checks each sealed frame's tag, in sequence, before anything
    in it is decoded; returns the inner frame bodies."""

    __slots__ = ("_inner", "_key", "_seq")

    def __init__(self, key: bytes, max_frame_bytes: int) -> None:
        self._key = key
        self._seq = 0
        self._inner = FrameDecoder(max_frame_bytes)

    def open(self, sealed: bytes) -> list[bytes]:
        """The frame bodies inside `sealed` (one outer frame body); FrameError if its tag
        is wrong (forged, replayed, reordered, altered) or it splits a frame."""
        if len(sealed) < TAG_BYTES:
            raise FrameError("bad_seal", f"{len(sealed)} bytes")
        inner = sealed[TAG_BYTES:]
        tag = hmac.digest(self._key, self._seq.to_bytes(8, "big") + inner, "sha256")
        if not hmac.compare_digest(tag[:TAG_BYTES], sealed[:TAG_BYTES]):
            raise FrameError("bad_seal", f"tag mismatch at seal {self._seq}")
        self._seq += 1
        bodies = self._inner.feed(inner)
        if self._inner.pending_bytes():
            raise FrameError("bad_seal", "a seal ends inside a frame")
        return bodies


def sealed_frame_limit(max_frame_bytes: int) -> int:
    """The outer frame limit that fits one largest message frame and a tag."""
    return max_frame_bytes + FRAME_HEADER_BYTES + TAG_BYTES
