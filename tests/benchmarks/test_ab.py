"""`python -m benchmarks.ab`: two clusters side by side, workloads in turns, B/A per round."""

from __future__ import annotations

import pytest

from benchmarks import ab


def test_two_configurations_take_turns_and_get_a_ratio_per_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--a-label", "plain", "--a-env", "RAFTQ_FAILPOINT=", "--b-label", "nofsync"]
    argv += ["--b-arg=--unsafe-no-fsync"]
    assert ab.main([*argv, "send1", "--duration", "0.3", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "A = plain {'RAFTQ_FAILPOINT': ''}" in out and "B = nofsync  --unsafe-no-fsync" in out
    rows = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [r[:2] for r in rows] == [["1", "send1"], ["2", "send1"]]
    for row in rows:
        a_rate, b_rate, ratio = (float(x.replace(",", "")) for x in row[2:5])
        assert a_rate > 0 and b_rate > 0 and ratio == pytest.approx(b_rate / a_rate, abs=0.01)
    assert "send1: B/A per round" in out and "median" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshot"],
        ["send1", "--servers", "http://127.0.0.1:9"],
        ["--a-env", "NOEQUALS", "send1"],
        ["--a-label", "x", "--b-label", "x", "send1"],
    ],
)
def test_what_it_cannot_compare_is_refused_before_starting(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        ab.main(argv)
