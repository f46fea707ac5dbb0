"""The durable Raft log on LMDB: `LmdbStorage` implements LogStorage and DurableStorage.

Why it looks like this: the log is what a node votes and leads with, so a record that
is not exactly what was written must never be used. Every record carries a CRC32 that
also covers its key (a record copied under the wrong index is caught too), reads verify
it, and opening the store verifies the hard state and the tail of the log (or all of
it) so a corrupt or truncated log stops the node at startup instead of letting it vote.

On-disk layout (one LMDB env per node, shared with the queue state machine, which uses
its own sub-databases; this module only touches sub-dbs named `raft.*`):

- `raft.log`: key = 8-byte big-endian index; value = RECORD:
      RECORD = crc32(key || body) as 4 bytes big-endian, then body
      body   = msgpack [term, kind, payload]   (payload as msgpack bin)
- `raft.meta`: key = ASCII name; value = RECORD with the name's bytes as the CRC key:
      b"format"     [1]
      b"hard_state" [term, vote, commit]
      b"conf_state" [[voters...], [learners...]]
      b"snapshot"   [index, term]   the compaction point: first_index = index + 1 and
                                    term(index) stays answerable ([0, 0] = never compacted)
      b"identity"   [cluster_id or nil, node_id or 0]

Writes: `save` is ONE write transaction (hard state + suffix truncation + appends) via
`LmdbEnv.write`, which commits with fsync (the env is opened sync=True) before it
returns; the in-memory bounds (first/last index, last term) and hard state are replaced
only after that commit succeeded. Appends use one `putmulti(append=True)` per batch:
keys only ever grow after the truncated suffix is gone.

Why corruption stops the node instead of truncating the bad tail: LMDB commits are
copy-on-write and atomic, so a crash (even kill -9 or power loss with fsync) never
leaves a torn record; a CRC failure is media damage or tampering, and the safe repair
is to wipe the node's data dir and let it rejoin from the leader.

Threading: `save`/`compact` run on the driver's single storage thread; reads may run on
any thread. The cached bounds are one immutable object swapped atomically, and every read
uses a short-lived transaction through `LmdbEnv.read`, which is what keeps map growth
(done by `LmdbEnv.write` on the writer thread, with no read transaction of this process
open) safe.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb
import msgpack
import structlog

from raft.errors import Compacted, InvalidMessage, StorageCorruption, StorageError, Unavailable
from raft.lmdb_env import LmdbEnv
from raft.messages import (
    MAX_U63,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
    conf_fields,
    conf_from_fields,
    decode_conf,
    pack,
)

T = TypeVar("T")

log = structlog.get_logger("raft.storage")

LOG_DB = "raft.log"
META_DB = "raft.meta"
FORMAT_VERSION = 1
DEFAULT_VERIFY_TAIL_ENTRIES = 1024
TAIL_CACHE_ENTRIES = 4096  # newest entries kept in memory for apply and replication
TAIL_CACHE_BYTES = 16 << 20

_META_FORMAT = b"format"
_META_HARD_STATE = b"hard_state"
_META_CONF_STATE = b"conf_state"
_META_SNAPSHOT = b"snapshot"
_META_IDENTITY = b"identity"

_CRC = struct.Struct(">I")
_CRC_BYTES = _CRC.size
_KINDS = {int(k): k for k in EntryKind}


class MetaCorruption(StorageCorruption):
    """A `raft.meta` record (not a log entry) failed its checksum or shape check.

    `index` is 0 (no log index involved); `key` names the record.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.index = 0
        self.reason = reason
        StorageError.__init__(self, f"raft.meta record {key!r} is corrupt: {reason}")


# ---------------------------------------------------------------- record codec


def index_key(index: int) -> bytes:
    return index.to_bytes(8, "big")


def encode_record(key: bytes, obj: Any) -> bytes:
    """RECORD = crc32(key || body) (4 bytes BE) + body, body = msgpack(obj)."""
    body = pack(obj)
    return _CRC.pack(zlib.crc32(body, zlib.crc32(key))) + body


def _checked_body(key: bytes, value: bytes) -> tuple[bytes | None, str]:
    """The verified msgpack body of a record, or (None, reason)."""
    if len(value) <= _CRC_BYTES:
        return None, f"record of {len(value)} bytes is shorter than its header"
    (stored,) = _CRC.unpack_from(value)
    body = value[_CRC_BYTES:]
    computed = zlib.crc32(body, zlib.crc32(key))
    if stored != computed:
        return None, f"crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
    return body, ""


def _unpack(body: bytes) -> tuple[Any, str]:
    try:
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True), ""
    except Exception as exc:  # msgpack raises several unrelated types
        return None, f"undecodable msgpack: {exc}"


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_U63


def decode_entry_record(index: int, value: bytes, key: bytes | None = None) -> Entry:
    """Verify CRC and shape of one stored log record; raise StorageCorruption(index, ...).

    `key` (the stored 8-byte key of `index`) saves re-encoding it in scan loops.
    """
    body, reason = _checked_body(key if key is not None else index_key(index), value)
    if body is None:
        raise StorageCorruption(index, reason)
    raw, reason = _unpack(body)
    if reason:
        raise StorageCorruption(index, reason)
    if type(raw) is not list or len(raw) != 3:
        raise StorageCorruption(index, "record is not a [term, kind, payload] array")
    term, kind, data = raw
    if not _is_uint(term) or term == 0:
        raise StorageCorruption(index, f"bad term {term!r:.40}")
    k = _KINDS.get(kind) if type(kind) is int else None
    if k is None:
        raise StorageCorruption(index, f"unknown entry kind {kind!r:.40}")
    if type(data) is not bytes:
        raise StorageCorruption(index, f"payload is {type(data).__name__}, not bytes")
    return Entry(index, term, k, data)


def _decode_meta(key: bytes, value: bytes | None, length: int | tuple[int, ...]) -> list[Any]:
    name = key.decode()
    if value is None:
        raise MetaCorruption(name, "missing")
    body, reason = _checked_body(key, value)
    if body is None:
        raise MetaCorruption(name, reason)
    raw, reason = _unpack(body)
    if reason:
        raise MetaCorruption(name, reason)
    lengths = (length,) if isinstance(length, int) else length
    if type(raw) is not list or len(raw) not in lengths:
        raise MetaCorruption(name, f"not a {'/'.join(map(str, lengths))}-element array")
    return raw


def _decode_conf_meta(value: bytes | None) -> ConfState:
    """The stored configuration: [voters, learners] (older stores) or with members too."""
    raw = _decode_meta(_META_CONF_STATE, value, (2, 3))
    try:
        return conf_from_fields(raw)
    except InvalidMessage as exc:
        raise MetaCorruption("conf_state", str(exc)) from None


# ---------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class _Bounds:
    """What the log holds, swapped as one object so readers never see a half update."""

    snap_index: int  # compaction point; first_index = snap_index + 1
    snap_term: int
    last_index: int
    last_term: int

    @property
    def first_index(self) -> int:
        return self.snap_index + 1


@dataclass(frozen=True, slots=True)
class _Loaded:
    fresh: bool
    hard_state: HardState
    conf_state: ConfState
    bounds: _Bounds
    cluster_id: str | None
    node_id: int
    verified_entries: int


@dataclass(frozen=True, slots=True)
class PreparedSave:
    """A validated, encoded save: `write(txn)` inside a write txn, `publish()` after commit."""

    write: Callable[[lmdb.Transaction], None]
    publish: Callable[[], None]


def _within_bytes(entries: Iterable[Entry], limit: int) -> list[Entry]:
    """Entries in order while their sizes sum to at most `limit` (always at least one);
    a negative limit takes them all. Stops consuming `entries` at the limit."""
    out: list[Entry] = []
    total = 0
    for entry in entries:
        total += entry.size()
        if out and 0 <= limit < total:
            break
        out.append(entry)
    return out


class LmdbStorage:
    """Durable Raft log + hard state in the `raft.*` sub-databases of a shared LmdbEnv.

    Opening verifies the hard state, the metadata and the last `verify_tail_entries`
    log entries (all of them with `verify_all=True`); anything off raises
    StorageCorruption naming the index (MetaCorruption for a meta record), so a node
    never votes or leads with a log it cannot trust. `cluster_id`/`node_id`, when
    given, are stored on first open and must match on every later open.
    """

    def __init__(
        self,
        env: LmdbEnv,
        *,
        initial_conf: ConfState | None = None,
        verify_all: bool = False,
        verify_tail_entries: int = DEFAULT_VERIFY_TAIL_ENTRIES,
        cluster_id: str | None = None,
        node_id: int | None = None,
    ) -> None:
        if verify_tail_entries < 1:
            raise ValueError("verify_tail_entries must be >= 1")
        self._env = env
        self._log_db = env.db(LOG_DB)
        self._meta_db = env.db(META_DB)
        self._closed = False
        tail = None if verify_all else verify_tail_entries
        try:
            loaded = env.read(lambda txn: self._load(txn, tail))
        except StorageCorruption as exc:
            log.error("raft.storage.corrupt", path=env.path, index=exc.index, reason=exc.reason)
            raise
        if loaded.fresh:
            loaded = self._initialize(initial_conf, loaded)
        self._hard_state = loaded.hard_state
        self._conf_state = loaded.conf_state
        self._bounds = loaded.bounds
        # The newest persisted entries, as saved: (index of the first, entries). Applying
        # reads back what was just appended; serving that from memory skips an LMDB read
        # and a CRC check per entry. Replaced whole (never mutated), so readers on other
        # threads see one consistent tuple; consulted only inside the published bounds.
        self._tail: tuple[int, tuple[Entry, ...], int] = (0, (), 0)  # first, entries, bytes
        self._cluster_id = loaded.cluster_id
        self._node_id = loaded.node_id
        self._check_identity(cluster_id, node_id)
        if not env.sync:
            log.warning("raft.storage.no_fsync", path=env.path, why="env opened with sync=False")
        b = self._bounds
        log.info(
            "raft.storage.opened",
            path=env.path,
            first_index=b.first_index,
            last_index=b.last_index,
            last_term=b.last_term,
            term=self._hard_state.term,
            vote=self._hard_state.vote,
            commit=self._hard_state.commit,
            verified_entries=loaded.verified_entries,
        )

    # ------------------------------------------------------------ open / verify

    def _load(self, txn: lmdb.Transaction, tail: int | None) -> _Loaded:
        meta = self._meta_db
        fmt_value = txn.get(_META_FORMAT, db=meta)
        if fmt_value is None:
            if txn.stat(self._log_db)["entries"] or txn.stat(meta)["entries"]:
                raise MetaCorruption("format", "missing while raft.* databases hold data")
            empty = _Bounds(0, 0, 0, 0)
            return _Loaded(True, HardState(), ConfState(()), empty, None, 0, 0)
        (fmt,) = _decode_meta(_META_FORMAT, fmt_value, 1)
        if fmt != FORMAT_VERSION:
            raise StorageError(
                f"unsupported raft.log format {fmt!r} (this build: {FORMAT_VERSION})"
            )
        term, vote, commit = _decode_meta(_META_HARD_STATE, txn.get(_META_HARD_STATE, db=meta), 3)
        if not (_is_uint(term) and _is_uint(vote) and _is_uint(commit)):
            raise MetaCorruption("hard_state", "fields must be unsigned integers")
        hard_state = HardState(term, vote, commit)
        conf = _decode_conf_meta(txn.get(_META_CONF_STATE, db=meta))
        snap_index, snap_term = _decode_meta(_META_SNAPSHOT, txn.get(_META_SNAPSHOT, db=meta), 2)
        if not (_is_uint(snap_index) and _is_uint(snap_term)):
            raise MetaCorruption("snapshot", "index/term must be unsigned integers")
        cluster_id: str | None = None
        node_id = 0
        ident_value = txn.get(_META_IDENTITY, db=meta)
        if ident_value is not None:
            cluster_id, node_id = _decode_meta(_META_IDENTITY, ident_value, 2)
            if not (cluster_id is None or type(cluster_id) is str) or not _is_uint(node_id):
                raise MetaCorruption("identity", "expected [cluster_id str|nil, node_id int]")
        bounds, verified = self._verify_log(txn, snap_index, snap_term, tail)
        if bounds.last_term > hard_state.term:
            raise StorageCorruption(
                bounds.last_index,
                f"entry term {bounds.last_term} is above the hard state term {hard_state.term}",
            )
        if not snap_index <= commit <= bounds.last_index:
            raise StorageCorruption(
                bounds.last_index + 1 if commit > bounds.last_index else snap_index,
                f"hard state commit {commit} outside the stored log "
                f"[{snap_index}, {bounds.last_index}] (log truncated?)",
            )
        return _Loaded(False, hard_state, conf, bounds, cluster_id, node_id, verified)

    def _verify_log(
        self, txn: lmdb.Transaction, snap_index: int, snap_term: int, tail: int | None
    ) -> tuple[_Bounds, int]:
        """Check the log's extent (no holes, starts right after the snapshot) and the CRC,
        shape and term order of the last `tail` entries (all if None)."""
        cur = txn.cursor(db=self._log_db)
        if not cur.first():
            return _Bounds(snap_index, snap_term, snap_index, snap_term), 0
        first = int.from_bytes(cur.key(), "big")
        cur.last()
        last_key = cur.key()
        if len(last_key) != 8:
            raise StorageCorruption(0, f"raft.log holds a non-index key {last_key!r:.40}")
        last = int.from_bytes(last_key, "big")
        if first != snap_index + 1:
            raise StorageCorruption(
                min(first, snap_index + 1),
                f"log starts at {first} but the compaction point is {snap_index}",
            )
        count = txn.stat(self._log_db)["entries"]
        if count != last - first + 1:
            raise StorageCorruption(self._first_hole(cur, first), "entry missing (hole in log)")
        start = first if tail is None else max(first, last - tail + 1)
        prev_term = snap_term if start == first else 0
        expected = start
        cur.set_key(index_key(start))
        for key, value in cur.iternext(keys=True, values=True):
            if len(key) != 8 or int.from_bytes(key, "big") != expected:
                raise StorageCorruption(expected, f"unexpected key {key!r:.40}")
            entry = decode_entry_record(expected, value, key)
            if entry.term < prev_term:
                raise StorageCorruption(
                    expected, f"term {entry.term} below the previous entry's term {prev_term}"
                )
            prev_term = entry.term
            expected += 1
        if expected != last + 1:
            raise StorageCorruption(expected, "entry missing at the log's tail")
        return _Bounds(snap_index, snap_term, last, prev_term), last - start + 1

    @staticmethod
    def _first_hole(cur: lmdb.Cursor, first: int) -> int:
        expected = first
        cur.first()
        for key in cur.iternext(keys=True, values=False):
            if len(key) != 8 or int.from_bytes(key, "big") != expected:
                return expected
            expected += 1
        return expected

    def _initialize(self, initial_conf: ConfState | None, loaded: _Loaded) -> _Loaded:
        conf = initial_conf if initial_conf is not None else ConfState(())
        records = {
            _META_FORMAT: [FORMAT_VERSION],
            _META_HARD_STATE: [0, 0, 0],
            _META_CONF_STATE: conf_fields(conf),
            _META_SNAPSHOT: [0, 0],
        }

        def txn_fn(txn: lmdb.Transaction) -> None:
            for key, obj in records.items():
                txn.put(key, encode_record(key, obj), db=self._meta_db)

        self._env.write(txn_fn)
        log.info("raft.storage.initialized", path=self._env.path, voters=conf.voters)
        return _Loaded(False, HardState(), conf, loaded.bounds, None, 0, 0)

    def _check_identity(self, cluster_id: str | None, node_id: int | None) -> None:
        if cluster_id is not None and self._cluster_id not in (None, cluster_id):
            raise StorageError(
                f"data dir {self._env.path} belongs to cluster {self._cluster_id!r}, "
                f"not {cluster_id!r}"
            )
        if node_id is not None and self._node_id not in (0, node_id):
            raise StorageError(
                f"data dir {self._env.path} belongs to node {self._node_id}, not {node_id}"
            )
        new_cluster = self._cluster_id if cluster_id is None else cluster_id
        new_node = self._node_id if node_id is None else node_id
        if (new_cluster, new_node) != (self._cluster_id, self._node_id):
            value = encode_record(_META_IDENTITY, [new_cluster, new_node])
            self._env.write(lambda txn: txn.put(_META_IDENTITY, value, db=self._meta_db))
            self._cluster_id, self._node_id = new_cluster, new_node

    # ------------------------------------------------------------ LogStorage

    @property
    def cluster_id(self) -> str | None:
        return self._cluster_id

    @property
    def node_id(self) -> int:
        """The stored node id (0 if never set)."""
        return self._node_id

    def snapshot_point(self) -> tuple[int, int]:
        """(index, term) of the compaction point; (0, 0) if never compacted."""
        b = self._bounds
        return b.snap_index, b.snap_term

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._conf_state

    def first_index(self) -> int:
        return self._bounds.first_index

    def last_index(self) -> int:
        return self._bounds.last_index

    def term(self, index: int) -> int:
        b = self._bounds
        if index == b.last_index:
            return b.last_term
        if index == b.snap_index:
            return b.snap_term
        if index < b.snap_index:
            raise Compacted(f"term({index}): compacted, first index is {b.first_index}")
        if index > b.last_index:
            raise Unavailable(f"term({index}): beyond last index {b.last_index}")
        cached = self._cached(index, index + 1)
        if cached:
            return cached[0].term
        return self._env.read(lambda txn: self._read_term(txn, index))

    def _read_term(self, txn: lmdb.Transaction, index: int) -> int:
        value = txn.get(index_key(index), db=self._log_db)
        if value is None:
            raise self._missing(txn.cursor(db=self._log_db), index)
        return decode_entry_record(index, value).term

    def _cached(self, lo: int, hi: int) -> tuple[Entry, ...] | None:
        first, cached, _ = self._tail
        if cached and first <= lo and hi <= first + len(cached):
            return cached[lo - first : hi - first]
        return None

    def _publish_tail(self, entries: Sequence[Entry]) -> None:
        first, cached, total = self._tail
        new_first = entries[0].index
        if cached and first <= new_first == first + len(cached):  # the common append
            kept, total = cached + tuple(entries), total + sum(e.size() for e in entries)
        else:  # an overwrite keeps the cached prefix before it; a gap starts afresh
            if not (cached and first <= new_first < first + len(cached)):
                first, cached = new_first, ()
            kept = cached[: new_first - first] + tuple(entries)
            total = sum(e.size() for e in kept)
        drop = 0
        while drop < len(kept) - 1 and (
            len(kept) - drop > TAIL_CACHE_ENTRIES or total > TAIL_CACHE_BYTES
        ):
            total -= kept[drop].size()
            drop += 1
        self._tail = (first + drop, kept[drop:], total)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo > hi:
            raise ValueError(f"entries({lo}, {hi}): lo > hi")
        b = self._bounds
        if lo < b.first_index:
            raise Compacted(f"entries({lo}, {hi}): compacted, first index is {b.first_index}")
        if hi > b.last_index + 1:
            raise Unavailable(f"entries({lo}, {hi}): beyond last index {b.last_index}")
        if lo == hi:
            return []
        limit = max_bytes if max_bytes is not None else -1
        cached = self._cached(lo, hi)
        if cached is not None:
            return _within_bytes(cached, limit)
        return self._env.read(lambda txn: self._read_range(txn, lo, hi, limit))

    def _read_range(self, txn: lmdb.Transaction, lo: int, hi: int, limit: int) -> list[Entry]:
        return _within_bytes(self._iter_range(txn, lo, hi), limit)

    def _iter_range(self, txn: lmdb.Transaction, lo: int, hi: int) -> Iterator[Entry]:
        """Entries [lo, hi) in order, CRC-checked; a missing one raises once reached."""
        cur = txn.cursor(db=self._log_db)
        expected = lo
        if cur.set_key(index_key(lo)):
            for key, value in cur.iternext(keys=True, values=True):
                if int.from_bytes(key, "big") != expected:
                    break
                yield decode_entry_record(expected, value, key)
                expected += 1
                if expected == hi:
                    return
        raise self._missing(cur, expected)

    @staticmethod
    def _missing(cur: lmdb.Cursor, index: int) -> StorageError:
        """Why `index`, inside the cached bounds, is not in this read's snapshot.

        A save/compact that committed just before our read began but has not yet
        published its new bounds looks like this (Unavailable/Compacted); a gap with
        records on both sides is a lost record (StorageCorruption).
        """
        if not cur.set_range(index_key(index)):
            return Unavailable(f"index {index} is beyond the stored log (truncated concurrently)")
        if cur.first() and int.from_bytes(cur.key(), "big") > index:
            return Compacted(f"index {index} is below the stored log (compacted concurrently)")
        return StorageCorruption(index, "entry missing")

    # ------------------------------------------------------------ DurableStorage

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Persist hard state and entries in ONE fsynced transaction (see module doc)."""
        prepared = self.prepare_save(hard_state, entries)
        if prepared is not None:
            self._env.write(prepared.write)
            prepared.publish()

    def run_write(self, fn: Callable[[Any], T]) -> T:
        """`fn(txn)` in one write transaction of the environment this log lives in (the
        state machine's too): TransactionalStorage, for the driver's shared commits."""
        return self._env.write(fn)

    def prepare_save(
        self, hard_state: HardState | None, entries: Sequence[Entry]
    ) -> PreparedSave | None:
        """Validate and encode a save; the caller writes it inside ITS write transaction.

        Why: the driver commits the log append and the state machine's apply of earlier
        entries in one transaction, paying LMDB's fsyncs once per batch instead of twice.
        Call `write(txn)` inside the transaction and `publish()` after it committed; None
        means nothing would change.

        Refuses, changing nothing: a gap after the last index, non-consecutive indexes,
        decreasing terms, an entry term above the hard state term, overwriting a
        committed entry with a different term, a term/commit going backwards, a second
        vote in one term, or a commit beyond the resulting last index.
        """
        self._check_open()
        for e in entries:
            if type(e) is not Entry:
                raise StorageError(f"not an Entry: {type(e).__name__}")
            if not _is_uint(e.index) or e.index == 0:
                raise StorageError(f"entry index must be a positive integer: {e.index!r:.40}")
        b = self._bounds
        hs = hard_state if hard_state is not None else self._hard_state
        if hard_state is not None:
            self._check_hard_state(hard_state)
        if entries and entries[0].index <= b.snap_index:
            # Already compacted = committed and applied: drop that prefix (as etcd does).
            entries = entries[b.snap_index + 1 - entries[0].index :]
        new_last = b.last_index
        new_last_term = b.last_term
        values: list[tuple[bytes, bytes]] = []
        truncate_from = 0
        if entries:
            first = entries[0].index
            if first > b.last_index + 1:
                raise StorageError(
                    f"gap: entries start at {first} but the last stored index is {b.last_index}"
                )
            prev_term = self.term(first - 1)
            values = self._encode_entries(entries, prev_term, hs.term)
            if first <= self._hard_state.commit:
                self._check_committed_prefix(entries)
            if first <= b.last_index:
                truncate_from = first
            new_last = entries[-1].index
            new_last_term = entries[-1].term
        if hs.commit > new_last:
            raise StorageError(f"hard state commit {hs.commit} beyond last index {new_last}")
        hs_value = (
            encode_record(_META_HARD_STATE, [hs.term, hs.vote, hs.commit])
            if hard_state is not None
            else None
        )
        if not values and (hs_value is None or hs == self._hard_state):
            return None  # nothing changes: no transaction, no fsync

        def txn_fn(txn: lmdb.Transaction) -> None:
            if hs_value is not None:
                txn.put(_META_HARD_STATE, hs_value, db=self._meta_db)
            if values:
                cur = txn.cursor(db=self._log_db)
                if truncate_from and cur.set_range(index_key(truncate_from)):
                    while cur.delete() and cur.key():
                        pass
                _consumed, added = cur.putmulti(values, append=True)
                if added != len(values):
                    raise StorageError(
                        f"append of {len(values)} entries stored {added}: "
                        "raft.log holds keys beyond the last index"
                    )

        def publish() -> None:
            # Committed and fsynced: only now publish the new state.
            self._hard_state = hs
            if values:
                self._publish_tail(entries)
                self._bounds = _Bounds(b.snap_index, b.snap_term, new_last, new_last_term)

        return PreparedSave(txn_fn, publish)

    def _check_hard_state(self, hs: HardState) -> None:
        if not (_is_uint(hs.term) and _is_uint(hs.vote) and _is_uint(hs.commit)):
            raise StorageError(f"hard state fields must be unsigned integers: {hs!r}")
        old = self._hard_state
        if hs.term < old.term:
            raise StorageError(f"hard state term would go back from {old.term} to {hs.term}")
        if hs.term == old.term and old.vote and hs.vote != old.vote:
            raise StorageError(f"vote in term {hs.term} would change from {old.vote} to {hs.vote}")
        if hs.commit < old.commit:
            raise StorageError(f"hard state commit would go back from {old.commit} to {hs.commit}")

    @staticmethod
    def _encode_entries(
        entries: Sequence[Entry], prev_term: int, hs_term: int
    ) -> list[tuple[bytes, bytes]]:
        values: list[tuple[bytes, bytes]] = []
        expected = entries[0].index
        for e in entries:
            if e.index != expected:
                raise StorageError(f"non-consecutive entries: {e.index} where {expected} belongs")
            if not _is_uint(e.term) or e.term == 0:
                raise StorageError(f"entry {e.index}: term must be a positive integer")
            if e.term < prev_term:
                raise StorageError(
                    f"entry {e.index}: term {e.term} below the previous term {prev_term}"
                )
            if e.term > hs_term:
                raise StorageError(
                    f"entry {e.index}: term {e.term} above the hard state term {hs_term}"
                )
            if type(e.kind) is not EntryKind and _KINDS.get(e.kind) is None:
                raise StorageError(f"entry {e.index}: unknown kind {e.kind!r}")
            if type(e.data) is not bytes:
                raise StorageError(f"entry {e.index}: data must be bytes")
            key = index_key(e.index)
            values.append((key, encode_record(key, [e.term, int(e.kind), e.data])))
            prev_term = e.term
            expected += 1
        return values

    def _check_committed_prefix(self, entries: Sequence[Entry]) -> None:
        commit = self._hard_state.commit
        for e in entries:
            if e.index > commit:
                break
            if self.term(e.index) != e.term:
                raise StorageError(
                    f"entry {e.index} is committed with term {self.term(e.index)}; "
                    f"refusing to overwrite it with term {e.term}"
                )

    def compact(self, index: int) -> None:
        """Delete entries below `index` (the new first index), keeping term(index-1) in
        meta. Only committed entries may go; `index == first_index()` is a no-op."""
        self._check_open()
        b = self._bounds
        if index < b.first_index:
            raise Compacted(f"compact({index}): already compacted to {b.first_index}")
        if index == b.first_index:
            return
        if index > b.last_index + 1:
            raise Unavailable(f"compact({index}): beyond last index {b.last_index}")
        if index - 1 > self._hard_state.commit:
            raise StorageError(
                f"compact({index}): entry {index - 1} is not committed "
                f"(commit {self._hard_state.commit})"
            )
        snap_index, snap_term = index - 1, self.term(index - 1)
        snap_value = encode_record(_META_SNAPSHOT, [snap_index, snap_term])
        end_key = index_key(index)
        kept_conf: list[ConfState] = []

        def txn_fn(txn: lmdb.Transaction) -> None:
            kept_conf.clear()
            txn.put(_META_SNAPSHOT, snap_value, db=self._meta_db)
            cur = txn.cursor(db=self._log_db)
            latest: Entry | None = None
            if cur.first():
                while cur.key() and cur.key() < end_key:
                    e = decode_entry_record(int.from_bytes(cur.key(), "big"), cur.value())
                    if e.kind is EntryKind.CONF_CHANGE:
                        latest = e
                    if not cur.delete():
                        break
            if latest is not None:
                # The membership in force at the compaction point, for restarts: the entry
                # that said so is gone with the rest.
                conf = decode_conf(latest.data)
                txn.put(
                    _META_CONF_STATE,
                    encode_record(_META_CONF_STATE, conf_fields(conf)),
                    db=self._meta_db,
                )
                kept_conf.append(conf)

        self._env.write(txn_fn)
        if kept_conf:
            self._conf_state = kept_conf[-1]
        last_term = b.last_term if b.last_index > snap_index else snap_term
        self._bounds = _Bounds(snap_index, snap_term, max(b.last_index, snap_index), last_term)
        log.info("raft.storage.compacted", first_index=index, snap_term=snap_term)

    def prepare_apply_snapshot(self, snap: SnapshotMeta) -> PreparedSave:
        """Replace the log by a snapshot, inside the caller's write transaction.

        Why the caller's: the state machine's tables must be replaced in the same
        transaction, or a crash between the two would leave a log that starts after
        state the machine does not have. Every log entry goes (the leader sends what
        follows the snapshot), the compaction point becomes (index, term), the commit
        index moves to the index, and the membership becomes the snapshot's.
        """
        self._check_open()
        if not (_is_uint(snap.index) and _is_uint(snap.term)) or snap.index == 0:
            raise StorageError(f"bad snapshot point ({snap.index!r}, {snap.term!r})")
        old = self._hard_state
        if snap.index <= old.commit:
            raise StorageError(
                f"snapshot at {snap.index} is not ahead of the commit index {old.commit}"
            )
        hs = HardState(old.term, old.vote, snap.index)
        values = {
            _META_SNAPSHOT: encode_record(_META_SNAPSHOT, [snap.index, snap.term]),
            _META_HARD_STATE: encode_record(_META_HARD_STATE, [hs.term, hs.vote, hs.commit]),
            _META_CONF_STATE: encode_record(_META_CONF_STATE, conf_fields(snap.conf)),
        }

        def txn_fn(txn: lmdb.Transaction) -> None:
            txn.drop(self._log_db, delete=False)
            for key, value in values.items():
                txn.put(key, value, db=self._meta_db)

        def publish() -> None:
            self._hard_state = hs
            self._conf_state = snap.conf
            self._tail = (0, (), 0)
            self._bounds = _Bounds(snap.index, snap.term, snap.index, snap.term)
            log.info("raft.storage.snapshot_applied", index=snap.index, term=snap.term)

        return PreparedSave(txn_fn, publish)

    def apply_snapshot(self, snap: SnapshotMeta) -> None:
        """`prepare_apply_snapshot` in a transaction of its own (tests, simulation)."""
        prepared = self.prepare_apply_snapshot(snap)
        self._env.write(prepared.write)
        prepared.publish()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    def close(self) -> None:
        """Stop accepting writes. The LmdbEnv is shared: its owner closes it."""
        self._closed = True
