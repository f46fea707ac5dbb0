"""`raftq bench` (benchmarks.queue_bench) against a real 3-node cluster: short runs, so it is the
code path that is checked here, never the speed."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from benchmarks import process_probe, queue_bench, queue_workloads
from cluster import LocalCluster
from tests.support.api_client import ApiClient


def test_rounds_run_every_workload_in_turn_and_pair_the_dedup_cost(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["send100", "send100dd", "--servers", servers, "--duration", "0.3", "--rounds", "2"]
    assert queue_bench.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["workload"] for r in out["results"]] == ["send100", "send100dd"] * 2
    for r in out["results"]:
        assert r["msgs"] > 0 and r["errors"] == 0, r
    assert len(out["dedup_costs"]) == 2
    for cost, (plain, dedup) in zip(
        out["dedup_costs"], zip(out["results"][::2], out["results"][1::2], strict=True), strict=True
    ):
        expected = 1 - (dedup["msgs"] / dedup["seconds"]) / (plain["msgs"] / plain["seconds"])
        assert cost == pytest.approx(expected)

    assert (
        queue_bench.main([*argv[:2], "--servers", servers, "--duration", "0.3", "--rounds", "2"])
        == 0
    )
    text = capsys.readouterr().out
    assert "best of 2 rounds:" in text and "dedup cost per round" in text


def test_progress_bar_is_drawn_on_stderr_when_asked_and_json_stays_clean(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["send1", "--servers", servers, "--duration", "0.3", "--rounds", "2"]
    assert queue_bench.main([*argv, "--progress", "--json"]) == 0
    out, err = capsys.readouterr()
    assert [r["workload"] for r in json.loads(out)["results"]] == ["send1"] * 2
    assert "round 2/2 send1" in err and "2/2" in err
    assert queue_bench.main([*argv, "--json"]) == 0  # stderr is no terminal here: no bar
    assert "round 1/2" not in capsys.readouterr().err


def test_a_run_that_drains_its_queue_says_so(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["recvack", "--servers", servers, "--duration", "0.5", "--prefill", "20"]
    assert queue_bench.main([*argv, "--consumers", "4", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["msgs"] == 20 and result["errors"] == 0
    assert "the queue ran empty" in result["note"] and "raise --prefill" in result["note"]


@pytest.mark.parametrize("workload", ["consume", "consume-eo"])
def test_consume_runs_the_client_consumer_and_completes_every_message_once(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str], workload: str
) -> None:
    servers = ",".join(cluster3.urls)
    argv = [workload, "--servers", servers, "--duration", "1", "--prefill", "200"]
    assert queue_bench.main([*argv, "--consumers", "16", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["workload"] == workload and row["errors"] == 0
    assert row["msgs"] == 200 and len(row["latencies_ms"]) == 200
    assert "the queue ran empty" in row["note"]
    if workload == "consume":
        acks_per_request = float(row["note"].split("; ")[1].split()[0])
        assert acks_per_request > 1.0  # handlers that finished together shared ack requests

    async def stats() -> tuple[dict, dict | None]:
        async with ApiClient(cluster3.wait_for_leader(timeout_s=30).url) as api:
            _, info = await api.get(f"/v1/queues/bench-{workload}")
            out = None
            if workload == "consume-eo":
                _, out = await api.get(f"/v1/queues/bench-{workload}-out")
            return info, out

    info, out = asyncio.run(stats())
    assert (info["depth"], info["in_flight"], info["acked_total"]) == (0, 0, 200)
    if out is not None:
        assert out["depth"] == 200  # one output per input, exactly once


@pytest.mark.parametrize(
    "argv", [["sendd1"], ["send1", "--rounds", "0"], ["send1", "--duration", "0"]]
)
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        queue_bench.main([*argv, "--servers", "http://127.0.0.1:9"])
    assert exc.value.code == 2


def test_txn_consumer_shares_receives_and_moves_each_message_once(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["txn-consumer", "--servers", servers, "--duration", "0.5", "--prefill", "300"]
    assert queue_bench.main([*argv, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["workload"] == "txn-consumer" and row["errors"] == 0
    assert 0 < row["msgs"] <= 300
    per_receive = float(row["note"].rsplit(", ", 1)[1].split()[0])
    assert per_receive > 1.0  # one receive served several transactions

    async def depths() -> tuple[int, int]:
        async with ApiClient(cluster3.wait_for_leader(timeout_s=30).url) as api:
            _, src = await api.get("/v1/queues/bench-txnc-in")
            _, out = await api.get("/v1/queues/bench-txnc-out")
            return src["depth"] + src["in_flight"], out["depth"]

    left, moved = asyncio.run(depths())
    assert moved == row["msgs"] and left + moved == 300


def test_bench_dedup_ids_have_the_client_layout() -> None:
    from cluster.message import new_dedup_id

    ids = queue_workloads.ordered_ids(100) + queue_workloads.ordered_ids(100)
    assert len(set(ids)) == 200
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    assert ids[:100] == sorted(ids[:100])  # ordered within one request
    client = new_dedup_id()
    assert abs(int(ids[-1][:12], 16) - int(client[:12], 16)) < 5_000  # the same ms clock


def test_own_cluster_runs_report_each_process_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --servers the bench starts the nodes, so it can say which process was busy."""
    assert queue_bench.main(["send1", "--duration", "0.5", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["msgs"] > 0
    cpu = result["cpu"]
    roles = sorted(cpu)
    assert (
        roles[0] == "bench" and roles[1].startswith("follower") and roles[2].startswith("follower")
    )
    assert roles[3] == "leader" and len(roles) == 4
    assert cpu["leader"] > 0 and cpu["bench"] > 0  # both worked during the run
    assert all(0 <= cores < 4 for cores in cpu.values())


def test_cpu_seconds_counts_this_process() -> None:
    before = process_probe.cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert process_probe.cpu_seconds(os.getpid()) - before >= 0.2


def test_snapshot_workload_pairs_its_turns_and_a_new_node_catches_up_by_snapshot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Own cluster: the snapshot's size, two idle/busy pairs, and a joiner made a voter."""
    argv = ["snapshot", "--messages", "2000", "--duration", "0.4", "--batch-concurrency", "8"]
    argv += ["--snapshot-trailing", "10"]  # the leader's log no longer starts at 1
    assert queue_bench.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["results"]
    names = [r["workload"] for r in rows]
    assert names == ["snapshot"] + [queue_workloads.SNAP_IDLE, queue_workloads.SNAP_BUSY] * 2 + [
        "catch-up"
    ]
    snap = rows[0]
    assert snap["msgs"] == 2000 and "MB written" in snap["note"]
    megabytes = float(snap["note"].split(": ")[1].split(" MB")[0])
    assert megabytes > 2000 * 100 / 1e6  # at least the bodies it holds
    for r in rows[1:5]:
        assert r["msgs"] > 0 and r["errors"] == 0, r
    written = [int(r["note"].split("wrote ")[1].split()[0]) for r in rows[2:5:2]]
    assert all(n >= 1 for n in written)  # the busy runs really overlapped snapshots
    assert len(out["snapshot_costs"]) == 2
    idle, busy = rows[1], rows[2]
    expected = 1 - (busy["msgs"] / busy["seconds"]) / (idle["msgs"] / idle["seconds"])
    assert out["snapshot_costs"][0] == pytest.approx(expected)
    catch_up = rows[-1]
    assert "by snapshot" in catch_up["note"] and catch_up["seconds"] > 0


def test_snapshot_workload_prints_its_cost(capsys: pytest.CaptureFixture[str]) -> None:
    result = queue_workloads.Result(queue_workloads.SNAP_IDLE, 10, 1000, 1.0, [1.0], 0)
    busy = queue_workloads.Result(queue_workloads.SNAP_BUSY, 10, 900, 1.0, [1.0], 0)
    assert queue_bench.snapshot_costs([result, busy]) == [pytest.approx(0.1)]
    assert queue_bench.dedup_costs([result, busy]) == []
