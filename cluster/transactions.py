"""Exactly-once processing on the client side: transactions and the exactly-once consumer.

A transaction gathers acks of received messages and sends to queues and commits them as
ONE Raft entry, all or nothing. Its `txn_id` is what makes a retried commit safe: a commit
whose outcome was unknown (timeout, reset, leader change) is retried with the same id, and
the cluster answers the first result instead of applying it twice.

`consume_exactly_once` derives the txn id from the delivery it processes (the receipt, which
names the message id and this lease), so:
- a retried commit of the same delivery is recognised (same id → first result), and
- a zombie worker whose lease expired (the message went to someone else) commits with a
  stale receipt and gets 409: its output is never produced.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from cluster.errors import Conflict
from cluster.message import Message, OutgoingMessage

if TYPE_CHECKING:
    from cluster.client import AsyncClient, AsyncQueue

log = structlog.get_logger("raftq.transactions")


class TransactionAborted(Conflict):
    """The cluster refused the commit as a whole (a stale receipt): nothing was applied."""


@dataclass(slots=True)
class TxnResult:
    txn_id: str
    duplicate: bool
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


class AsyncTransaction:
    """Collect `acknowledge` and `send` calls, then `commit()` them atomically.

    async with client.transaction() as txn:
        txn.acknowledge(msg)
        txn.send("out", {"result": 42})
    # committed on a clean exit; nothing is sent if the block raises
    """

    def __init__(self, client: AsyncClient, txn_id: str | None = None) -> None:
        self.client = client
        self.txn_id = txn_id or uuid.uuid4().hex
        self._acks: list[dict[str, str]] = []
        self._sends: dict[str, list[dict[str, Any]]] = {}
        self.result: TxnResult | None = None

    def __repr__(self) -> str:
        n_sends = sum(len(v) for v in self._sends.values())
        return f"AsyncTransaction(txn_id={self.txn_id!r}, acks={len(self._acks)}, sends={n_sends})"

    def acknowledge(self, message: Message, queue: str | None = None) -> None:
        """Ack `message` as part of the transaction (its receipt must still be valid)."""
        name = queue or message.queue
        if not name:
            raise ValueError("the message does not say its queue: pass queue=")
        self._acks.append({"queue": name, "receipt": message.receipt})

    def send(self, queue: str, body: Any, **options: Any) -> None:
        """Send `body` to `queue` when the transaction commits (options as in `queue.send`)."""
        wire = OutgoingMessage(body, **options).to_wire()
        wire.pop("dedup_id", None)  # the txn id already makes the commit idempotent
        self._sends.setdefault(queue, []).append(wire)

    async def commit(self, timeout_s: float | None = None) -> TxnResult:
        if self.result is not None:
            return self.result
        body = {
            "txn_id": self.txn_id,
            "ack": self._acks,
            "send": [{"queue": q, "messages": m} for q, m in self._sends.items()],
        }
        try:
            answer = await self.client.request(
                "POST", "/v1/transactions", json_body=body, timeout_s=timeout_s
            )
        except Conflict as exc:
            raise TransactionAborted(
                exc.message, code=exc.code, status=exc.status, body=exc.body
            ) from exc
        answer = answer or {}
        self.result = TxnResult(self.txn_id, bool(answer.get("duplicate")), answer)
        return self.result

    async def __aenter__(self) -> AsyncTransaction:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            await self.commit()


Output = str | Callable[[Message, Any], Iterable[tuple[str, Any]]] | None


def _outputs(output: Output, message: Message, result: Any) -> list[tuple[str, Any]]:
    if result is None:
        return []
    if callable(output):
        return list(output(message, result))
    if output is None:
        raise ValueError("handler returned a value but no output queue was given")
    results = result if isinstance(result, list) else [result]
    return [(output, r) for r in results]


async def consume_exactly_once(
    queue: AsyncQueue,
    handler: Callable[[Message], Awaitable[Any] | Any],
    *,
    output: Output = None,
    max_messages: int | None = None,
    batch: int = 10,
    wait_s: float = 5.0,
    visibility_timeout_s: float | None = None,
    stop_event: asyncio.Event | None = None,
) -> int:
    """Receive from `queue`, run `handler`, and commit (ack input + send outputs) atomically.

    `handler(msg)` returns the output body (or a list of bodies) for the `output` queue,
    or None to only ack. `output` may instead be a function `(msg, result) -> [(queue,
    body), ...]`. Returns the number of messages committed. A delivery whose commit is
    refused (its lease went stale) is skipped: another delivery of it will be processed.
    """
    done = 0
    stop = stop_event or asyncio.Event()
    client = queue.client
    while not stop.is_set() and (max_messages is None or done < max_messages):
        messages = await queue.receive(
            max=batch, wait_s=wait_s, visibility_timeout_s=visibility_timeout_s
        )
        for msg in messages:
            result = handler(msg)
            if asyncio.iscoroutine(result):
                result = await result
            txn = AsyncTransaction(client, txn_id=f"eo:{queue.name}:{msg.receipt}")
            txn.acknowledge(msg)
            for out_queue, body in _outputs(output, msg, result):
                txn.send(out_queue, body)
            try:
                await txn.commit()
            except TransactionAborted:
                log.info("exactly_once.stale_delivery", queue=queue.name, id=msg.id)
                continue
            done += 1
    return done
