"""benchmarks.storage_bench: the fsynced-save timing runs each batch size and prints its rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import storage_bench


def test_measure_saves_every_batch_size_in_a_fresh_env(tmp_path: Path) -> None:
    results = storage_bench.measure(
        batch_sizes=(1, 8), duration_s=5.0, max_saves=5, path=str(tmp_path)
    )
    assert [(r.batch_entries, r.saves) for r in results] == [(1, 5), (8, 5)]
    assert results[1].entries_per_s == pytest.approx(8 * results[1].saves_per_s)
    assert list(tmp_path.iterdir()) == []  # each env is removed after its run


def test_main_prints_one_line_per_batch_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--batch", "2", "--duration-s", "0.05", "--no-sync", "--dir", str(tmp_path)]
    assert storage_bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    (line,) = [x for x in out if x.startswith("batch=")]  # structlog's default prints too
    assert line.startswith("batch=   2 entry_bytes=100 fsync=False saves/s=")
