"""benchmarks.transport_bench: the loopback transport timing delivers every message and says so."""

from __future__ import annotations

import pytest

from benchmarks import transport_bench


def test_main_sends_every_message_and_prints_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert transport_bench.main(["--messages", "2000", "--payload-bytes", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("raft.transport bench: 2000 APP msgs, 10-byte payload")
    assert out.rstrip().endswith("dropped=0")
