"""The progress bar of long runs: on stderr only, and only on a terminal or when asked."""

from __future__ import annotations

import pytest

from common.progress import Bar


def test_not_drawn_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with Bar(2) as bar:  # pytest's captured stderr is no terminal
        bar.step("round 1/1 send1")
        bar.advance(2)
    assert not bar.shown
    assert capsys.readouterr() == ("", "")


def test_asked_for_it_is_drawn_on_stderr_and_stdout_stays_clean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Bar(2, show=True) as bar:
        bar.step("round 1/2 send1")
        bar.advance()
        bar.step("round 2/2 send1")
        bar.advance()
    out, err = capsys.readouterr()
    assert bar.shown and out == ""
    assert "round 2/2 send1" in err and "2/2" in err


def test_no_progress_keeps_it_off(capsys: pytest.CaptureFixture[str]) -> None:
    with Bar(1, show=False) as bar:
        bar.advance()
    assert not bar.shown and capsys.readouterr() == ("", "")
