"""Queue helpers shared by integration tests."""

from __future__ import annotations

from typing import Any


async def drain(queue: Any, *, empty_polls: int = 3, wait_s: float = 0.5) -> list[str]:
    """Receive+ack until `empty_polls` consecutive empty polls; bodies in receive order."""
    bodies: list[str] = []
    empties = 0
    while empties < empty_polls:
        batch = await queue.receive(max=100, wait_s=wait_s)
        if not batch:
            empties += 1
            continue
        empties = 0
        bodies.extend(m.body for m in batch)
        await queue.acknowledge_many(batch)
    return bodies
