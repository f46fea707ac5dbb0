"""benchmarks.pack_bench: the packing timing command prints both figures."""

from __future__ import annotations

import pytest

from benchmarks import pack_bench


def test_the_timing_command_prints_both_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert pack_bench.main() == 0
    out = capsys.readouterr().out
    assert out.startswith("packb ") and "kept Packer" in out
