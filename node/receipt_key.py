"""The leader gives the cluster its receipt key, once (node/state/messages.set_receipt_key).

Why the leader and why at election: the key must exist in the log before the first entry
that hands out a receipt, so that every receipt is tagged with it. Proposed from the
role-change callback, before this leader wakes the requests waiting for a leader, it is
this term's first proposal (after the core's no-op): every receive this leader proposes
comes after it in the log. A leader elected in a cluster that already has a key proposes
nothing; two leaders that both propose (one deposed before its entry applied) are fine:
the first applied wins everywhere, the second changes nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from node.commands import encode_command
from node.state.messages import RECEIPT_KEY_BYTES

log = structlog.get_logger("node.receipt_key")


class _Proposer(Protocol):
    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]: ...


class _KeyHolder(Protocol):
    def has_receipt_key(self) -> bool: ...


def propose_receipt_key(raft: _Proposer, sm: _KeyHolder, stamp_ms: Callable[[], int]) -> None:
    """On a new leader: propose a random receipt key unless the state already has one.
    Never raises: a failed proposal (lost leadership) is retried by the next leader."""
    if sm.has_receipt_key():
        return
    data = encode_command("receipt_key", stamp_ms(), key=os.urandom(RECEIPT_KEY_BYTES))
    try:
        fut = raft.propose_nowait(data)
    except Exception as exc:  # not leader any more, stopping: the next leader proposes
        log.info("node.receipt_key_not_proposed", error=repr(exc))
        return

    def done(f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            return
        exc = f.exception()
        if exc is not None:
            log.info("node.receipt_key_not_applied", error=repr(exc))
        else:
            log.info("node.receipt_key", outcome=f.result())

    fut.add_done_callback(done)
