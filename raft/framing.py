"""Sans-I/O codec for the peer wire: 4-byte big-endian length prefix + body, and the handshake.

Kept apart from the sockets so the rules that protect a node from a hostile peer (size
checked before any body is buffered, truncation noticed, handshake fields validated) can be
unit-tested on bytes alone.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from raft.errors import RaftError

PROTO_VERSION = 1
FRAME_HEADER_BYTES = 4
MAX_HANDSHAKE_BYTES = 4096

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
    secret: bytes, proto: int, cluster: str, frm: int, to: int, config: bytes, incarnation: str
) -> bytes:
    signed = msgpack.packb([proto, cluster, frm, to, config, incarnation], use_bin_type=True)
    return hmac.new(secret, signed, hashlib.sha256).digest()


def encode_handshake(
    cluster: str,
    frm: int,
    to: int,
    secret: bytes | None,
    config: bytes = b"",
    incarnation: str = "",
) -> bytes:
    """Encode the handshake body (not framed); adds an HMAC-SHA256 when a secret is set."""
    fields: dict[str, Any] = {
        "proto": PROTO_VERSION,
        "cluster": cluster,
        "from": frm,
        "to": to,
        "config": config,
        "incarnation": incarnation,
    }
    if secret is not None:
        fields["hmac"] = _mac(secret, PROTO_VERSION, cluster, frm, to, config, incarnation)
    return msgpack.packb(fields, use_bin_type=True)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass: refuse it


def decode_handshake(
    body: bytes, *, cluster: str, our_id: int, secret: bytes | None, config: bytes = b""
) -> Handshake:
    """Validate a handshake body; raise HandshakeRejected with a reason tag on any mismatch."""
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
    if secret is not None:
        mac = raw.get("hmac")
        if mac is None:
            raise HandshakeRejected("hmac_missing")
        if type(mac) is not bytes or not hmac.compare_digest(
            mac, _mac(secret, proto, got_cluster, frm, to, got_config, incarnation)
        ):
            raise HandshakeRejected("hmac_mismatch")
    return Handshake(proto=proto, cluster=got_cluster, frm=frm, to=to, incarnation=incarnation)
