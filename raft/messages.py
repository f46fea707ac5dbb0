"""Wire types of the Raft core: entries, messages, hard/soft state and the Ready batch.

Every type is a frozen, slotted dataclass. Messages have one `encode_message` and one
*validating* `decode_message`: a peer's bytes are untrusted, so decoding checks every
field's type and range and raises `InvalidMessage` instead of letting garbage reach the
core (a bool where an int belongs, a negative index, an unknown type...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from raft.errors import InvalidMessage

MAX_U63 = (1 << 63) - 1
WIRE_VERSION = 1


class MessageType(IntEnum):
    VOTE = 1
    VOTE_RESP = 2
    PRE_VOTE = 3
    PRE_VOTE_RESP = 4
    APP = 5
    APP_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    TIMEOUT_NOW = 9
    # InstallSnapshot. From the core: "send `to` a snapshot at least at `snapshot.index`"
    # (no chunk; the driver streams it). On the wire: one chunk of it (`chunk` set, the
    # bytes in `context`). Into the core: the whole snapshot arrived (no chunk).
    SNAP = 10
    SNAP_RESP = 11  # the receiver's progress through a snapshot's chunks (driver level)


class EntryKind(IntEnum):
    NORMAL = 0
    NOOP = 1  # appended by a new leader at the start of its term
    CONF_CHANGE = 2  # a new configuration (encode_conf): one single-server membership change


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class Member:
    """How to reach one member, and which incarnation of it (the data dir's random id) the
    configuration means: a node that lost its data dir comes back as another one."""

    id: int
    url: str = ""  # HTTP API
    raft_addr: str = ""  # HOST:PORT of the peer transport
    incarnation: str = ""  # "" until the leader has learned it
    promote: bool = True  # a learner to make a voter once it has caught up


@dataclass(frozen=True, slots=True)
class ConfState:
    """The voting and learning members (and, for the drivers, their addresses)."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    members: tuple[Member, ...] = ()

    def ids(self) -> tuple[int, ...]:
        return tuple(sorted({*self.voters, *self.learners}))

    def member(self, node_id: int) -> Member | None:
        for m in self.members:
            if m.id == node_id:
                return m
        return None


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot stands for: the state machine after applying `index` (of `term`),
    with the membership `conf` in force there."""

    index: int
    term: int
    conf: ConfState


@dataclass(frozen=True, slots=True)
class SnapChunk:
    """Where one InstallSnapshot chunk sits in its snapshot (the bytes travel in
    `Message.context`), or, on a SNAP_RESP, how far the receiver has it.

    `snap_id` names one snapshot file (two snapshots at one index differ in it), `total`
    and `digest` (SHA-256 of the whole) are the same on every chunk, `crc` is the CRC32
    of this chunk's bytes. On a SNAP_RESP `offset` is the next byte the receiver wants.
    """

    snap_id: bytes
    offset: int
    total: int
    crc: int = 0
    digest: bytes = b""


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. Fields unused by a type stay at their zero value (the etcd shape).

    - `log_term`/`index`: for APP the (term, index) of the entry preceding `entries`;
      for VOTE/PRE_VOTE the candidate's last (term, index); for APP_RESP `index` is the
      follower's last matching index (accept) or the rejected index (reject).
    - `reject_hint`/`hint_term`: on a rejected APP_RESP, the follower's conflict index
      and the term there, for fast backtracking.
    - `context`: opaque bytes (ReadIndex request ids, campaign-transfer marker).
    """

    type: MessageType
    to: int
    frm: int
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    hint_term: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None  # SNAP only
    chunk: SnapChunk | None = None  # SNAP / SNAP_RESP between drivers only


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any vote or append reply leaves the node."""

    term: int = 0
    vote: int = 0  # 0 = voted for nobody
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile facts the driver wants to notice changing (not persisted)."""

    leader_id: int  # 0 = unknown
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request became safe: reads are linearizable once applied >= index."""

    index: int
    context: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work the core hands to its driver.

    Order the driver must follow:
      1. send `messages` at once (leader-originated APP/HEARTBEAT/TIMEOUT_NOW: safe to
         send in parallel with the local fsync);
      2. persist `hard_state` (if not None) and `entries` in ONE durable write
         (`entries` may overwrite a suffix starting at entries[0].index);
      3. then send `messages_after_persist` (votes, append/vote responses: they assert
         durable state);
      4. apply `committed_entries` in order;
      5. call `core.advance(ready)`.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    # How many times the log had been overwritten when `entries` were taken: advance()
    # ignores the persist of entries that a later overwrite may have replaced on disk.
    overwrites: int = 0
    # A snapshot to install before `entries` (in the same durable step): the log is
    # replaced by it and the state machine jumps to its index.
    snapshot: SnapshotMeta | None = None


# ---------------------------------------------------------------- codec


def packer() -> Callable[[Any], bytes]:
    """A `pack(obj) -> bytes` equal to `msgpack.packb(obj, use_bin_type=True)`.

    Why a kept Packer instead of `msgpack.packb`: `packb(obj)` is `Packer(**kw).pack(obj)`,
    it builds and frees a Packer and its buffer on every call, about 1.3 µs, where packing
    100-byte entries with a kept Packer takes about 0.3 µs (`python -m benchmarks.pack_bench`).
    Every Raft entry is packed once for the log and once per peer message, and the queue
    state machine packs several records per message, so the difference is paid tens of
    thousands of times a second.

    A kept Packer is safe to share between the event loop thread and the storage thread:
    `Packer.pack` runs in C without releasing the GIL, and it resets its buffer after every
    call, also when packing raises. The bytes are exactly those of `msgpack.packb(obj,
    use_bin_type=True)`.
    """
    return msgpack.Packer(use_bin_type=True).pack


#: The shared kept Packer (see `packer`): log records, peer messages and the queue state
#: machine's records are all packed with it.
pack = packer()

# Bytes of an encoded message besides its entries: the 13-field array with every integer
# at its widest (9 bytes), the entries array header and a small context. APP messages
# carry no context; heartbeats carry an 8-byte ReadIndex one.
MESSAGE_ENVELOPE_BYTES = 256
# Encoded bytes of one entry beyond `Entry.size()` at worst: size() counts 24 bytes of
# overhead, msgpack spends at most 25 (array header, two 9-byte ints, kind, bin header).
ENTRY_ENCODING_SLACK = 1


def max_append_frame_bytes(max_entry_bytes: int, max_msg_bytes: int) -> int:
    """An upper bound on the encoded size of any APP message the core can build.

    The core packs entries into an APP until `max_msg_bytes` (counted in `Entry.size()`)
    but always takes at least one, so one message holds either entries summing at most
    `max_msg_bytes`, or a single entry of at most `max_entry_bytes` of data. A transport
    whose frame limit is at least this can carry every entry the core accepts.
    """
    payload = max(max_entry_bytes + 24, max_msg_bytes)
    most_entries = max(1, max_msg_bytes // 24)
    return payload + most_entries * ENTRY_ENCODING_SLACK + MESSAGE_ENVELOPE_BYTES


def encode_entry(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.kind), e.data]


def encode_message(m: Message) -> bytes:
    return pack(
        [
            WIRE_VERSION,
            int(m.type),
            m.to,
            m.frm,
            m.term,
            m.log_term,
            m.index,
            [encode_entry(e) for e in m.entries],
            m.commit,
            m.reject,
            m.reject_hint,
            m.hint_term,
            m.context,
            *_encode_snap_fields(m),
        ]
    )


def _encode_snap_fields(m: Message) -> list[Any]:
    """SNAP/SNAP_RESP carry two more array elements: the snapshot meta and the chunk."""
    if m.snapshot is None and m.chunk is None:
        return []
    meta = m.snapshot
    chunk = m.chunk
    return [
        None if meta is None else [meta.index, meta.term, conf_fields(meta.conf)],
        None
        if chunk is None
        else [chunk.snap_id, chunk.offset, chunk.total, chunk.crc, chunk.digest],
    ]


def _uint(value: Any, name: str) -> int:
    # bool is an int subclass in Python: refuse it explicitly.
    if type(value) is not int or value < 0 or value > MAX_U63:
        raise InvalidMessage(f"{name} must be an integer in [0, 2^63): got {value!r:.80}")
    return value


def _bytes(value: Any, name: str) -> bytes:
    if type(value) is not bytes:
        raise InvalidMessage(f"{name} must be bytes: got {type(value).__name__}")
    return value


_ENTRY_KINDS = {int(k): k for k in EntryKind}
_MESSAGE_TYPES = {int(t): t for t in MessageType}


def _decode_entries(raw: list[Any], prev_index: int) -> tuple[Entry, ...]:
    """Decode entries that must follow `prev_index` consecutively (hot path: inlined checks)."""
    out = []
    expected = prev_index + 1
    kinds = _ENTRY_KINDS
    for item in raw:
        if type(item) is not list or len(item) != 4:
            raise InvalidMessage("entry must be a 4-element array")
        index, term, kind, data = item
        if index != expected or type(index) is not int:
            raise InvalidMessage("entries must have consecutive indexes following message index")
        if type(term) is not int or not 0 <= term <= MAX_U63:
            raise InvalidMessage(f"entry.term must be an integer in [0, 2^63): got {term!r:.80}")
        k = kinds.get(kind) if type(kind) is int else None
        if k is None:
            raise InvalidMessage(f"unknown entry kind {kind!r:.40}")
        if type(data) is not bytes:
            raise InvalidMessage(f"entry.data must be bytes: got {type(data).__name__}")
        out.append(Entry(index, term, k, data))
        expected += 1
    if expected - 1 > MAX_U63:
        raise InvalidMessage("entry index out of range")
    return tuple(out)


def decode_message(data: bytes) -> Message:
    """Decode and validate one message; raise InvalidMessage on anything off."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise InvalidMessage(f"undecodable msgpack: {exc}") from exc
    if type(raw) is not list or len(raw) not in (13, 15):
        raise InvalidMessage("message must be a 13- or 15-element array")
    (ver, mtype, to, frm, term, log_term, index, entries, commit, reject, hint, hint_term, ctx) = (
        raw[:13]
    )
    if ver != WIRE_VERSION or type(ver) is not int:
        raise InvalidMessage(f"unsupported wire version {ver!r:.40}")
    t = _MESSAGE_TYPES.get(mtype) if type(mtype) is int else None
    if t is None:
        raise InvalidMessage(f"unknown message type {mtype!r:.40}")
    if type(entries) is not list:
        raise InvalidMessage("entries must be an array")
    if type(reject) is not bool:
        raise InvalidMessage("reject must be a bool")
    decoded = _decode_entries(entries, _uint(index, "index")) if entries else ()
    return Message(
        type=t,
        to=_uint(to, "to"),
        frm=_uint(frm, "frm"),
        term=_uint(term, "term"),
        log_term=_uint(log_term, "log_term"),
        index=_uint(index, "index"),
        entries=decoded,
        commit=_uint(commit, "commit"),
        reject=reject,
        reject_hint=_uint(hint, "reject_hint"),
        hint_term=_uint(hint_term, "hint_term"),
        context=_bytes(ctx, "context"),
        snapshot=_decode_meta(raw[13]) if len(raw) == 15 else None,
        chunk=_decode_chunk(raw[14]) if len(raw) == 15 else None,
    )


def encode_conf(conf: ConfState) -> bytes:
    """A configuration as it travels in a CONF_CHANGE entry, a snapshot and storage meta."""
    return pack(conf_fields(conf))


def conf_fields(conf: ConfState) -> list[Any]:
    members = [[m.id, m.url, m.raft_addr, m.incarnation, m.promote] for m in conf.members]
    return [list(conf.voters), list(conf.learners), members]


def decode_conf(data: bytes) -> ConfState:
    """A configuration from its bytes; InvalidMessage when it is not one."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        raise InvalidMessage(f"undecodable configuration: {exc}") from None
    return conf_from_fields(raw)


def conf_from_fields(raw: Any) -> ConfState:
    if type(raw) is not list or len(raw) not in (2, 3):
        raise InvalidMessage("configuration must be [voters, learners, members]")
    voters = _peer_ids(raw[0], "voters")
    learners = _peer_ids(raw[1], "learners")
    if set(voters) & set(learners):
        raise InvalidMessage("a node cannot be both voter and learner")
    listed = raw[2] if len(raw) == 3 else []
    if type(listed) is not list or len(listed) > 1024:
        raise InvalidMessage("members must be an array of at most 1024 members")
    members: list[Member] = []
    for item in listed:
        if type(item) is not list or len(item) not in (4, 5):
            raise InvalidMessage("a member must be [id, url, raft_addr, incarnation, promote]")
        node_id, url, raft_addr, incarnation = item[:4]
        promote = item[4] if len(item) == 5 else True
        if not all(type(v) is str and len(v) <= 512 for v in (url, raft_addr, incarnation)):
            raise InvalidMessage("member url, raft_addr and incarnation must be short strings")
        if type(promote) is not bool:
            raise InvalidMessage("member promote must be true or false")
        members.append(Member(_uint(node_id, "member.id"), url, raft_addr, incarnation, promote))
    return ConfState(voters, learners, tuple(members))


def _peer_ids(raw: Any, name: str) -> tuple[int, ...]:
    if type(raw) is not list or len(raw) > 1024:
        raise InvalidMessage(f"{name} must be an array of node ids")
    ids = tuple(_uint(v, name) for v in raw)
    if any(i == 0 for i in ids) or len(set(ids)) != len(ids):
        raise InvalidMessage(f"{name} must hold distinct positive node ids")
    return ids


def _decode_meta(raw: Any) -> SnapshotMeta | None:
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 3:
        raise InvalidMessage("snapshot meta must be a 3-element array")
    index, term, conf = raw
    return SnapshotMeta(
        _uint(index, "snapshot.index"), _uint(term, "snapshot.term"), conf_from_fields(conf)
    )


def _decode_chunk(raw: Any) -> SnapChunk | None:
    if raw is None:
        return None
    if type(raw) is not list or len(raw) != 5:
        raise InvalidMessage("snapshot chunk must be a 5-element array")
    snap_id, offset, total, crc, digest = raw
    chunk = SnapChunk(
        _bytes(snap_id, "chunk.snap_id"),
        _uint(offset, "chunk.offset"),
        _uint(total, "chunk.total"),
        _uint(crc, "chunk.crc"),
        _bytes(digest, "chunk.digest"),
    )
    if len(chunk.snap_id) > 64 or len(chunk.digest) > 64 or chunk.offset > chunk.total:
        raise InvalidMessage("snapshot chunk fields out of range")
    return chunk
