"""The one structlog setup of every raftq process: timestamped lines on a stream, filtered by level.

Each entry point (a node, the `raftq` CLI, the chaos tools, the Raft demo node) calls
`configure_logging` with what differs between them: the level, JSON or console lines,
the stream, processors of its own that run first (a node adds its term and role), and
whether loggers cache their configuration on first use.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

LogFormat = Literal["json", "console"]


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the moment of each write.

    Why: structlog binds its output file when configured (or when a logger is first used
    and cached); a process that swaps `sys.stderr` later (pytest's capture, a daemon that
    redirects it) would otherwise keep writing to the old, maybe closed, stream.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def level_number(level: str | int) -> int:
    """`level` as a `logging` number: an int as it is, a name in any case ("info"), else INFO."""
    if isinstance(level, int):
        return level
    return logging.getLevelNamesMapping().get(level.upper(), logging.INFO)


def configure_logging(
    log_format: LogFormat | str = "json",
    level: str | int = "info",
    *,
    stream: TextIO | None = None,
    first_processors: Sequence[Processor] = (),
    cache_logger_on_first_use: bool = True,
) -> None:
    """Configure structlog for this process.

    `log_format`: "json" for one JSON object a line, anything else for plain console lines.
    `level`: a `logging` level name or number; lines below it are dropped before any
    formatting work. `stream`: where lines go (default: `sys.stderr` as it is at each
    write).
    `first_processors` run before the shared ones (contextvars, level, ISO UTC timestamp,
    exception text, renderer). `cache_logger_on_first_use=False` lets a later
    `configure` reach loggers already used (a CLI run several times in one process).
    """
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *first_processors,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(
            file=_CurrentStderr() if stream is None else stream  # type: ignore[arg-type]
        ),
        cache_logger_on_first_use=cache_logger_on_first_use,
    )


__all__ = ["LogFormat", "configure_logging", "level_number"]
