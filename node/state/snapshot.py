"""The queue state machine's snapshot: every node.* record at one applied index, as a file.

Why a file, streamed: a queue holding a million messages is hundreds of MiB of records;
they are copied from one LMDB read transaction straight into a file (never held as Python
objects), the file is sent in chunks and can be resent from any offset, and a follower
installs it inside ONE write transaction together with its log's new start, so a crash
leaves either the old state or the new one.

Format (version 1), all integers big-endian:
    b"RAFTQSN1"
    u32 length, then a msgpack map {"format": 1, "applied_index": N, "tables": [names]}
    records: u8 table number (position in "tables"), u32 key length, u32 value length,
             key, value  -- each table's records in key order
    u8 0xFF (end)
The file's SHA-256 travels with it (InstallSnapshot checks it before installing).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import lmdb
import msgpack

from raft.state_machine import SnapshotFile

MAGIC = b"RAFTQSN1"
FORMAT = 1
END = 0xFF
_RECORD = struct.Struct(">BII")
_LEN = struct.Struct(">I")
_WRITE_BUFFER = 1 << 20


class SnapshotFormatError(ValueError):
    """A snapshot file is not one this build can install (truncated, foreign, corrupt)."""


_SYNC_EVERY = 8 << 20


class _HashingWriter:
    """Writes, hashes and counts; hands the file to the disk every `_SYNC_EVERY` bytes.

    Why in steps: one fsync of hundreds of MiB at the end fills the device queue at once,
    and every node's own log fsync on the same disk waits behind it (sends slowed by a
    fifth while snapshots were written back to back); small steps let them interleave.
    The written part is then dropped from the page cache, which the nodes need more.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self._unsynced = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.digest.update(data)
        self.size += len(data)
        self._unsynced += len(data)
        if self._unsynced >= _SYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        self.fh.flush()
        os.fdatasync(self.fh.fileno())
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fh.fileno(), 0, self.size, os.POSIX_FADV_DONTNEED)
        self._unsynced = 0


def write_snapshot(
    txn: lmdb.Transaction,
    handles: dict[str, Any],
    table_names: tuple[str, ...],
    applied_index: int,
    path: str,
) -> SnapshotFile:
    """Stream every record of `table_names` (read in `txn`) into `path`, atomically."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # every message: owner only
    with os.fdopen(fd, "wb", buffering=_WRITE_BUFFER) as fh:
        out = _HashingWriter(fh)
        header = msgpack.packb(
            {"format": FORMAT, "applied_index": applied_index, "tables": list(table_names)}
        )
        out.write(MAGIC + _LEN.pack(len(header)) + header)
        for number, name in enumerate(table_names):
            for key, value in txn.cursor(db=handles[name]):
                out.write(_RECORD.pack(number, len(key), len(value)) + key + value)
        out.write(bytes([END]))
        out.sync()
        os.fsync(fh.fileno())  # the metadata too
    os.replace(tmp, path)
    return SnapshotFile(path, applied_index, out.size, out.digest.digest())


def read_header(fh: BinaryIO) -> dict[str, Any]:
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        raise SnapshotFormatError("not a raftq snapshot (bad magic)")
    raw_len = fh.read(_LEN.size)
    if len(raw_len) != _LEN.size:
        raise SnapshotFormatError("truncated header")
    (length,) = _LEN.unpack(raw_len)
    if length > 1 << 20:
        raise SnapshotFormatError("header too large")
    try:
        header = msgpack.unpackb(fh.read(length), raw=False)
    except Exception as exc:
        raise SnapshotFormatError(f"bad header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotFormatError(f"unsupported snapshot format {header!r:.80}")
    if type(header.get("applied_index")) is not int or not isinstance(header.get("tables"), list):
        raise SnapshotFormatError("header lacks applied_index or tables")
    return header


def records(fh: BinaryIO, table_count: int) -> Iterator[tuple[int, bytes, bytes]]:
    """(table number, key, value) until the end marker; raises on anything off."""
    while True:
        head = fh.read(1)
        if not head:
            raise SnapshotFormatError("truncated: no end marker")
        if head[0] == END:
            if fh.read(1):
                raise SnapshotFormatError("bytes after the end marker")
            return
        rest = fh.read(_RECORD.size - 1)
        if len(rest) != _RECORD.size - 1:
            raise SnapshotFormatError("truncated record header")
        number, klen, vlen = _RECORD.unpack(head + rest)
        if number >= table_count or klen > 511 or vlen > 1 << 30:
            raise SnapshotFormatError(f"bad record header ({number}, {klen}, {vlen})")
        key = fh.read(klen)
        value = fh.read(vlen)
        if len(key) != klen or len(value) != vlen:
            raise SnapshotFormatError("truncated record")
        yield number, key, value


def restore_snapshot(
    txn: lmdb.Transaction, handles: dict[str, Any], table_names: tuple[str, ...], path: str
) -> int:
    """Replace every table of `table_names` by the file's records, inside `txn` (the
    caller's write transaction); returns the snapshot's applied index.

    A snapshot may name fewer tables than this build has: one written by an older build
    during a rolling upgrade, whose state has no records in the tables added since (they
    are left empty). A snapshot naming a table this build does not know is refused
    before anything changes: its state could not be kept whole (a downgrade)."""
    with open(path, "rb", buffering=_WRITE_BUFFER) as fh:
        header = read_header(fh)
        names = tuple(header["tables"])
        unknown = [name for name in names if name not in table_names]
        if unknown or len(set(names)) != len(names):
            raise SnapshotFormatError(
                f"snapshot tables {unknown or names} are not this build's: it was written "
                "by a newer raftq (upgrade this node first)"
            )
        for name in table_names:
            txn.drop(handles[name], delete=False)
        dbs = [handles[name] for name in names]
        for number, key, value in records(fh, len(names)):
            if not txn.put(key, value, db=dbs[number], append=True):
                raise SnapshotFormatError(f"records of {names[number]} out of key order")
    return int(header["applied_index"])
