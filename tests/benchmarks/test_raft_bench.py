"""benchmarks.raft_bench: a tiny run on three demo node processes prints every figure.

It runs as `python -m benchmarks.raft_bench` in a subprocess: the command configures structlog
with cached loggers for its whole process, which must not leak into later tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import raft_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]


def test_a_short_run_commits_and_reports(tmp_path: Path) -> None:
    argv = ["--proposers", "4", "--duration", "0.3", "--latency-duration", "0.2"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.raft_bench", *argv, "--dir", str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["fsync"] is True and out["proposers"] == 4
    assert out["throughput_committed"] > 0 and out["single_proposer_samples"] > 0
    assert out["leader_proposals"] >= out["throughput_committed"]
    assert list(tmp_path.iterdir()) == []  # the data dirs are removed without --keep


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        raft_bench.main(["--proposers", "0"])
