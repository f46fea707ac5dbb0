"""raft/failpoints.py: the crash hooks the chaos suite arms through RAFTQ_FAILPOINT."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from raft.failpoints import EXIT_CODE, FailpointSpecError, parse_spec

SCRIPT = """
import sys
from raft.failpoints import failpoint
for i in range(1, 6):
    failpoint("other_step")
    failpoint("after_apply_before_response")
    print(i, flush=True)
"""


def run_with(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RAFTQ_FAILPOINT", None)
    if spec is not None:
        env["RAFTQ_FAILPOINT"] = spec
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=30
    )


def test_unset_variable_never_crashes() -> None:
    proc = run_with(None)
    assert proc.returncode == 0
    assert proc.stdout.split() == ["1", "2", "3", "4", "5"]


def test_crashes_at_the_nth_hit_of_the_named_point_only() -> None:
    proc = run_with("after_apply_before_response:3")
    assert proc.returncode == EXIT_CODE
    assert proc.stdout.split() == ["1", "2"]  # the third hit never printed
    assert '"failpoint.triggered"' in proc.stderr and '"hit": 3' in proc.stderr


def test_first_hit_by_default_and_lists_of_points() -> None:
    assert run_with("after_apply_before_response").stdout.split() == []
    proc = run_with("nothing_here:1,after_apply_before_response:2")
    assert proc.returncode == EXIT_CODE and proc.stdout.split() == ["1"]


def test_probability_zero_never_fires_and_one_always_does() -> None:
    assert run_with("after_apply_before_response@0").returncode == 0
    assert run_with("after_apply_before_response@1").returncode == EXIT_CODE


@pytest.mark.parametrize("spec", ["x:abc", "x:-1", "x@2", ":3", "x@nan?"])
def test_bad_specs_are_rejected(spec: str) -> None:
    with pytest.raises(FailpointSpecError):
        parse_spec(spec)
    proc = run_with(spec)
    assert proc.returncode != 0 and "RAFTQ_FAILPOINT" in proc.stderr


def test_parse_spec_shapes() -> None:
    armed = parse_spec(" a:4 , b@0.5,c:2@0.25 ")
    assert (armed["a"].nth, armed["a"].probability) == (4, 1.0)
    assert (armed["b"].nth, armed["b"].probability) == (0, 0.5)
    assert (armed["c"].nth, armed["c"].probability) == (2, 0.25)
