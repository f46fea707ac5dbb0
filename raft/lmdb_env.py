"""One LMDB environment per node, shared by the Raft log and the state machine.

Why a wrapper: every write in raftq must survive `MapFullError` by growing the map and
retrying (never by dropping data), and every write must be one transaction. Callers pass
a function that does the whole write; `write` runs it, commits (fsync unless the env was
opened with sync=False for benchmarks), and on MapFullError aborts, doubles the map and
runs the function again from the start.

Threading: LMDB allows one write transaction at a time per environment. raftq performs
all writes on one dedicated storage thread (see raft/driver.py); reads may run on any
thread, and no transaction is ever held across an `await`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import lmdb
import structlog

log = structlog.get_logger("raft.lmdb")

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 << 20  # 64 MiB; grows on demand
MAX_DBS = 64


class LmdbEnv:
    """An LMDB environment with named sub-databases and map growth on demand."""

    def __init__(
        self,
        path: str,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int = 1 << 40,
        sync: bool = True,
    ) -> None:
        os.makedirs(path, exist_ok=True)
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
        )
        self._dbs: dict[str, lmdb._Database] = {}

    def db(self, name: str, *, dupsort: bool = False) -> lmdb._Database:
        """Open (creating if needed) the named sub-database; cached per name."""
        handle = self._dbs.get(name)
        if handle is None:
            handle = self.env.open_db(name.encode(), create=True, dupsort=dupsort)
            self._dbs[name] = handle
        return handle

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in one write transaction and commit it; grow the map on MapFullError."""
        while True:
            txn = self.env.begin(write=True)
            try:
                result = fn(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
            except BaseException:
                txn.abort()
                raise

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run `fn` in a read-only transaction."""
        with self.env.begin(write=False, buffers=False) as txn:
            return fn(txn)

    def _grow(self) -> None:
        current = self.env.info()["map_size"]
        new_size = min(current * 2, self.max_map_size)
        if new_size <= current:
            raise lmdb.MapFullError(f"LMDB map at {current} bytes cannot grow past max_map_size")
        log.warning("lmdb.map_grow", path=self.path, old_bytes=current, new_bytes=new_size)
        self.env.set_mapsize(new_size)

    def sync_to_disk(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()
