"""Writes the queue state's snapshot in a process of its own, so the node keeps its GIL.

Why a process: the writer is a Python loop over every record (a million waiting messages
are millions of records, seconds of CPU). On a thread of the node it holds the GIL about
half the time, and the node's event loop, which serves every request and heartbeat, slows
by a third while it runs (`raftq bench snapshot`). LMDB readers in another process see
committed states exactly as readers in this one do (MVCC), so the child opens the
environment read-only and writes the state at the applied index its own read transaction
sees; the file records that index, as the in-process writer's does.

The child runs at the lowest CPU priority (SCHED_IDLE, else nice +10): a snapshot is
background work, and on a busy machine it should take longer rather than take CPU from
requests.

The child is started per snapshot (snapshots are thousands of entries apart; starting one
costs about 0.1 s of CPU) rather than kept in a pool: a node killed with SIGKILL leaves no
long-lived helper behind, only a writer that finishes its file and exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lmdb

from node.state.snapshot import write_snapshot
from node.state.tables import META_APPLIED_INDEX, TABLE_NAMES
from raft.lmdb_env import MAX_DBS
from raft.state_machine import SnapshotFile

_META_TABLE = "node.meta"
NICE = 10  # the writer's CPU priority, relative to the node's


class SnapshotProcessError(RuntimeError):
    """The snapshot writer process failed; its last words are in the message."""


def write_in_child(env_path: str, path: str) -> SnapshotFile:
    """Run the writer for the environment at `env_path` in a child process; blocks (call it
    from a worker thread: waiting releases the GIL) and returns the file it wrote."""
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "node.state.snapshot_process", env_path, path],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip()[-800:]
        raise SnapshotProcessError(f"snapshot writer exited with {proc.returncode}: {last}")
    out = json.loads(proc.stdout)
    return SnapshotFile(
        out["path"], out["applied_index"], out["size"], bytes.fromhex(out["digest"])
    )


def write_from_env(env_path: str, path: str) -> SnapshotFile:
    """Open the environment read-only and write its node.* state from one read transaction."""
    env = lmdb.open(
        env_path, subdir=True, readonly=True, lock=True, max_dbs=MAX_DBS, readahead=False
    )
    try:
        with env.begin() as txn:
            handles = {
                name: env.open_db(name.encode(), txn=txn, create=False) for name in TABLE_NAMES
            }
            raw = txn.get(META_APPLIED_INDEX, db=handles[_META_TABLE])
            applied = 0 if raw is None else int.from_bytes(raw, "big")
            return write_snapshot(txn, handles, TABLE_NAMES, applied, path)
    finally:
        env.close()


def background_priority() -> None:
    """Run this process only on CPU time nothing else wants (SCHED_IDLE where Linux offers
    it, else nice +10): a node's work is latency-bound, and even a niced writer on a core
    delays the wakeups of its event loops and fsync threads (measured: sends 20% slower
    at nice +10 while snapshots were written back to back)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(NICE)


def main(argv: list[str] | None = None) -> int:
    """`python -m node.state.snapshot_process ENV_DIR OUT_PATH`: prints the file as JSON."""
    env_path, path = argv if argv is not None else sys.argv[1:]
    background_priority()
    file = write_from_env(env_path, path)
    fields = {"path": file.path, "applied_index": file.applied_index, "size": file.size}
    sys.stdout.write(json.dumps(fields | {"digest": file.digest.hex()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
