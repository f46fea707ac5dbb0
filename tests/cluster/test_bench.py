"""`raftq bench` against a real 3-node cluster: short runs, so it is the code path that is
checked here, never the speed."""

from __future__ import annotations

import json

import pytest

from cluster import LocalCluster, bench


def test_rounds_run_every_workload_in_turn_and_pair_the_dedup_cost(
    cluster3: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    servers = ",".join(cluster3.urls)
    argv = ["send100", "send100dd", "--servers", servers, "--duration", "0.3", "--rounds", "2"]
    assert bench.main([*argv, "--json"]) == 0
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

    assert bench.main([*argv[:2], "--servers", servers, "--duration", "0.3", "--rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "best of 2 rounds:" in text and "dedup cost per round" in text


@pytest.mark.parametrize(
    "argv", [["sendd1"], ["send1", "--rounds", "0"], ["send1", "--duration", "0"]]
)
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main([*argv, "--servers", "http://127.0.0.1:9"])
    assert exc.value.code == 2
