"""`python -m chaos run`: listing, refusing unavailable scenarios, the result table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos import scenarios
from chaos.__main__ import render_table, table_row


def chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos", *args], capture_output=True, text=True, timeout=60
    )


REPO = Path(__file__).parents[2]

# Put first on PYTHONPATH, this `sitecustomize` makes every process of the run (the `raftq`
# CLI, the `python -m chaos` it execs, the nodes) refuse the modules in $RAFTQ_TEST_BLOCK the
# way an absent module is refused: as if the chaos extra had not been installed.
BLOCKER = """
import os, sys

class _Block:
    names = set(os.environ.get("RAFTQ_TEST_BLOCK", "").split(","))

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None

sys.meta_path.insert(0, _Block())
"""


def raftq_without(
    tmp_path: Path, blocked: str, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`raftq ARGS` (the console script's main) with the module `blocked` uninstallable."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCKER)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)]),
        "RAFTQ_TEST_BLOCK": blocked,
    }
    code = "import sys; from cluster.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.timeout(150)
def test_a_valid_run_without_matplotlib_passes_with_one_warning(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = raftq_without(
        tmp_path,
        "matplotlib",
        *("chaos", "--scenario", "baseline", "--seed", "3", "--duration", "2"),
        *("--out", str(out)),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "run error" not in proc.stdout
    notes = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(notes) == 1, proc.stderr
    assert "matplotlib is not installed" in notes[0] and "pip install 'raftq[chaos]'" in notes[0]
    row = proc.stdout.splitlines()[-1]
    assert row.startswith("| baseline ") and "| none " in row
    run_dir = out / "baseline-3"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["result"]["valid"] is True
    assert "matplotlib" in summary["artifacts"]["skipped"]["timeline.png"]
    assert not (run_dir / "timeline.png").exists()
    assert (run_dir / "report.md").exists() and (run_dir / "history.jsonl").exists()


def test_a_run_that_cannot_complete_still_fails_without_matplotlib(tmp_path: Path) -> None:
    """Only the picture is optional: a run that could not complete stays a failure."""
    proc = raftq_without(
        tmp_path,
        "matplotlib",
        *("chaos", "--scenario", "baseline", "--seed", "3", "--duration", "2"),
        *("--out", str(tmp_path / "results"), "--toxiproxy-url", "https://127.0.0.1:1"),
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did not complete" in proc.stderr and "run error" in proc.stdout


def test_without_toxiproxy_python_list_works_and_a_run_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    listed = raftq_without(tmp_path, "toxiproxy", "chaos", "--list")
    assert listed.returncode == 0 and "baseline" in listed.stdout, listed.stderr
    proc = raftq_without(tmp_path, "toxiproxy", "chaos", "--scenario", "baseline", "--seed", "1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: toxiproxy-python is not installed, needed for any chaos run "
        "(it drives the fault proxy): pip install 'raftq[chaos]'"
    ]
    assert not (tmp_path / "chaos-results").exists()


def test_list_names_every_scenario_of_chaos_md_without_a_subcommand() -> None:
    proc = chaos("--list")  # `raftq chaos --list` means `run --list`
    assert proc.returncode == 0, proc.stderr
    for number in range(1, 16):
        assert any(line.split()[0] == str(number) for line in proc.stdout.splitlines())
    for name in ("membership-churn", "snapshot-install-crash", "amnesia"):
        assert name in proc.stdout


def test_unknown_scenario_is_a_usage_error() -> None:
    proc = chaos("run", "--scenario", "no-such-thing", "--seed", "1")
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr


def test_matrix_is_scenarios_1_to_15_and_numbers_resolve() -> None:
    assert [scenarios.SCENARIOS[n].number for n in scenarios.MATRIX] == list(range(1, 16))
    assert scenarios.get("4").name == "one-way-leader"
    assert scenarios.get("14").name == "snapshot-install"
    assert scenarios.get("15").name == "membership-churn"


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
