"""Crash-at-a-point hooks for the chaos suite (`RAFTQ_FAILPOINT=name[:N][@P]`).

Why: acknowledged data is lost at persistence boundaries, not at random instants (etcd 2022),
so the chaos suite must be able to kill a node exactly between two steps — e.g. after the log
write and before the ack. `failpoint(name)` is called at such a step; when the environment
variable names it, the process logs the hit and exits with `os._exit(137)` (no cleanup, like
SIGKILL). Forms: `name` (first hit), `name:N` (the N-th hit), `name@0.2` (each hit with
probability 0.2), `name:N@P`; several specs may be joined with commas. The variable is read
once at import, so an unset variable costs one dict lookup per call.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

ENV_VAR = "RAFTQ_FAILPOINT"
EXIT_CODE = 137


class FailpointSpecError(ValueError):
    """RAFTQ_FAILPOINT could not be parsed; the message quotes the bad part."""


@dataclass(slots=True)
class _Armed:
    name: str
    nth: int  # trigger on this hit (1-based); 0 = any hit (with the probability)
    probability: float
    hits: int = 0


def parse_spec(text: str) -> dict[str, _Armed]:
    """Parse `name[:N][@P],...` into armed failpoints by name."""
    armed: dict[str, _Armed] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rest, _, prob_text = part.partition("@")
        name, _, nth_text = rest.partition(":")
        try:
            nth = int(nth_text) if nth_text else (0 if prob_text else 1)
            probability = float(prob_text) if prob_text else 1.0
        except ValueError:
            raise FailpointSpecError(f"bad {ENV_VAR} entry {part!r}: want name[:N][@P]") from None
        if not name or nth < 0 or not 0.0 <= probability <= 1.0:
            raise FailpointSpecError(f"bad {ENV_VAR} entry {part!r}: want name[:N][@P]")
        armed[name] = _Armed(name, nth, probability)
    return armed


_ARMED: dict[str, _Armed] = parse_spec(os.environ.get(ENV_VAR, ""))
_RNG = random.Random()


def failpoint(name: str) -> None:
    """Crash the process here if RAFTQ_FAILPOINT arms `name` and this hit is the chosen one."""
    if not _ARMED:
        return
    fp = _ARMED.get(name)
    if fp is None:
        return
    fp.hits += 1
    if fp.nth and fp.hits != fp.nth:
        return
    if fp.probability < 1.0 and _RNG.random() >= fp.probability:
        return
    _crash(fp)


def _crash(fp: _Armed) -> None:
    # structlog may buffer or be unconfigured; one plain JSON line on stderr always gets out.
    sys.stderr.write(
        f'{{"event": "failpoint.triggered", "failpoint": "{fp.name}", "hit": {fp.hits}, '
        f'"level": "warning", "pid": {os.getpid()}}}\n'
    )
    sys.stderr.flush()
    os._exit(EXIT_CODE)
