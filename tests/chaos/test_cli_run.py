"""`python -m chaos run`: listing, refusing unavailable scenarios, the result table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chaos import scenarios
from chaos.cli_run import render_table, table_row


def chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos", *args], capture_output=True, text=True, timeout=60
    )


def test_list_names_every_scenario_of_chaos_md_without_a_subcommand() -> None:
    proc = chaos("--list")  # `raftq chaos --list` means `run --list`
    assert proc.returncode == 0, proc.stderr
    for number in range(1, 16):
        assert any(line.split()[0] == str(number) for line in proc.stdout.splitlines())
    assert "refused" in proc.stdout


@pytest.mark.parametrize("name", ["snapshot-install", "membership", "14", "15"])
def test_scenarios_needing_missing_features_are_refused(name: str) -> None:
    proc = chaos("--scenario", name, "--seed", "1", "--duration", "5")
    assert proc.returncode == 2
    assert "needs" in proc.stderr
    with pytest.raises(scenarios.ScenarioUnavailable):
        scenarios.get(name)


def test_unknown_scenario_is_a_usage_error() -> None:
    proc = chaos("run", "--scenario", "no-such-thing", "--seed", "1")
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr


def test_matrix_is_scenarios_1_to_13_and_numbers_resolve() -> None:
    assert [scenarios.SCENARIOS[n].number for n in scenarios.MATRIX] == list(range(1, 14))
    assert scenarios.get("4").name == "one-way-leader"


def test_table_row_shows_counts_and_violations() -> None:
    summary = {
        "scenario": "bridge",
        "seed": 5,
        "nodes": 3,
        "result": {
            "ops": {"ok": 10, "fail": 2, "info": 1},
            "lost": 1,
            "duplicated": 0,
            "unexpected": 0,
            "recovered": 1,
            "violations": ["P1"],
            "properties": {"P9": {"max_unavailability_s": 1.5}},
        },
    }
    table = render_table([table_row(summary)])
    header, rule, row = table.splitlines()
    assert "violations" in header and set(rule) <= {"|", "-"}
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "bridge",
        "5",
        "3",
        "10/2/1",
        "1",
        "0",
        "0",
        "1",
        "P1",
        "1.5",
    ]
