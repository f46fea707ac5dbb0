"""structlog setup for a node process: JSON (or console) lines carrying node_id, term, role.

Why a shared holder and not contextvars: the driver learns of a new term or role inside its
own task, and contextvars bound there would not reach the API's tasks. One process-wide
holder, read by a processor, makes every line after the change carry the new values.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(node_id: int, log_format: str = "json", level: str = "info") -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    _RAFT_STATE.update(node_id=node_id, term=0, role="follower")
    structlog.configure(
        processors=[
            _add_raft_state,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


_RAFT_STATE: dict[str, object] = {}


def _add_raft_state(_logger: object, _name: str, event: dict) -> dict:
    for key, value in _RAFT_STATE.items():
        event.setdefault(key, value)
    return event


def bind_raft_state(term: int, role: str) -> None:
    _RAFT_STATE.update(term=term, role=role)
