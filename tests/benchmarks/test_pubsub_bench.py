"""`raftq bench publish100 fetch fanout10` against a real 3-node cluster: short runs, so the
code path is checked here, never the speed; and what each workload leaves behind shows it
did what its name says."""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks import queue_bench
from cluster import LocalCluster
from tests.support.api_client import ApiClient


def test_pubsub_workloads_append_fetch_and_fan_out(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["publish100", "fetch", "fanout10", "--servers", servers, "--duration", "0.5"]
    assert queue_bench.main([*argv, "--prefill", "3000", "--consumers", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["workload"] for r in rows] == ["publish100", "fetch", "fanout10"]
    for row in rows:
        assert row["msgs"] > 0 and row["errors"] == 0, row
        assert "ran empty" not in row["note"], row  # a reader at the end starts over

    async def state() -> tuple[dict, list[int]]:
        leader = cluster3.wait_for_leader(timeout_s=30)
        async with ApiClient(leader.url) as api:
            _, topic = await api.get("/v1/topics/bench-topic")
            depths = [
                (await api.get(f"/v1/queues/bench-fanout-{i}"))[1]["depth"] for i in range(10)
            ]
        return topic, depths

    topic, depths = asyncio.run(state())
    publish, _fetch, fanout = rows
    assert topic["partition_stats"][0]["high_watermark"] >= publish["msgs"]
    assert len(set(depths)) == 1 and depths[0] >= fanout["msgs"]  # every queue got each one
