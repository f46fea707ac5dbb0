"""A progress bar on stderr for long command-line runs (`raftq bench`, `benchmarks.ab`, chaos).

Why stderr, and only sometimes: results (and `--json`) go to stdout and must stay clean, and
test output must not fill with redraws. So the bar is drawn only when stderr is a terminal,
or when asked (`--progress`; `--no-progress` keeps it off on a terminal). It counts steps
(a workload in a round, a scenario), names the one running and shows the time elapsed.
It is drawn with `rich` (the `progress` extra); without it, nothing is drawn.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any


def wanted(show: bool | None) -> bool:
    """`show` if given (the command line asked), else whether stderr is a terminal."""
    return sys.stderr.isatty() if show is None else show


class Bar:
    """`with Bar(total, show) as bar: bar.step("round 1 send1"); ...; bar.advance()`."""

    def __init__(self, total: int, show: bool | None = None) -> None:
        self.total = total
        self._progress: Any = None
        self._task: Any = None
        if not wanted(show):
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:  # optional: no rich, no bar
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            # asked for on a pipe, it is drawn anyway; log lines written to stderr while
            # it shows print above it, and stdout is left alone
            console=Console(file=sys.stderr, force_terminal=True),
            redirect_stdout=False,
            redirect_stderr=True,
        )

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def __enter__(self) -> Bar:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("starting", total=self.total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def step(self, description: str) -> None:
        """Name what runs now."""
        if self._task is not None:
            self._progress.update(self._task, description=description)

    def advance(self, steps: int = 1) -> None:
        """Count `steps` done."""
        if self._task is not None:
            self._progress.advance(self._task, steps)
