"""A CI-sized run of the coverage-guided fuzz target for the peer and binary frame decoders
(tests/fuzz/atheris_frames.py): a few thousand inputs, any crash fails the test with the
input libFuzzer saved. RAFTQ_FUZZ_EXAMPLES sets the count for a longer run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris",
    reason="atheris is not installed (pip install 'raftq[fuzz]'); the hypothesis fuzzers "
    "of the same decoders (test_wire_decoders.py) still run",
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_frame_decoders_survive_a_coverage_guided_run(tmp_path: Path) -> None:
    runs = int(os.environ.get("RAFTQ_FUZZ_EXAMPLES", "0") or 0) or 5000
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.atheris_frames",
            f"-runs={runs}",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, f"{crashes}\n{done.stderr[-4000:]}"
    assert f"Done {runs} runs" in done.stderr
