"""How many connections one remote address may hold open on a port, shared by every port.

Why one class: the binary client port, the HTTP port and the Raft peer port all refuse a
connection the same way once its address holds its share (closed at once, before a byte
of it is read), and all log the refusals the same way: sampled at powers of two (the 1st,
2nd, 4th, 8th ... refusal), so a flood of a million connections writes twenty lines, not
a million, and the `refused_total` in the last line says how big it was.
"""

from __future__ import annotations

import structlog


class ConnectionCap:
    """Counts open connections per remote address; `admit` one, `release` it when it ends.

    `event` names the log event of a refusal (e.g. `binary.connection_refused`), so each
    port's refusals keep their own name in the log.
    """

    __slots__ = ("_held", "_log", "event", "max_per_address", "refused")

    def __init__(self, max_per_address: int, event: str, logger_name: str) -> None:
        if max_per_address <= 0:
            raise ValueError(f"max_per_address must be positive, got {max_per_address}")
        self.max_per_address = max_per_address
        self.event = event
        self.refused = 0
        self._held: dict[str, int] = {}
        self._log = structlog.get_logger(logger_name)

    def held(self, address: str) -> int:
        """Connections `address` holds now."""
        return self._held.get(address, 0)

    def admit(self, address: str, remote: str) -> bool:
        """Count one more connection of `address`, or refuse it (False, sampled log line)
        when the address already holds `max_per_address`. `remote` (host:port) is what the
        log line names."""
        held = self._held.get(address, 0)
        if held < self.max_per_address:
            self._held[address] = held + 1
            return True
        self.refused += 1
        if sampled(self.refused):
            self._log.warning(
                self.event,
                reason="too_many_connections",
                remote=remote,
                held=held,
                limit=self.max_per_address,
                refused_total=self.refused,
            )
        return False

    def release(self, address: str) -> None:
        """One connection `admit` let in has ended."""
        left = self._held.get(address, 0) - 1
        if left > 0:
            self._held[address] = left
        else:
            self._held.pop(address, None)


def sampled(count: int) -> bool:
    """Whether the `count`-th event of a kind is logged: the 1st, 2nd, 4th, 8th ..."""
    return count & (count - 1) == 0


def peer_address(peername: object) -> tuple[str, str]:
    """(address, "host:port") of a socket's `peername` extra info ("?" when unknown: a
    socket that is already gone)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), f"{peername[0]}:{peername[1]}"
    return "?", "?"
