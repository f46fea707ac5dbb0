"""benchmarks.apply_bench: the per-replica apply cost command runs every workload shape."""

from __future__ import annotations

import json

import pytest

from benchmarks import apply_bench


def test_measure_applies_every_workload_without_errors(tmp_path) -> None:
    us = apply_bench.measure(batches=2, path=str(tmp_path / "env"), repeats=1)
    assert set(us) == {
        "send100",
        "send100dd",
        "send100dd_random_ids",
        "recv10_ack",
        "send1",
        "txn_1ack_1send",
    }
    assert all(v > 0 for v in us.values())


def test_main_prints_figures_and_ceilings(capsys: pytest.CaptureFixture[str]) -> None:
    assert apply_bench.main(["--batches", "1", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["replicas"] == 3 and out["cores"] >= 1
    for name, us in out["apply_us_per_msg"].items():
        assert out["ceiling_msgs_per_s"][name] == round(out["cores"] * 1e6 / (3 * us))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        apply_bench.main(["--batches", "0"])
