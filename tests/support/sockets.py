"""Socket helpers for tests that play a misbehaving client on a real port."""

from __future__ import annotations

import asyncio
import contextlib


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """Whether the other side closes the connection within `timeout_s` (reading, and
    throwing away, whatever it still sends); a reset counts as closed, a timeout raises."""
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), timeout_s) == b""
    return True
