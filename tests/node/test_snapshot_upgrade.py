"""A snapshot written by an older build (fewer tables) installs on a newer one: the
tables it lacks start empty, which is what the older build's state holds. A snapshot
naming a table this build does not know (a newer build's) is refused: a rolling upgrade
goes forward, never back."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.state.snapshot import SnapshotFormatError, restore_snapshot, write_snapshot
from node.state.tables import TABLE_NAMES
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from tests.node.harness import Harness

OLDER = TABLE_NAMES[:16]  # the tables before users, exchanges and topics were added


def _snapshot(h: Harness, path: Path, names: tuple[str, ...]) -> None:
    h.env.read(
        lambda txn: write_snapshot(txn, h.sm.tables.handles, names, h.sm.applied_index(), str(path))
    )


def test_an_older_builds_snapshot_installs_with_the_new_tables_empty(tmp_path: Path) -> None:
    h = Harness(str(tmp_path / "old"))
    try:
        h.create("jobs")
        h.send("jobs", b"a", b"b")
        h.ok("topic_put", name="events", config={"partitions": 1})  # a table OLDER lacks
        _snapshot(h, tmp_path / "older.snap", OLDER)
        new_env = LmdbEnv(str(tmp_path / "new"), sync=False)
        try:
            sm = QueueStateMachine(new_env)
            new_env.write(lambda txn: sm.restore_in_txn(txn, str(tmp_path / "older.snap")))
            sm.restored()
            assert sm.queue_info("jobs", h.now_ms)["depth"] == 2
            assert sm.topic_info("events") is None  # not in the older build's tables
        finally:
            new_env.close()
    finally:
        h.close()


def test_a_newer_builds_snapshot_is_refused_whole(tmp_path: Path) -> None:
    h = Harness(str(tmp_path / "new"))
    try:
        h.create("jobs")
        _snapshot(h, tmp_path / "full.snap", TABLE_NAMES)
        before = h.sm.state_hash()
        handles = dict(h.sm.tables.handles)
        with pytest.raises(SnapshotFormatError, match=r"node\.users"):
            h.env.write(
                lambda txn: restore_snapshot(txn, handles, OLDER, str(tmp_path / "full.snap"))
            )
        assert h.sm.state_hash() == before
    finally:
        h.close()
