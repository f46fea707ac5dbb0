"""The snapshot written by a child process is the one the node would write itself.

The child opens the node's LMDB environment read-only from another process; its file must
be byte for byte the in-process writer's at the same applied index, and a failure in the
child must reach the caller as an error, never as a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from node.state.snapshot_process import SnapshotProcessError, write_in_child
from node.state_machine import QueueStateMachine
from raft.lmdb_env import LmdbEnv
from tests.node.harness import Harness


def _some_state(h: Harness) -> None:
    h.create("jobs-dlq")
    h.create("jobs", max_receives=3, dead_letter_queue="jobs-dlq")
    h.send("jobs", *(f"m{i}".encode() for i in range(50)), attributes={"k": "v"})
    receipts = [m["receipt"] for m in h.receive("jobs", 7)]
    h.ok("ack", queue="jobs", receipts=receipts[:3])


def test_the_child_writes_the_same_file_as_the_node_at_the_same_index(tmp_path: Path) -> None:
    h = Harness(str(tmp_path / "env"))
    _some_state(h)
    in_process = QueueStateMachine(h.env, snapshot_in_child=False)
    mine = in_process.write_snapshot(str(tmp_path / "here.snap"))
    child = h.sm.write_snapshot(str(tmp_path / "child.snap"))  # the default: a child process
    assert child.applied_index == mine.applied_index == h.index
    assert (child.size, child.digest) == (mine.size, mine.digest)
    assert Path(child.path).read_bytes() == Path(mine.path).read_bytes()

    restored_env = LmdbEnv(str(tmp_path / "restored"), sync=False)
    restored = QueueStateMachine(restored_env)
    assert restored_env.write(lambda txn: restored.restore_in_txn(txn, child.path)) == h.index
    restored.restored()
    assert restored.state_hash() == h.sm.state_hash()
    h.close()
    restored_env.close()


def test_a_failing_child_is_an_error_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(SnapshotProcessError, match="exited with") as err:
        write_in_child(str(tmp_path / "no-such-env"), str(tmp_path / "x.snap"))
    assert "Error" in str(err.value)  # the child's own exception, not a bare exit code
    assert not (tmp_path / "x.snap").exists()
