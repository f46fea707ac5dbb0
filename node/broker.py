"""The glue between the HTTP API and the Raft driver on one node.

Why a separate piece: every write follows the same path (stamp the leader clock, encode one
command, propose, wait for apply, map the outcome to HTTP), and long-polling receivers must
wake on apply, not on sleeps. Keeping that in one place keeps the handlers declarative.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from node.commands import encode_command
from node.config import NodeConfig
from node.http import STATUS_BY_CODE, ApiError
from raft.driver import NodeStopped, Overloaded
from raft.errors import NotLeader, ProposalDropped
from raft.failpoints import failpoint

log = structlog.get_logger("node.broker")

# Ops whose effects can make messages visible in arbitrary queues.
WAKE_ALL_OPS = frozenset({"tick", "redrive", "txn", "queue_put"})


class Broker:
    """Proposes commands for the API and wakes long-polls when applies make work visible."""

    def __init__(self, config: NodeConfig, raft: Any, state_machine: Any, metrics: Any) -> None:
        self.config = config
        self.raft = raft
        self.sm = state_machine
        self.metrics = metrics
        self._last_stamp_ms = 0
        self._queue_events: dict[str, asyncio.Event] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.closing = False  # set on graceful shutdown: long-polls answer at once

    # ------------------------------------------------------------ clock

    def stamp_ms(self) -> int:
        """The leader clock: wall time, never going backwards within this process."""
        now = int(time.time() * 1000)
        if now <= self._last_stamp_ms:
            now = self._last_stamp_ms
        self._last_stamp_ms = now
        return now

    # ------------------------------------------------------------ leadership

    def leader_hint(self, leader_id: int | None) -> ApiError:
        peer = self.config.peers.get(leader_id or 0)
        if not leader_id or peer is None or leader_id == self.config.node_id:
            return ApiError(
                503, "no_leader", "no leader is known; election in progress", {"Retry-After": "1"}
            )
        return ApiError(
            307,
            "not_leader",
            f"node {self.config.node_id} is not the leader; node {leader_id} is",
            leader_id=leader_id,
            leader_url=peer.http_url,
        )

    def require_leader(self) -> None:
        if not self.raft.is_leader:
            raise self.leader_hint(self.raft.leader_id)

    async def linearizable(self) -> None:
        """Wait until local state reflects every write acknowledged before this call."""
        try:
            await asyncio.wait_for(self.raft.read_index(), self.config.propose_timeout_s)
        except NotLeader as exc:
            raise self.leader_hint(exc.leader_id) from None
        except ProposalDropped:
            raise ApiError(503, "leader_changed", "leadership changed during the read") from None
        except (TimeoutError, NodeStopped):
            raise ApiError(504, "timeout", "the read could not be confirmed in time") from None

    # ------------------------------------------------------------ writes

    async def propose(self, op: str, **fields: Any) -> dict[str, Any]:
        """Propose one command; answer its state-machine result or raise a mapped ApiError."""
        data = encode_command(op, self.stamp_ms(), **fields)
        try:
            result = await self.raft.propose(data, timeout_s=self.config.propose_timeout_s)
        except NotLeader as exc:
            raise self.leader_hint(exc.leader_id) from None
        except ProposalDropped:
            raise ApiError(
                503,
                "leader_changed",
                "leadership changed before the write committed; its outcome is unknown: "
                "retry with the same dedup_id",
                {"Retry-After": "1"},
            ) from None
        except TimeoutError:
            raise ApiError(
                504, "timeout", "the write did not commit in time; its outcome is unknown"
            ) from None
        except NodeStopped:
            raise ApiError(
                503, "shutting_down", "this node is stopping; the write's outcome is unknown"
            ) from None
        except Overloaded as exc:
            raise ApiError(
                503,
                "overloaded",
                f"{exc.waiting} writes are waiting to commit; nothing was proposed: retry later",
                {"Retry-After": "1"},
            ) from None
        failpoint("after_apply_before_response")
        if isinstance(result, dict) and "error" in result:
            err = dict(result["error"])
            code = err.pop("code", "bad_request")
            message = err.pop("message", code)
            raise ApiError(STATUS_BY_CODE.get(code, 400), code, message, **err)
        self._wake_after(op, fields)
        return result

    def propose_detached(self, op: str, **fields: Any) -> None:
        """At-most-once: propose without waiting; the caller already answered."""
        task = asyncio.get_running_loop().create_task(self.propose(op, **fields))
        task.add_done_callback(_log_detached_failure)

    # ------------------------------------------------------------ long-poll

    def queue_event(self, queue: str) -> asyncio.Event:
        ev = self._queue_events.get(queue)
        if ev is None:
            ev = self._queue_events[queue] = asyncio.Event()
        return ev

    def _wake(self, queue: str) -> None:
        ev = self._queue_events.pop(queue, None)
        if ev is not None:
            ev.set()

    def _wake_after(self, op: str, fields: dict[str, Any]) -> None:
        if op in WAKE_ALL_OPS:
            for q in list(self._queue_events):
                self._wake(q)
        elif op in ("send", "nack") and "queue" in fields:
            self._wake(fields["queue"])

    def wake_all(self) -> None:
        """Leadership changed: let every long-poll retry (and find out it must redirect)."""
        for q in list(self._queue_events):
            self._wake(q)

    # ------------------------------------------------------------ deadlines

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        self.wake_all()

    async def _tick_loop(self) -> None:
        """On the leader, propose a `tick` when a lease, delay or retention deadline is due.

        Receives release due work by themselves (the state machine compares deadlines with
        each command's stamp); the tick keeps stats honest and wakes long-polls for
        messages that became visible with nobody sending.
        """
        while True:
            await asyncio.sleep(0.1)
            try:
                if not self.raft.is_leader:
                    continue
                due = self.sm.next_deadline_ms()
                if due is not None and due <= self.stamp_ms():
                    await self.propose("tick")
            except ApiError:
                continue
            except Exception:
                log.exception("broker.tick_failed")
                await asyncio.sleep(1.0)


def _log_detached_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("broker.unacknowledged_write_failed", error=str(task.exception()))
