"""bench.raft_bench: a tiny run on three demo node processes prints every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import raft_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_short_run_commits_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--proposers", "4", "--duration", "0.3", "--latency-duration", "0.2"]
    assert raft_bench.main([*argv, "--dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fsync"] is True and out["storage"] == "inline" and out["proposers"] == 4
    assert out["throughput_committed"] > 0 and out["single_proposer_samples"] > 0
    assert out["leader_proposals"] >= out["throughput_committed"]
    assert list(tmp_path.iterdir()) == []  # the data dirs are removed without --keep


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        raft_bench.main(["--proposers", "0"])
