"""structlog setup for a node process: the shared setup, plus node_id, term and role on every line.

Why a shared holder and not contextvars: the driver learns of a new term or role inside its
own task, and contextvars bound there would not reach the API's tasks. One process-wide
holder, read by a processor, makes every line after the change carry the new values.
"""

from __future__ import annotations

from typing import Any

from common import logging_setup


def configure_logging(node_id: int, log_format: str = "json", level: str = "info") -> None:
    """JSON (or console) lines on stderr at `level`, each carrying node_id, term and role."""
    _RAFT_STATE.update(node_id=node_id, term=0, role="follower")
    logging_setup.configure_logging(log_format, level, first_processors=[_add_raft_state])


_RAFT_STATE: dict[str, object] = {}


def _add_raft_state(_logger: object, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in _RAFT_STATE.items():
        event.setdefault(key, value)
    return event


def bind_raft_state(term: int, role: str) -> None:
    """From now on every line carries this term and role (called on each change)."""
    _RAFT_STATE.update(term=term, role=role)
