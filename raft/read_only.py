"""ReadIndex bookkeeping: linearizable reads without writing to the log (Raft §6.4).

The leader records its commit index for each read request, tags a heartbeat round with
the request's context and, once a quorum acknowledged that round, knows it was still the
leader when the read arrived: reading state applied through that index is linearizable.
Requests are answered in arrival order; an ack for a later context covers earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ReadIndexStatus:
    index: int
    context: bytes
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    """Pending ReadIndex requests of the current leader term, in arrival order."""

    def __init__(self) -> None:
        self._pending: dict[bytes, ReadIndexStatus] = {}
        self._queue: list[bytes] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add_request(self, index: int, context: bytes) -> bool:
        """Track a new request; False if the same context is already pending."""
        if context in self._pending:
            return False
        self._pending[context] = ReadIndexStatus(index, context)
        self._queue.append(context)
        return True

    def recv_ack(self, node_id: int, context: bytes) -> set[int] | None:
        """Record `node_id` acked the heartbeat round of `context`; the ackers, or None."""
        status = self._pending.get(context)
        if status is None:
            return None
        status.acks.add(node_id)
        return status.acks

    def advance(self, context: bytes) -> list[ReadIndexStatus]:
        """Release every request up to and including `context` (a quorum acked it)."""
        if context not in self._pending:
            return []
        position = self._queue.index(context)
        released_ctx = self._queue[: position + 1]
        self._queue = self._queue[position + 1 :]
        return [self._pending.pop(c) for c in released_ctx]

    def last_pending_context(self) -> bytes:
        return self._queue[-1] if self._queue else b""

    def reset(self) -> None:
        self._pending.clear()
        self._queue.clear()
