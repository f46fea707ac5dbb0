"""CI smoke runs of the chaos suite: real nodes, the real fault proxy, short faulty phases.

Each run must inject its faults (windows recorded, a new leader where the fault demands one),
do real work (acknowledged values), and come out with no violation: nothing lost (P1),
nothing unexpected (P2, P3), no duplicate under exactly-once (P4), and P5-P8 clean.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chaos.nemesis import Nemesis
from chaos.scenario_run import run_scenario
from chaos.scenarios import Scenario

SMOKE_DURATION_S = 12.0

CASES = {
    # scenario: (seed, the fault must have moved leadership)
    "isolate-leader": (11, True),
    "kill-leader": (12, True),
    "one-way-leader": (13, True),
    "exactly-once": (14, True),
}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("scenario", list(CASES))
async def test_smoke_scenario_has_no_violation(scenario: str, tmp_path: Path) -> None:
    seed, moves_leader = CASES[scenario]
    summary = await run_scenario(scenario, seed, SMOKE_DURATION_S, out_root=tmp_path)
    res = summary["result"]
    props = res["properties"]
    out_dir = Path(summary["results_dir"])
    assert (out_dir / "history.jsonl").stat().st_size > 0
    assert (out_dir / "timeline.png").exists() and (out_dir / "report.md").exists()

    assert summary["windows"], "the nemesis injected no fault"
    assert res["acknowledged"] >= 20, "too little work was acknowledged to mean anything"
    if moves_leader:
        leaders = {e["node"] for e in summary["node_events"] if e["role"] == "leader"}
        assert len(leaders) >= 2 or max(e["term"] for e in summary["node_events"]) >= 2

    report = (out_dir / "report.md").read_text()
    for name in ("P1", "P2", "P3"):
        assert props[name]["count"] == 0, f"{name} in {scenario}:\n{report}"
    if res["kind"] == "pipeline":
        assert props["P4"]["count"] == 0, f"duplicates under exactly-once:\n{report}"
    for name in ("P5", "P6", "P7", "P8", "stale_ack"):
        assert not props[name]["violation"], f"{name} in {scenario}:\n{report}"
    assert res["valid"], report


async def _purge_once(nem: Nemesis, until: float) -> None:
    """Sabotage, not a fault: delete acknowledged messages behind the workload's back."""
    await asyncio.sleep(4.0)
    w = nem.begin("purge-q")
    status, body = await nem._leader_call("POST", "/v1/queues/q/purge")
    assert status == 200, (status, body)
    w.detail["purged"] = body["purged"]
    nem.end(w)
    await asyncio.sleep(max(0.0, until - nem.clock()))


@pytest.mark.timeout(150)
async def test_suite_reports_acknowledged_messages_that_vanish(tmp_path: Path) -> None:
    """End to end, the suite must be able to fail: purged acknowledged messages are P1."""
    # No consumers until the drain: the acknowledged backlog is what the purge deletes.
    sabotage = Scenario(
        "sabotage-purge",
        None,
        "purge q mid-run",
        _purge_once,
        workload_options={"consumers": 0, "fifo": False},
    )
    summary = await run_scenario(sabotage, 31, 8.0, out_root=tmp_path)
    res = summary["result"]
    purged = summary["windows"][0]["detail"]["purged"]
    assert purged > 0
    assert "P1" in res["violations"] and 0 < res["lost"] <= purged
    assert (Path(summary["results_dir"]) / "repro.md").exists()
