"""Times `LmdbStorage.save` of batches of log entries, fsync on: the disk's commit rate.

Why: every Raft commit waits for one fsynced LMDB transaction on a majority, so this is
the floor under commit latency and, with batching, the ceiling on commits per second on a
given disk. Each batch size runs in a fresh env in a temporary directory.

    python -m benchmarks.storage_bench [--batch 1 --batch 256 --entry-bytes 100 --duration-s 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import LmdbStorage
from raft.messages import ConfState, Entry, EntryKind, HardState


@dataclass(frozen=True, slots=True)
class BenchResult:
    batch_entries: int
    entry_bytes: int
    saves: int
    elapsed_s: float

    @property
    def saves_per_s(self) -> float:
        return self.saves / self.elapsed_s

    @property
    def entries_per_s(self) -> float:
        return self.saves * self.batch_entries / self.elapsed_s


def measure(
    *,
    batch_sizes: Sequence[int] = (1, 256),
    entry_bytes: int = 100,
    duration_s: float = 2.0,
    max_saves: int = 100_000,
    sync: bool = True,
    path: str | None = None,
) -> list[BenchResult]:
    """Time `save` of batches of `entry_bytes` entries (fsync on by default).

    Each batch size runs in a fresh env for about `duration_s` (bounded by `max_saves`).
    """
    results = []
    payload = b"x" * entry_bytes
    for batch in batch_sizes:
        root = tempfile.mkdtemp(prefix="raftq-bench-", dir=path)
        env = LmdbEnv(root, sync=sync)
        try:
            storage = LmdbStorage(env, initial_conf=ConfState((1,)))
            storage.save(HardState(term=1, vote=1), [])
            next_index = 1
            saves = 0
            start = time.perf_counter()
            deadline = start + duration_s
            while saves < max_saves and time.perf_counter() < deadline:
                batch_entries = [
                    Entry(i, 1, EntryKind.NORMAL, payload)
                    for i in range(next_index, next_index + batch)
                ]
                storage.save(None, batch_entries)
                next_index += batch
                saves += 1
            results.append(BenchResult(batch, entry_bytes, saves, time.perf_counter() - start))
        finally:
            env.close()
            shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage_bench")
    parser.add_argument("--duration-s", type=float, default=2.0)
    parser.add_argument("--entry-bytes", type=int, default=100)
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable)")
    parser.add_argument("--no-sync", action="store_true", help="disable fsync (comparison only)")
    parser.add_argument("--dir", default=None, help="where to create the bench env")
    args = parser.parse_args(argv)
    for r in measure(
        batch_sizes=args.batch or (1, 256),
        entry_bytes=args.entry_bytes,
        duration_s=args.duration_s,
        sync=not args.no_sync,
        path=args.dir,
    ):
        print(  # CLI output, not library logging
            f"batch={r.batch_entries:4d} entry_bytes={r.entry_bytes} fsync={not args.no_sync} "
            f"saves/s={r.saves_per_s:9.1f} entries/s={r.entries_per_s:11.1f} "
            f"({r.saves} saves in {r.elapsed_s:.2f}s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
