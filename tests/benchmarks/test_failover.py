"""`raftq bench failover`: a killed and a stopped leader, and the time to the next ack."""

from __future__ import annotations

import json

import pytest

from benchmarks import queue_bench


def test_failover_times_a_kill_and_a_stop_of_the_leader(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert queue_bench.main(["failover", "--trials", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["workload"] for r in rows] == ["failover-kill", "failover-stop"]
    for row in rows:
        (ms,) = row["latencies_ms"]
        # an election must happen: faster than a heartbeat timeout cannot be a failover
        assert 200 < ms < 30_000, row
        assert "first send acked" in row["note"]


def test_failover_needs_its_own_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        queue_bench.main(["failover", "--servers", "http://127.0.0.1:9"])
    assert exc.value.code == 2 and "own cluster" in capsys.readouterr().err


def test_peers_says_how_to_compare(capsys: pytest.CaptureFixture[str]) -> None:
    assert queue_bench.main(["--peers"]) == 0
    assert "make compare" in capsys.readouterr().out
