"""benchmarks.demo.kv_state_machine: replicas that apply the same entries agree, across reopens."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.demo.kv_state_machine import KvStateMachine
from raft.lmdb_env import LmdbEnv
from raft.messages import Entry


def test_kv_state_machine_is_deterministic(tmp_path: Path) -> None:
    entries = [Entry(i, 1, data=f"Ik{i % 3}".encode()) for i in range(1, 30)]
    sums = []
    for name in ("a", "b"):
        env = LmdbEnv(str(tmp_path / name))
        sm = KvStateMachine(env)
        results = sm.apply(entries[:10]) + sm.apply(entries[10:])
        sums.append((results, sm.summary()))
        env.close()
        reopened = KvStateMachine(LmdbEnv(str(tmp_path / name)))
        assert reopened.applied_index() == 29
        with pytest.raises(ValueError):
            reopened.apply(entries[5:6])
    assert sums[0] == sums[1]
    assert sums[0][1]["applied_count"] == 29 and sums[0][1]["keys"] == 3
