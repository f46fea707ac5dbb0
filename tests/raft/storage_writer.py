"""Child process for the kill -9 test: appends to an LmdbStorage until it is killed.

After each `save()` returned (committed and fsynced) it prints one line
`<last_index> <term> <commit>` and flushes, so every printed index is a promise the
parent checks after SIGKILL. Every few batches it also overwrites a short uncommitted
suffix with a new term, so suffix truncation is crashed too. An entry's payload is
derived from (index, term) so the parent can check content, not only presence.

usage: python storage_writer.py <env_dir> <seed> <max_batches>
"""

from __future__ import annotations

import random
import sys

import structlog

from raft.lmdb_env import LmdbEnv
from raft.lmdb_storage import LmdbStorage
from raft.messages import ConfState, Entry, EntryKind, HardState

COMMIT_LAG = 10  # entries kept uncommitted so a suffix can be overwritten
REWIND = 3


def payload(index: int, term: int, size: int) -> bytes:
    """Deterministic payload for (index, term): the parent recomputes it to check content."""
    head = f"{index}:{term}:".encode()
    return (head * (size // len(head) + 1))[:size]


def payload_matches(entry: Entry) -> bool:
    return entry.data == payload(entry.index, entry.term, len(entry.data))


def main(argv: list[str]) -> int:
    env_dir, seed, max_batches = argv[1], int(argv[2]), int(argv[3])
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    rng = random.Random(seed)
    # A tiny map so growth (abort, resize, retry) happens while we may be killed.
    env = LmdbEnv(env_dir, map_size=256 << 10)
    storage = LmdbStorage(env, initial_conf=ConfState((1,)), node_id=1)
    hs, _ = storage.initial_state()
    term = max(hs.term, 1)
    commit = hs.commit
    last = storage.last_index()
    for batch_no in range(max_batches):
        first = last + 1
        if batch_no % 5 == 4 and last - REWIND > commit:
            term += 1  # a new leader overwrites our uncommitted tail
            first = last - REWIND + 1
        count = rng.randint(1, 64)
        entries = [
            Entry(i, term, EntryKind.NORMAL, payload(i, term, rng.randint(50, 2000)))
            for i in range(first, first + count)
        ]
        last = entries[-1].index
        commit = max(commit, last - COMMIT_LAG)
        storage.save(HardState(term=term, vote=1, commit=commit), entries)
        sys.stdout.write(f"{last} {term} {commit}\n")
        sys.stdout.flush()
    storage.close()
    env.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
