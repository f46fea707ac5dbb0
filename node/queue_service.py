"""The queue service: turns API requests into Raft proposals and wakes long-polls on apply.

Why a separate piece between the HTTP API and the Raft driver: every write follows the same
path (stamp the leader clock, encode one command, propose, wait for apply, map the outcome
to HTTP), and long-polling receivers must wake on apply, not on sleeps. Keeping that in one
place keeps the handlers declarative.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from node.commands import (
    BATCH_ENVELOPE_BYTES,
    BATCHABLE_OPS,
    MAX_BATCH_COMMANDS,
    encode_batch,
    encode_command,
    encode_op,
)
from node.config import NodeConfig
from node.http import STATUS_BY_CODE, ApiError
from node.metrics import Metrics, NodeFigures, PortFigures
from node.quota import DiskQuota
from raft.core import Status
from raft.driver import NodeStopped, Overloaded
from raft.errors import EntryTooLarge, LeadershipLost, NotLeader, ProposalDropped
from raft.failpoints import failpoint
from raft.messages import ConfState, Member

log = structlog.get_logger("node.queue_service")

# Ops whose effects can make messages visible in arbitrary queues.
WAKE_ALL_OPS = frozenset({"tick", "redrive", "txn", "queue_put"})


@runtime_checkable
class RaftNodeApi(Protocol):
    """What the node's service and routes use of their Raft member (raft.driver.RaftNode).

    A contract rather than the class, as raft/storage.py does for storage: the node
    depends on these calls only, and tests hand the service a fake that has them.
    """

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> int:
        """The leader this node knows of; 0 while none is known."""
        ...

    @property
    def members(self) -> dict[int, Member]:
        """Every member of the configuration in force, voters and learners, by id."""
        ...

    @property
    def conf(self) -> ConfState:
        """The configuration in force."""
        ...

    def status(self) -> Status: ...

    def diagnostics(self) -> dict[str, Any]:
        """Driver, transport and snapshot counters, JSON-friendly (for operators)."""
        ...

    def propose_nowait(self, data: bytes) -> asyncio.Future[Any]:
        """Hand one entry to Raft; the future holds the state machine's result once it
        applied, or the reason it will not (NotLeader, Overloaded, ...)."""
        ...

    async def read_index(self, timeout_s: float | None = None) -> int:
        """Linearizable read barrier: returns once local state reflects every write
        acknowledged before the call."""
        ...

    def best_successor(self) -> int | None: ...

    def caught_up_learners(self) -> list[int]: ...

    async def transfer_leader(self, to: int, timeout_s: float | None = None) -> None: ...

    async def change_membership(
        self, change: Callable[[ConfState], ConfState], timeout_s: float = 10.0
    ) -> ConfState: ...

    async def snapshot_now(self) -> dict[str, Any]: ...


@runtime_checkable
class QueueStateReader(Protocol):
    """The queue state the service and the routes read (node.state_machine.QueueStateMachine);
    every write goes through Raft instead."""

    def queue_config(self, name: str) -> dict[str, Any] | None: ...

    def queue_info(self, name: str, now_ms: int) -> dict[str, Any] | None: ...

    def list_queues(self, now_ms: int) -> list[dict[str, Any]]: ...

    def next_deadline_ms(self) -> int | None: ...

    def applied_index(self) -> int: ...

    def state_hash(self) -> str: ...

    def applied_state(self) -> tuple[int, str]: ...

    # topics and consumer groups (node/topics_api.py, node/groups_api.py)

    def list_topics(self) -> list[dict[str, Any]]: ...

    def topic_info(self, name: str) -> dict[str, Any] | None: ...

    def topic_fetch(
        self, name: str, partition: int, offset: int, max_records: int, max_bytes: int
    ) -> dict[str, Any]: ...

    def group_info(self, name: str) -> dict[str, Any] | None: ...


class QueueService:
    """Proposes commands for the API and wakes long-polls when applies make work visible."""

    def __init__(
        self,
        config: NodeConfig,
        raft: RaftNodeApi,
        state_machine: QueueStateReader,
        metrics: Metrics,
        quota: DiskQuota | None = None,
    ) -> None:
        self.config = config
        self.raft = raft
        self.sm = state_machine
        self.metrics = metrics
        self._last_stamp_ms = 0
        self._queue_events: dict[str, asyncio.Event] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.quota = quota  # None: no disk quota (tests that build a QueueService by hand)
        self._quota_task: asyncio.Task[None] | None = None
        self.closing = False  # set on graceful shutdown: long-polls answer at once
        self.max_entry_bytes = config.limits.max_entry_bytes
        # A shared entry stays small (every replica decodes it in one go) and, with the
        # batch envelope, never exceeds max_entry_bytes.
        self.max_coalesced_bytes = min(1 << 20, self.max_entry_bytes - BATCH_ENVELOPE_BYTES)
        self._batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._batch_bytes = 0
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self.stats_batches = 0
        self.stats_batched_commands = 0
        self.stats_piggybacked_receives = 0  # long-poll receives carried by a send's entry
        self._receivers: dict[str, list[_Receiver]] = {}
        self._sends_in_flight: dict[str, int] = {}  # proposed here, not yet applied, by queue
        self.long_polls = 0  # receives waiting now (receive_with_next_send)
        self.long_polls_refused = 0
        # The client ports' limit figures for /metrics; the node sets it (node/server.py).
        self.port_figures: Callable[[], PortFigures] | None = None

    def figures(self) -> NodeFigures:
        """This node's Raft, batching, disk and queue figures for /metrics."""
        return NodeFigures(
            status=self.raft.status(),
            is_leader=self.raft.is_leader,
            coalesced_entries=self.stats_batches,
            coalesced_commands=self.stats_batched_commands,
            piggybacked_receives=self.stats_piggybacked_receives,
            queues=self.sm.list_queues(self.stamp_ms()),
            disk=self.quota.view() if self.quota is not None else None,
            long_polls=self.long_polls,
            long_polls_refused=self.long_polls_refused,
            ports=self.port_figures() if self.port_figures is not None else None,
        )

    # ------------------------------------------------------------ clock

    def stamp_ms(self) -> int:
        """The leader clock: wall time, never going backwards within this process."""
        now = int(time.time() * 1000)
        if now <= self._last_stamp_ms:
            now = self._last_stamp_ms
        self._last_stamp_ms = now
        return now

    # ------------------------------------------------------------ leadership

    def member_url(self, node_id: int) -> str | None:
        """A member's HTTP URL: from the configuration in force, else from --peers."""
        # a direct scan of the configuration: `members` builds two dicts, and a follower
        # asks this for every request it forwards
        for member in self.raft.conf.members:
            if member.id == node_id and member.url:
                return member.url
        peer = self.config.peers.get(node_id)
        return peer.http_url if peer is not None else None

    def leader_hint(self, leader_id: int | None) -> ApiError:
        url = self.member_url(leader_id or 0)
        if not leader_id or url is None or leader_id == self.config.node_id:
            return ApiError(
                503, "no_leader", "no leader is known; election in progress", {"Retry-After": "1"}
            )
        return ApiError(
            307,
            "not_leader",
            f"node {self.config.node_id} is not the leader; node {leader_id} is",
            leader_id=leader_id,
            leader_url=url,
        )

    def leader_http_url(self) -> str | None:
        """The leader's HTTP URL; "" when this node leads; None while no leader is known."""
        if self.raft.is_leader:
            return ""
        leader_id = self.raft.leader_id
        if not leader_id or leader_id == self.config.node_id:
            return None
        return self.member_url(leader_id)

    def require_leader(self) -> None:
        if not self.raft.is_leader:
            raise self.leader_hint(self.raft.leader_id)

    async def linearizable(self) -> None:
        """Wait until local state reflects every write acknowledged before this call
        (on the leader only: a follower answers the leader hint at once)."""
        self.require_leader()
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
        """Propose one command; answer its state-machine result or raise a mapped ApiError.

        Batchable ops (sends without a producer session, receives, acks, nacks, extends,
        transactions) wait in the coalescer instead: every such request that arrives before
        the next turn of the event loop shares one Raft entry (a `batch` command), which
        each replica applies as separate commands with one stamp. Results come back per
        request, so coalescing changes cost, not behaviour.

        Past the disk quota, an op that adds data is refused here (507), before it is
        encoded or joins a batch, so nothing is proposed for it.
        """
        self.check_quota(op, fields)
        batchable = op in BATCHABLE_OPS and not fields.get("producer")
        encoded = encode_op(op, **fields) if batchable else None
        queue = fields.get("queue") if op == "send" else None
        if queue is not None:
            self._sends_in_flight[queue] = self._sends_in_flight.get(queue, 0) + 1
        try:
            if encoded is not None and len(encoded) <= self.max_coalesced_bytes:
                self._note_written(len(encoded))
                joined = self._join_batch(encoded)
                if queue is not None:
                    self._piggyback_receivers(queue, len(fields["messages"]))
                result = await joined
            else:  # not batchable, or too big to share an entry
                data = encode_command(op, self.stamp_ms(), **fields)
                if len(data) > self.max_entry_bytes:
                    raise self.entry_too_large(len(data))
                self._note_written(len(data))
                result = await self._propose_data(data)
        finally:
            if queue is not None:
                left = self._sends_in_flight[queue] - 1
                if left:
                    self._sends_in_flight[queue] = left
                else:
                    del self._sends_in_flight[queue]
        failpoint("after_apply_before_response")
        _raise_refusal(result)
        self._wake_after(op, fields)
        return result

    def check_quota(self, op: str, fields: dict[str, Any]) -> None:
        """507 if the disk quota is reached and `op` adds data (node/quota.py).

        Only the leader checks: a follower's proposal fails with not_leader anyway and is
        forwarded, and the leader's check is the one that guards what gets replicated.
        """
        if self.quota is not None and self.raft.is_leader:
            self.quota.check(op, fields, self._queue_exists)

    def _note_written(self, n_bytes: int) -> None:
        if self.quota is not None:
            self.quota.note_written(n_bytes)

    def _queue_exists(self, name: str) -> bool:
        return self.sm.queue_config(name) is not None

    def entry_too_large(self, size_bytes: int) -> ApiError:
        """413 for a request whose command would exceed one Raft entry; nothing was proposed."""
        return ApiError(
            413,
            "too_large",
            f"this request encodes to a {size_bytes}-byte command; one write may be at most "
            f"{self.max_entry_bytes} bytes (max_entry_bytes): send fewer or smaller messages "
            "per request",
            size_bytes=size_bytes,
            limit_bytes=self.max_entry_bytes,
        )

    def _start_proposal(self, data: bytes) -> asyncio.Future[Any]:
        """Hand one entry to Raft now; refusals (not leader, overloaded) land in the future."""
        try:
            return self.raft.propose_nowait(data)
        except Exception as exc:
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
            return fut

    async def _propose_data(self, data: bytes) -> Any:
        return await self._proposal_outcome(self._start_proposal(data))

    async def _proposal_outcome(self, proposal: asyncio.Future[Any]) -> Any:
        """Wait for an entry to apply; map Raft outcomes to the API's errors."""
        try:
            async with asyncio.timeout(self.config.propose_timeout_s):
                return await proposal
        except NotLeader as exc:
            raise self.leader_hint(exc.leader_id) from None
        except EntryTooLarge as exc:
            raise self.entry_too_large(exc.size_bytes) from None
        except (ProposalDropped, LeadershipLost):
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

    # ------------------------------------------------------------ coalescing

    def _join_batch(
        self, encoded: bytes, fut: asyncio.Future[Any] | None = None
    ) -> asyncio.Future[Any]:
        """Add one encoded command to the entry being gathered; its result lands in `fut`."""
        loop = asyncio.get_running_loop()
        if fut is None:
            fut = loop.create_future()
        if self._batch_bytes + len(encoded) > self.max_coalesced_bytes:
            self._flush_batch()
        self._batch.append((encoded, fut))
        self._batch_bytes += len(encoded)
        if len(self._batch) == 1:
            loop.call_soon(self._flush_batch)
        elif len(self._batch) >= MAX_BATCH_COMMANDS:
            self._flush_batch()
        return fut

    def _flush_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        batch = [(encoded, fut) for encoded, fut in batch if not fut.cancelled()]
        if not batch:
            return
        proposal = self._start_proposal(
            encode_batch(self.stamp_ms(), [encoded for encoded, _ in batch])
        )
        self.stats_batches += 1
        self.stats_batched_commands += len(batch)
        task = asyncio.get_running_loop().create_task(self._settle_batch(proposal, batch))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _settle_batch(
        self, proposal: asyncio.Future[Any], batch: list[tuple[bytes, asyncio.Future[Any]]]
    ) -> None:
        try:
            result = await self._proposal_outcome(proposal)
        except Exception as exc:  # ApiError mostly; every waiter gets the same outcome
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        if isinstance(result, dict) and isinstance(result.get("results"), list):
            results = result["results"]
        else:  # the whole batch was refused (cannot happen for batches we build)
            results = [result] * len(batch)
        for (_, fut), one in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(one)

    def propose_detached(self, op: str, **fields: Any) -> None:
        """At-most-once: propose without waiting; the caller answers once this returns.

        The quota is checked first, so a refused write is answered 507, not 202 and lost.
        """
        self.check_quota(op, fields)
        task = asyncio.get_running_loop().create_task(self.propose(op, **fields))
        task.add_done_callback(_log_detached_failure)

    # ------------------------------------------------------------ long-poll

    def send_in_flight(self, queue: str) -> bool:
        """A send to `queue` was proposed here and has not applied yet.

        Why a long-poll asks: a receive that finds the queue empty waits for the next send
        to carry it in its own entry. A send already on its way will not (it left without
        this receive), and waiting for it to apply before proposing costs a whole Raft
        round more; proposed now, the receive follows that send in the log, one entry
        behind it, and leases its message in the same pipeline.
        """
        return queue in self._sends_in_flight

    async def receive_with_next_send(
        self, queue: str, fields: dict[str, Any], event: asyncio.Event, timeout_s: float
    ) -> dict[str, Any] | None:
        """Wait for a send to `queue` and receive in the same Raft entry as that send.

        Why: a long-poll woken by a send used to propose its own receive after the send
        applied, so a message reached a waiting consumer after two commits. Here the
        waiting receive is registered, and the next send to the queue takes its receive
        command into the entry it joins, right after itself: every replica applies the
        send and then the receive, with the entry's stamp, so the consumer gets the message
        with the sender's commit (one round, not two) and determinism is untouched.

        Returns the receive's result (maybe no messages: another receiver took them), or
        None when `event` fired first (a nack, a lease or delay ending, a leader change) or
        `timeout_s` passed without a send: the caller then proposes a receive of its own.
        Once a send took the receive into its entry, the outcome is awaited even if the
        event fires meanwhile: the receive leases messages and only this caller can hand
        them out.
        """
        with self.long_poll():
            return await self._wait_with_next_send(queue, fields, event, timeout_s)

    @contextlib.contextmanager
    def long_poll(self) -> Iterator[None]:
        """Count one more waiting long-poll (a receive, a topic fetch) while inside, or
        refuse it (503, Retry-After) past the cap.

        Why a cap: every waiting receive holds a connection, a task and a place in the
        wake-ups of its queue, and a leader change wakes them all at once; a client that
        opens receives without end must not make that unbounded. The refusal comes before
        this receive waits, after a receive that found nothing: nothing was leased.
        """
        limit = self.config.limits.max_long_polls
        if self.long_polls >= limit:
            self.long_polls_refused += 1
            raise ApiError(
                503,
                "too_many_long_polls",
                f"{limit} receives are already waiting on this node; nothing was received: "
                "retry later, or receive without wait_s",
                {"Retry-After": "1"},
                limit=limit,
            )
        self.long_polls += 1
        try:
            yield
        finally:
            self.long_polls -= 1

    async def _wait_with_next_send(
        self, queue: str, fields: dict[str, Any], event: asyncio.Event, timeout_s: float
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        receiver = _Receiver(
            encode_op("receive", queue=queue, **fields),
            loop.create_future(),
            int(fields.get("max", 1)),
        )
        self._receivers.setdefault(queue, []).append(receiver)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait(
                (receiver.future, woken), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            if not receiver.taken:
                self._drop_receiver(queue, receiver)
                receiver.future.cancel()
        if not receiver.taken:
            return None
        result = await receiver.future
        _raise_refusal(result)
        return result

    def _piggyback_receivers(self, queue: str, messages: int) -> None:
        """Put the receives waiting on `queue` into the entry a send of `messages` just
        joined, first come first served, until their `max` covers the messages."""
        waiting = self._receivers.get(queue)
        wanted = messages
        while waiting and wanted > 0:
            receiver = waiting.pop(0)
            receiver.taken = True
            self.stats_piggybacked_receives += 1
            wanted -= receiver.max_messages
            self._join_batch(receiver.encoded, receiver.future)
        if not waiting:
            self._receivers.pop(queue, None)

    def _drop_receiver(self, queue: str, receiver: _Receiver) -> None:
        waiting = self._receivers.get(queue)
        if waiting is not None and receiver in waiting:
            waiting.remove(receiver)
            if not waiting:
                del self._receivers[queue]

    def queue_event(self, queue: str) -> asyncio.Event:
        ev = self._queue_events.get(queue)
        if ev is None:
            ev = self._queue_events[queue] = asyncio.Event()
        return ev

    def wake(self, key: str) -> None:
        """Wake the long-polls waiting on `key`: a queue name, or another route's own key
        (topic fetches wait on keys no queue name can have: node/topics_api.py)."""
        ev = self._queue_events.pop(key, None)
        if ev is not None:
            ev.set()

    def _wake_after(self, op: str, fields: dict[str, Any]) -> None:
        if op in WAKE_ALL_OPS:
            for q in list(self._queue_events):
                self.wake(q)
        elif op in ("send", "nack") and "queue" in fields:
            self.wake(fields["queue"])

    def wake_all(self) -> None:
        """Leadership changed: let every long-poll retry (and find out it must redirect)."""
        for q in list(self._queue_events):
            self.wake(q)

    # ------------------------------------------------------------ deadlines

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.create_task(self._tick_loop())
        if self.quota is not None:
            self._quota_task = loop.create_task(self.quota.run())

    async def stop(self) -> None:
        for task in (self._ticker, self._quota_task):
            if task is not None:
                task.cancel()
                try:
                    await task
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
                log.exception("queue_service.tick_failed")
                await asyncio.sleep(1.0)


@dataclass(eq=False, slots=True)
class _Receiver:
    """A long-poll receive waiting for the next send to its queue (see
    `QueueService.receive_with_next_send`)."""

    encoded: bytes
    future: asyncio.Future[Any]
    max_messages: int
    taken: bool = False  # a send's entry carries it: its outcome must be awaited


def _raise_refusal(result: Any) -> None:
    """A state-machine refusal (`{"error": {...}}`) as the API error it maps to."""
    if isinstance(result, dict) and "error" in result:
        err = dict(result["error"])
        code = err.pop("code", "bad_request")
        message = err.pop("message", code)
        raise ApiError(STATUS_BY_CODE.get(code, 400), code, message, **err)


def _log_detached_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("queue_service.unacknowledged_write_failed", error=str(task.exception()))
