"""Exactly-once processing on the client side: transactions and the exactly-once consumer.

A transaction gathers acks of received messages and sends to queues and commits them as
ONE Raft entry, all or nothing. Its `txn_id` is what makes a retried commit safe: a commit
whose outcome was unknown (timeout, reset, leader change) is retried with the same id, and
the cluster answers the first result instead of applying it twice.

`consume_exactly_once` (also `queue.consume_exactly_once(...)`) is the consumer loop with a
transaction as its completion step. It derives the txn id from the delivery it processes
(the receipt, which names the message id and this lease), so:
- a retried commit of the same delivery is recognised (same id → first result), and
- a zombie worker whose lease expired (the message went to someone else) commits with a
  stale receipt and gets 409: its output is never produced.

Handlers that finish while another commit of the loop is on its way are committed together
in the next one (`cluster.grouping`): ONE transaction holding each delivery's ack and its
outputs, all or nothing, with an id derived from all their receipts (`group_txn_id`). If
one of them went stale the cluster refuses the whole group (409, nothing applied), and the
group is retried in halves down to one delivery per transaction: only the stale delivery
fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack

import structlog

from cluster.consumer import ConsumedQueue, Consumer, ConsumerStats
from cluster.discovery import CallOptions
from cluster.errors import BadRequest, Conflict, TooLarge
from cluster.grouping import GroupedCalls
from cluster.message import Message, OutgoingMessage, new_dedup_id
from cluster.topics import wire_record

log = structlog.get_logger("raftq.transactions")


class Requester(Protocol):
    """What a transaction needs of a client: `request`, as `cluster.client.AsyncClient` has.

    Declared here so that this module need not import the client, which imports it.
    """

    async def request(self, method: str, path: str, **options: Unpack[CallOptions]) -> Any: ...


class ExactlyOnceQueue(ConsumedQueue, Protocol):
    """What the exactly-once consumer needs of a queue: a consumed queue, its client, and
    `_forget` to drop the receipts it remembers for messages a transaction acked."""

    @property
    def client(self) -> Requester: ...

    def _forget(self, refs: Iterable[Message]) -> None: ...


class TransactionAborted(Conflict):
    """The cluster refused the commit as a whole (a stale receipt or group generation):
    nothing was applied."""


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

    def __init__(self, client: Requester, txn_id: str | None = None) -> None:
        self.client = client
        self.txn_id = txn_id or new_dedup_id()  # time-ordered, like dedup ids
        self._acks: list[dict[str, str]] = []
        self._sends: dict[str, list[dict[str, Any]]] = {}
        self._publishes: dict[str, list[dict[str, Any]]] = {}
        self._offsets: list[dict[str, Any]] = []
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

    def publish(self, topic: str, value: Any, **options: Any) -> None:
        """Append `value` to `topic` when the transaction commits (options as in
        `topic.publish`: key, headers, partition)."""
        self._publishes.setdefault(topic, []).append(wire_record(value, **options))

    def commit_offset(
        self,
        group: str,
        generation: int,
        topic: str,
        partition: int,
        offset: int,
        member_id: str | None = None,
    ) -> None:
        """Commit a consumer group's offset with the transaction: refused whole (409) if the
        group's generation moved on (or `member_id` no longer owns the partition)."""
        item: dict[str, Any] = {
            "group": group,
            "generation": generation,
            "topic": topic,
            "partition": partition,
            "offset": offset,
        }
        if member_id is not None:
            item["member_id"] = member_id
        self._offsets.append(item)

    async def commit(self, timeout_s: float | None = None) -> TxnResult:
        if self.result is not None:
            return self.result
        body: dict[str, Any] = {
            "txn_id": self.txn_id,
            "ack": self._acks,
            "send": [{"queue": q, "messages": m} for q, m in self._sends.items()],
        }
        if self._publishes:
            body["publish"] = [{"topic": t, "records": r} for t, r in self._publishes.items()]
        if self._offsets:
            body["commit_offsets"] = self._offsets
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


#: Deliveries committed together at most: each is an ack plus its outputs, and a
#: transaction holds 1,000 items by default (a group refused as too large is split).
DELIVERIES_PER_TXN = 100


def delivery_txn_id(queue: str, message: Message) -> str:
    """The txn id of one delivery: stable across retries of its commit, new per delivery."""
    return f"eo:{queue}:{message.receipt}"


def group_txn_id(queue: str, messages: Sequence[Message]) -> str:
    """The txn id of deliveries committed together: stable across retries of that commit.

    Receipts name one delivery each, so a group of new deliveries never reuses an id."""
    receipts = "\n".join(m.receipt for m in messages)
    return f"eo:{queue}:group:{hashlib.sha256(receipts.encode()).hexdigest()[:40]}"


def exactly_once_consumer(
    queue: ExactlyOnceQueue,
    handler: Callable[[Message], Awaitable[Any] | Any],
    *,
    output: Output = None,
    **options: Any,
) -> Consumer:
    """A `Consumer` whose completion step is a transaction instead of an ack.

    `handler(msg)` returns the output body (or a list of bodies) for the `output` queue, or
    None to only ack; `output` may instead be a function `(msg, result) -> [(queue, body),
    ...]`. The ack of the input and every output commit as ONE transaction whose id comes
    from the delivery (`delivery_txn_id`). Everything else is the ordinary consumer loop:
    `concurrency`, leases extended while the handler runs (`extend_leases=False` to
    disable), failures nacked with backoff, clean stop.
    """
    client = queue.client
    Delivery = tuple[Message, list[tuple[str, Any]]]  # a message and its outputs

    async def commit(deliveries: Sequence[Delivery]) -> list[bool]:
        msgs = [msg for msg, _outs in deliveries]
        txn_id = (
            delivery_txn_id(queue.name, msgs[0])
            if len(msgs) == 1
            else group_txn_id(queue.name, msgs)
        )
        txn = AsyncTransaction(client, txn_id=txn_id)
        for msg, outs in deliveries:
            txn.acknowledge(msg)
            for out_queue, body in outs:
                txn.send(out_queue, body)
        await txn.commit()
        return [True] * len(deliveries)

    # A stale receipt or an item the cluster refuses spoils only its own delivery.
    commits: GroupedCalls[Delivery, bool] = GroupedCalls(
        commit,
        max_per_request=DELIVERIES_PER_TXN,
        split_on=(TransactionAborted, BadRequest, TooLarge),
    )

    async def complete(msg: Message, result: Any) -> bool:
        outs = _outputs(output, msg, result)
        try:
            return await commits.call((msg, outs))
        except TransactionAborted:
            log.info("exactly_once.stale_delivery", queue=queue.name, message_id=msg.id)
            return False
        finally:
            queue._forget([msg])

    return Consumer(queue, handler, complete=complete, **options)


async def consume_exactly_once(
    queue: ExactlyOnceQueue,
    handler: Callable[[Message], Awaitable[Any] | Any],
    *,
    output: Output = None,
    **options: Any,
) -> ConsumerStats:
    """Run `exactly_once_consumer(...)` until stopped; returns its stats.

    Options are the consumer's: `concurrency`, `visibility_timeout_s`, `poll_wait_s`,
    `retry_base_delay_s`, `retry_max_delay_s`, `stop_event`, `handle_signals`,
    `extend_leases`.
    """
    return await exactly_once_consumer(queue, handler, output=output, **options).run()


class Transaction:
    """The blocking twin of `AsyncTransaction` (from `Client.transaction()`).

    with client.transaction() as txn:
        txn.acknowledge(msg)
        txn.send("out", {"result": 42})
    """

    def __init__(self, inner: AsyncTransaction, run: Callable[[Any], Any]) -> None:
        self._inner = inner
        self._run = run

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncTransaction", "Transaction", 1)

    @property
    def txn_id(self) -> str:
        return self._inner.txn_id

    @property
    def result(self) -> TxnResult | None:
        return self._inner.result

    def acknowledge(self, message: Message, queue: str | None = None) -> None:
        self._inner.acknowledge(message, queue)

    def send(self, queue: str, body: Any, **options: Any) -> None:
        self._inner.send(queue, body, **options)

    def publish(self, topic: str, value: Any, **options: Any) -> None:
        self._inner.publish(topic, value, **options)

    def commit_offset(
        self,
        group: str,
        generation: int,
        topic: str,
        partition: int,
        offset: int,
        member_id: str | None = None,
    ) -> None:
        self._inner.commit_offset(group, generation, topic, partition, offset, member_id)

    def commit(self, timeout_s: float | None = None) -> TxnResult:
        return self._run(self._inner.commit(timeout_s))

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.commit()
