"""One LMDB environment per node, shared by the Raft log and the state machine.

Why a wrapper: every write in raftq must survive `MapFullError` by growing the map and
retrying (never by dropping data), and every write must be one transaction. Callers pass
a function that does the whole write; `write` runs it, commits (fsync unless the env was
opened with sync=False for benchmarks), and on MapFullError aborts, doubles the map and
runs the function again from the start. `fn` may therefore run more than once: it must
only touch the transaction it is given (no side effects outside it).

Threading: LMDB allows one write transaction at a time per environment. raftq performs
all writes on one dedicated storage thread (see raft/driver.py); `write` also serialises
writers of this process on a lock. Reads may run on any thread; no transaction is ever
held across an `await`.

Map growth safety: `mdb_env_set_mapsize` must not run while ANY transaction of this
process is active (LMDB does not check; it remaps the file under the readers' feet).
So every read goes through `read` (never `self.env.begin()` directly), which holds a
shared gate for the short life of its transaction, and growth takes the gate
exclusively after the failed write transaction was aborted. Growth waits for the running
reads to finish and holds new reads back meanwhile (writer preference, so a stream of
readers cannot starve it). If another process grew the map (`MapResizedError`), the same
exclusive path adopts the new size with `set_mapsize(0)`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import lmdb
import structlog

log = structlog.get_logger("raft.lmdb")

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 << 20  # 64 MiB; grows on demand
MAX_DBS = 64


class _ReadGate:
    """Shared/exclusive gate: many short read transactions, or one map resize."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive_waiting = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._exclusive_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            try:
                while self._exclusive or self._readers:
                    self._cond.wait()
            finally:
                self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class LmdbEnv:
    """An LMDB environment with named sub-databases and map growth on demand."""

    def __init__(
        self,
        path: str,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = 1 << 40,
        sync: bool = True,
        mode: int = 0o755,
    ) -> None:
        # `mode` is the dir's; LMDB creates data.mdb and lock.mdb with it minus the x bits
        # (0o700 gives owner-only 0o600 files). Both go through the umask.
        os.makedirs(path, mode=mode, exist_ok=True)
        self.path = path
        self.max_map_size = max_map_size
        self.sync = sync
        self.env = lmdb.open(
            path,
            map_size=map_size,
            max_dbs=MAX_DBS,
            subdir=True,
            sync=sync,
            metasync=sync,
            writemap=False,
            readahead=False,
            max_spare_txns=4,
            mode=mode,
        )
        self._dbs: dict[str, lmdb._Database] = {}
        self._write_lock = threading.Lock()
        self._writer_thread: int | None = None  # thread inside write(), if any
        self._gate = _ReadGate()

    def db(self, name: str, *, dupsort: bool = False) -> lmdb._Database:
        """Open (creating if needed) the named sub-database; cached per name."""
        handle = self._dbs.get(name)
        if handle is None:
            if self._writer_thread == threading.get_ident():
                # open_db runs its own write transaction: inside write() it would deadlock.
                raise RuntimeError(f"open sub-database {name!r} before write(), not inside it")
            # open_db with create=True runs its own write transaction: serialise it.
            with self._write_lock:
                handle = self._dbs.get(name)
                if handle is None:
                    handle = self.env.open_db(name.encode(), create=True, dupsort=dupsort)
                    self._dbs[name] = handle
        return handle

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one write transaction and commit it; grow the map on MapFullError."""
        if self._writer_thread == threading.get_ident():
            raise RuntimeError("write() called inside write(): LMDB has one write txn at a time")
        with self._write_lock:
            self._writer_thread = threading.get_ident()
            try:
                while True:
                    txn = self.env.begin(write=True)
                    try:
                        result = fn(txn)
                        txn.commit()
                        return result
                    except lmdb.MapFullError:
                        txn.abort()
                        self._resize(grow=True)
                    except lmdb.MapResizedError:
                        txn.abort()
                        self._resize(grow=False)
                    except BaseException:
                        txn.abort()
                        raise
            finally:
                self._writer_thread = None

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in a short read-only transaction (values are copies: buffers=False)."""
        while True:
            with self._gate.shared():
                try:
                    with self.env.begin(write=False, buffers=False) as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    pass  # another process grew the map: adopt it below, then retry
            self._resize(grow=False)

    def map_size_bytes(self) -> int:
        return int(self.env.info()["map_size"])

    def _resize(self, *, grow: bool) -> None:
        with self._gate.exclusive():
            if not grow:
                self.env.set_mapsize(0)  # adopt the size another process set
                return
            current = self.map_size_bytes()
            new_size = min(current * 2, self.max_map_size)
            if new_size <= current:
                raise lmdb.MapFullError(
                    f"LMDB map at {current} bytes cannot grow past max_map_size"
                )
            log.warning("lmdb.map_grow", path=self.path, old_bytes=current, new_bytes=new_size)
            self.env.set_mapsize(new_size)

    def close(self) -> None:
        with self._write_lock, self._gate.exclusive():
            self.env.close()
