"""Run every scripted scenario in tests/raft/scenarios/ and compare the traces.

REWRITE=1 regenerates the expectations; review the diff: it must be right per the paper.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raft.scenario import Scenario, render_script

SCENARIO_DIR = Path(__file__).parent / "scenarios"
SCRIPTS = sorted(SCENARIO_DIR.glob("*.txt"))


def test_scenarios_exist() -> None:
    assert len(SCRIPTS) >= 7


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_scenario(path: Path) -> None:
    text = path.read_text()
    blocks, outputs = Scenario().run_script(text)
    if os.environ.get("REWRITE") == "1":
        path.write_text(render_script(blocks, outputs))
        return
    for block, actual in zip(blocks, outputs, strict=True):
        assert actual == block.expected, f"{path.name}: command {block.command!r}"
    assert "VIOLATION" not in "\n".join(outputs)
