"""The asyncio client: `AsyncClient` (cluster-level calls) and `AsyncQueue` (one queue).

    async with AsyncClient() as client:            # servers from $RAFTQ_SERVERS or defaults
        q = client.queue("tasks")
        await q.create(visibility_timeout_s=30)
        await q.send({"image_id": 123})            # dict -> JSON body, returns the id
        msg = await q.receive(wait_s=5)            # Message or None
        if msg:
            process(msg.data["image_id"])
            await q.acknowledge(msg)

Receive rule: without `max` you get one `Message` or `None`; with `max=N` (any N, even
1) you get a `list[Message]`, possibly empty.

Every call has one deadline (`timeout_s`, default 30 s) for leader discovery and retries
(see `cluster.discovery`). Sends carry a generated `dedup_id` per message, reused by every
retry, so a send that fails ambiguously (timeout, reset, failover) never enqueues twice.

Producer batching: `q.send()` calls made from many tasks at once leave together, one
request per group (Kafka's `linger.ms`/`batch.size`, see `cluster.grouping`). A lone send
leaves at once; while `max_sends_in_flight` send requests of a queue are on their way,
new sends wait and then share the next request (up to `send_batch_size` messages, 1 MiB),
or also up to `linger_ms` for company when that is set. Each caller gets its own id or
error; buffered sends are bounded by `max_buffered_send_bytes` (callers wait beyond it).
Concurrent sends have no order among themselves; a send awaited before the next is
ordered before it, as always.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Unpack, overload
from urllib.parse import quote

import aiohttp

from cluster import rpc, transactions
from cluster.consumer import Consumer, ConsumerStats, Handler
from cluster.discovery import CallOptions, LeaderRouter, resolve_servers, resolve_token
from cluster.errors import BadRequest, RaftqError, TooLarge
from cluster.exchanges import AsyncExchange
from cluster.grouping import GroupedCalls
from cluster.message import AckResult, Message, OutgoingMessage, SendResult
from cluster.tls import client_ssl_context
from cluster.topics import AsyncTopic, GroupSubscriber, RecordHandler, SubscriberStats

#: The API's long-poll limit: a longer `wait_s` is served as several polls.
MAX_POLL_WAIT_S = 20.0
#: Grouped single acks per request at most (the API's default batch limit is 1,000).
ACKS_PER_REQUEST = 500
#: Grouped ack requests on their way at once per queue handle: while one commits, the
#: next is already in the leader's next Raft entry (one at a time, a drain of 100,000
#: messages spent most of its time waiting for acks: 8.9-10.3k msgs/s against 12.2-13.3k
#: with two, alternating runs on one cluster).
ACKS_IN_FLIGHT = 2
#: Requests of grouped sends carry at most this many bytes of message bodies and fields
#: (well under a node's 16 MiB body limit, and its 1 MiB coalescing unit).
SEND_REQUEST_BYTES = 1 << 20
#: Fixed per-message overhead in the size estimate (dedup id, field names, framing).
SEND_MESSAGE_OVERHEAD = 64
#: How many message-id -> receipt pairs a queue handle remembers, so that
#: `acknowledge(msg.id)` works for messages this handle received.
RECEIPT_MEMORY = 10_000

MessageRef = Message | str


class AsyncQueue:
    """Handle on one queue. Cheap; get it from `AsyncClient.queue(name)`."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("queue name must be a non-empty string")
        self.client = client
        self.name = name
        self._path = f"/v1/queues/{quote(name, safe='')}"
        self._receipts: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._consumers: set[Consumer] = set()
        self._acks: GroupedCalls[tuple[MessageRef, str], bool] = GroupedCalls(
            self._ack_group,
            max_per_request=ACKS_PER_REQUEST,
            split_on=(BadRequest, TooLarge),
            max_in_flight=ACKS_IN_FLIGHT,
        )
        producer = client.producer
        self._sends: GroupedCalls[dict[str, Any], SendResult] = GroupedCalls(
            self._send_group,
            max_per_request=producer.batch_size,
            split_on=(BadRequest, TooLarge),
            max_in_flight=producer.max_in_flight,
            linger_s=producer.linger_ms / 1000.0,
            size_of=wire_size,
            max_request_bytes=SEND_REQUEST_BYTES,
            max_buffered_bytes=producer.max_buffered_bytes,
        )

    def __repr__(self) -> str:
        return f"AsyncQueue(name={self.name!r})"

    async def _call(self, method: str, suffix: str = "", body: Any = None, **kw: Any) -> Any:
        return await self.client.request(method, self._path + suffix, json_body=body, **kw)

    # --- admin ---------------------------------------------------------------------------

    async def create(self, **config: Any) -> dict[str, Any]:
        """Create the queue or update its config (fields as in API.md: `fifo`,
        `visibility_timeout_s`, `max_receives`, `dead_letter_queue`, `retention_s`,
        `delay_s`, `dedup_window_s`, `max_message_bytes`); returns the stored config."""
        return await self._call("PUT", body=config) or {}

    async def info(self) -> dict[str, Any]:
        """Config and stats: depth, in_flight, delayed, sent/acked/dead-lettered totals."""
        return await self._call("GET") or {}

    async def delete(self) -> None:
        """Delete the queue and every message in it."""
        await self._call("DELETE")

    async def purge(self) -> dict[str, Any]:
        """Drop every message, keep the queue and its config."""
        return await self._call("POST", "/purge", {}) or {}

    async def redrive(self) -> dict[str, Any]:
        """Move this dead-letter queue's messages back to their source queues."""
        return await self._call("POST", "/redrive", {}) or {}

    # --- produce -------------------------------------------------------------------------

    async def send(
        self,
        body: Any,
        *,
        attributes: Mapping[str, str] | None = None,
        dedup_id: str | None = None,
        delay_s: float | None = None,
        group_id: str | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
    ) -> str:
        """Send one message after it is committed; returns its id.

        `body`: str as-is, bytes as base64, anything else JSON-encoded (see
        `cluster.message`). Repeating a `dedup_id` inside the queue's dedup window returns
        the original id and enqueues nothing. Sends made concurrently on this queue share
        requests (see the module docstring); one with its own `timeout_s` goes alone.
        """
        msg = OutgoingMessage(
            body,
            attributes=dict(attributes or {}),
            dedup_id=dedup_id,
            delay_s=delay_s,
            group_id=group_id,
            priority=priority,
        )
        if timeout_s is not None:
            results = await self.send_many([msg], timeout_s=timeout_s)
            return results[0].id
        return (await self._sends.call(msg.to_wire())).id

    async def _send_group(self, batch: Sequence[dict[str, Any]]) -> list[SendResult]:
        return await self._send_wire(list(batch), None)

    async def send_many(
        self,
        bodies: Iterable[Any],
        *,
        attributes: Mapping[str, str] | None = None,
        delay_s: float | None = None,
        group_id: str | None = None,
        priority: int | None = None,
        batch_size: int = 256,
        timeout_s: float | None = None,
    ) -> list[SendResult]:
        """Send many messages in batches of `batch_size` (one Raft entry per batch).

        Items are bodies or `OutgoingMessage`s (whose own options win over the shared
        keyword options). Returns one `SendResult` per item, in order. Each batch is
        retried with the same dedup ids, so none is ever enqueued twice.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        wire = _wire_messages(bodies, attributes, delay_s, group_id, priority)
        results: list[SendResult] = []
        for start in range(0, len(wire), batch_size):
            results += await self._send_wire(wire[start : start + batch_size], timeout_s)
        return results

    async def _send_wire(
        self, batch: list[dict[str, Any]], timeout_s: float | None
    ) -> list[SendResult]:
        """One send request of API message dicts; one `SendResult` per message, in order."""
        answer = await self._call("POST", "/messages", {"messages": batch}, timeout_s=timeout_s)
        items = (answer or {}).get("messages") or []
        if len(items) != len(batch):
            raise RaftqError(
                f"server answered {len(items)} results for {len(batch)} messages",
                code="bad_response",
                body=answer if isinstance(answer, dict) else {},
            )
        return [
            SendResult(
                id=str(item.get("id")),
                seq=item.get("seq"),
                duplicate=bool(item.get("duplicate", False)),
                dedup_id=sent["dedup_id"],
            )
            for sent, item in zip(batch, items, strict=True)
        ]

    async def send_at_most_once(
        self,
        bodies: Iterable[Any],
        *,
        attributes: Mapping[str, str] | None = None,
        delay_s: float | None = None,
        group_id: str | None = None,
        priority: int | None = None,
        timeout_s: float | None = None,
    ) -> int:
        """At-most-once produce (`?ack=none`): the leader answers before the batch commits,
        so a leader crash right after may lose it. Faster; for metrics-like data. Returns
        the number of messages accepted. Retries still carry the same dedup ids, so even a
        retried batch is never enqueued twice."""
        wire = _wire_messages(bodies, attributes, delay_s, group_id, priority)
        if not wire:
            return 0
        answer = await self._call(
            "POST", "/messages", {"messages": wire}, params={"ack": "none"}, timeout_s=timeout_s
        )
        return int((answer or {}).get("accepted", len(wire)))

    # --- consume -------------------------------------------------------------------------

    @overload
    async def receive(
        self,
        max: None = None,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> Message | None: ...

    @overload
    async def receive(
        self,
        max: int,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> list[Message]: ...

    async def receive(
        self,
        max: int | None = None,
        *,
        wait_s: float = 0.0,
        visibility_timeout_s: float | None = None,
        auto_ack: bool = False,
    ) -> Message | list[Message] | None:
        """Lease up to `max` messages, long-polling up to `wait_s` seconds for the first.

        Without `max`: one `Message` or `None`. With `max`: a list (maybe empty). Each
        message stays invisible to others for the visibility timeout; ack it or it comes
        back with `receive_count + 1`. `auto_ack=True` acks on delivery (at-most-once).
        """
        count = 1 if max is None else int(max)
        if count < 1:
            raise ValueError("max must be >= 1")
        if wait_s < 0:
            raise ValueError("wait_s must be >= 0")
        loop = asyncio.get_running_loop()
        until = loop.time() + wait_s
        while True:
            poll_s = min(MAX_POLL_WAIT_S, max_(0.0, until - loop.time()))
            body: dict[str, Any] = {"max": count, "wait_s": round(poll_s, 3)}
            if visibility_timeout_s is not None:
                body["visibility_timeout_s"] = visibility_timeout_s
            if auto_ack:
                body["auto_ack"] = True
            answer = await self._call("POST", "/receive", body, extra_request_s=poll_s)
            messages = [Message.from_wire(self.name, m) for m in (answer or {}).get("messages", [])]
            if messages or loop.time() >= until:
                break
        if not auto_ack:
            for m in messages:
                self._remember(m)
        if max is None:
            return messages[0] if messages else None
        return messages

    async def messages(
        self,
        *,
        max: int = 10,
        wait_s: float = MAX_POLL_WAIT_S,
        visibility_timeout_s: float | None = None,
    ) -> AsyncIterator[Message]:
        """Endless stream of received messages (`async for msg in q.messages(): ...`).

        Polls in batches of `max`; you ack each message yourself. Break out to stop; the
        messages of the current batch you did not take come back after their lease.
        """
        while True:
            batch = await self.receive(
                max, wait_s=wait_s, visibility_timeout_s=visibility_timeout_s
            )
            for msg in batch:
                yield msg

    def _remember(self, msg: Message) -> None:
        self._receipts[msg.id] = msg.receipt
        self._receipts.move_to_end(msg.id)
        while len(self._receipts) > RECEIPT_MEMORY:
            self._receipts.popitem(last=False)

    def _receipt(self, ref: MessageRef) -> str:
        if isinstance(ref, Message):
            return ref.receipt
        if isinstance(ref, str) and ref:
            return self._receipts.get(ref, ref)
        raise TypeError(f"expected a Message, a message id or a receipt, got {ref!r}")

    def _forget(self, refs: Iterable[MessageRef]) -> None:
        for ref in refs:
            key = ref.id if isinstance(ref, Message) else ref
            self._receipts.pop(key, None)

    async def acknowledge(self, message: MessageRef) -> bool:
        """Ack one message (a `Message`, or the id of one this handle received, or a
        receipt). True if acked; False if the receipt was stale (the lease expired and the
        message may be redelivered). Caveat: when an attempt fails ambiguously (the ack
        applied, the answer was lost) the retry reports the receipt stale, so False means
        "not acked by this call", never "acked twice".

        Acks made on this handle while one of its ack requests is on its way are sent
        together in the next request (`cluster.grouping`): concurrent handlers share
        requests, and a lone ack is sent at once."""
        return await self._acks.call((message, self._receipt(message)))

    async def _ack_group(self, items: Sequence[tuple[MessageRef, str]]) -> list[bool]:
        refs, receipts = [ref for ref, _r in items], [receipt for _ref, receipt in items]
        stale = set((await self._ack_receipts(refs, receipts)).stale)
        return [receipt not in stale for receipt in receipts]

    async def acknowledge_many(self, messages: Iterable[MessageRef]) -> AckResult:
        """Ack many messages in one request; the result lists stale receipts."""
        refs = list(messages)
        return await self._ack_receipts(refs, [self._receipt(r) for r in refs])

    async def _ack_receipts(self, refs: list[MessageRef], receipts: list[str]) -> AckResult:
        return await self._receipt_call("/ack", refs, receipts, {}, count_key="acked")

    async def _receipt_call(
        self,
        path: str,
        refs: list[MessageRef],
        receipts: list[str],
        extra: dict[str, Any],
        *,
        count_key: str | None,
        forget: bool = True,
    ) -> AckResult:
        """One ack, nack or extend request for `receipts`: how many took effect (the
        answer's `count_key`, else those not stale) and which were stale."""
        if not receipts:
            return AckResult(0)
        answer = await self._call("POST", path, {"receipts": receipts, **extra}) or {}
        if forget:
            self._forget(refs)
        stale = tuple(str(s) for s in answer.get("stale") or ())
        done = len(receipts) - len(stale)
        return AckResult(int(answer.get(count_key, done)) if count_key else done, stale)

    async def retry(self, message: MessageRef, delay_s: float = 0.0) -> bool:
        """Nack: make the message visible again after `delay_s` (its receive_count is kept).
        False if the receipt was already stale."""
        return bool(await self.retry_many([message], delay_s=delay_s))

    async def retry_many(self, messages: Iterable[MessageRef], delay_s: float = 0.0) -> AckResult:
        """Nack many messages in one request."""
        refs = list(messages)
        receipts = [self._receipt(r) for r in refs]
        return await self._receipt_call(
            "/nack", refs, receipts, {"delay_s": delay_s}, count_key=None
        )

    async def extend(self, message: MessageRef, visibility_timeout_s: float) -> bool:
        """Push the lease deadline to now + `visibility_timeout_s`. False if already stale."""
        return bool(await self.extend_many([message], visibility_timeout_s))

    async def extend_many(
        self, messages: Iterable[MessageRef], visibility_timeout_s: float
    ) -> AckResult:
        """Extend many leases in one request; the result lists stale receipts (their
        count in `acked` is of those extended)."""
        refs = list(messages)
        extra = {"visibility_timeout_s": visibility_timeout_s}
        return await self._receipt_call(
            "/extend",
            refs,
            [self._receipt(r) for r in refs],
            extra,
            count_key="extended",
            forget=False,
        )

    # --- consumer loop -------------------------------------------------------------------

    def consumer(self, handler: Handler, **options: Any) -> Consumer:
        """A `Consumer` for this queue (not started); see `cluster.consumer.Consumer`."""
        return Consumer(self, handler, **options)

    async def consume(self, handler: Handler, **options: Any) -> ConsumerStats:
        """Run a consumer loop until `stop()`, SIGINT/SIGTERM or `stop_event`.

        `handler(msg)` may be async or sync (sync ones run in worker threads). Success
        acks; an exception nacks with capped exponential delay; the lease is extended
        while the handler runs. Options: `concurrency`, `visibility_timeout_s`,
        `poll_wait_s`, `receivers`, `retry_base_delay_s`, `retry_max_delay_s`, `stop_event`,
        `handle_signals`.
        """
        return await self.consumer(handler, **options).run()

    async def consume_exactly_once(
        self, handler: Handler, *, output: Any = None, **options: Any
    ) -> ConsumerStats:
        """The consumer loop with a transaction instead of an ack: the input's ack and
        the handler's outputs (sent to `output`) commit all or nothing, exactly once per
        delivery. See `cluster.transactions.exactly_once_consumer`."""
        return await transactions.consume_exactly_once(self, handler, output=output, **options)

    # --- request-reply (cluster/rpc.py) -------------------------------------------------

    async def request(
        self, body: Any, *, timeout_s: float = 30.0, attributes: Mapping[str, str] | None = None
    ) -> Message:
        """Send `body` as a request (`reply_to`, `correlation_id`) and wait for its reply
        in a private reply queue; the reply `Message`. `rpc.RequestTimeout` after
        `timeout_s`."""
        return await rpc.request(self, body, timeout_s=timeout_s, attributes=attributes)

    def responder(self, handler: Handler, **options: Any) -> Consumer:
        """A consumer answering requests with `handler(msg)` (see `cluster.rpc.responder`)."""
        return rpc.responder(self, handler, **options)

    async def serve(self, handler: Handler, **options: Any) -> ConsumerStats:
        """Answer requests on this queue until stopped: `handler(msg)`'s return value goes
        to the request's `reply_to`, committed with the request's ack in one transaction.
        Options as in `consume`."""
        return await rpc.serve(self, handler, **options)

    def stop(self) -> None:
        """Ask every consumer loop running on this handle to stop (drains, then returns)."""
        for consumer in list(self._consumers):
            consumer.stop()


def _wire_messages(
    bodies: Iterable[Any],
    attributes: Mapping[str, str] | None,
    delay_s: float | None,
    group_id: str | None,
    priority: int | None,
) -> list[dict[str, Any]]:
    """The API's message dicts: an `OutgoingMessage` item as it is, any other item as the
    body of a new one (with its own new dedup id) carrying the shared options."""
    return [
        (
            item
            if isinstance(item, OutgoingMessage)
            else OutgoingMessage(
                item,
                attributes=dict(attributes or {}),
                delay_s=delay_s,
                group_id=group_id,
                priority=priority,
            )
        ).to_wire()
        for item in bodies
    ]


def wire_size(message: Mapping[str, Any]) -> int:
    """A cheap estimate of one API message's bytes in a request: its body and attributes
    plus a fixed overhead (enough for request-size caps and back-pressure)."""
    size = SEND_MESSAGE_OVERHEAD + len(message.get("body") or message.get("body_b64") or "")
    attributes = message.get("attributes")
    if attributes:
        size += sum(len(k) + len(v) for k, v in attributes.items())
    return size


@dataclass(frozen=True, slots=True)
class ProducerOptions:
    """How `AsyncQueue.send` groups concurrent sends (see the module docstring).

    `linger_ms=0`: a send leaves as soon as a request slot is free, so a lone send pays
    no timer, and batches still form whenever requests are on their way (group commit).
    """

    batch_size: int = 256
    max_in_flight: int = 2
    linger_ms: float = 0.0
    max_buffered_bytes: int = 32 << 20

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("send_batch_size must be 1 to 1000 (the API's batch limit)")
        if self.max_in_flight < 1:
            raise ValueError("max_sends_in_flight must be >= 1")
        if self.linger_ms < 0:
            raise ValueError("linger_ms must be >= 0")
        if self.max_buffered_bytes < 1:
            raise ValueError("max_buffered_send_bytes must be >= 1")


def max_(a: float, b: float) -> float:
    """`max` of two floats (the builtin is shadowed by the `max` parameter above)."""
    return a if a >= b else b


class AsyncClient:
    """Client of a raftq cluster: finds the leader, retries inside one deadline per call.

    `servers`: list or comma-separated string of node URLs; default `$RAFTQ_SERVERS`, else
    raftq://127.0.0.1:7201,7202,7203. A `raftq://` URL is a node's binary port (pipelined
    msgpack frames over one connection per node, `cluster.binary_client`), an `http://`
    one its HTTP API; both carry the same calls. `timeout_s` is the total deadline of each
    call, `request_timeout_s` the limit of a single attempt. An attempt unanswered after
    `leader_check_s` makes the client ask the cluster who leads (then at doubling
    intervals); if a majority names another node, the attempt moves there instead of
    waiting out `request_timeout_s` on a hung leader (None: never check). Pass `session`
    to share an aiohttp session for HTTP servers (it is not closed by `close()`).

    TLS: `https://` and `raftqs://` servers are verified against `ca_file` (a PEM CA
    bundle; default `$RAFTQ_CA_FILE`, else the system's trust store), with their hostname
    checked; `cert_file`/`key_file` (default `$RAFTQ_CERT_FILE`/`$RAFTQ_KEY_FILE`) are the
    client certificate for nodes that require one; or pass a ready `ssl_context`
    (cluster/tls.py). A borrowed `session` brings its own TLS settings for HTTP.
    `token`: a user's token (`rq1.USER.SECRET`) for a cluster with auth; default
    `$RAFTQ_TOKEN`, else the file named by `$RAFTQ_TOKEN_FILE`.
    """

    def __init__(
        self,
        servers: str | Iterable[str] | None = None,
        *,
        timeout_s: float = 30.0,
        request_timeout_s: float = 10.0,
        leader_check_s: float | None = 1.0,
        session: aiohttp.ClientSession | None = None,
        send_batch_size: int = 256,
        max_sends_in_flight: int = 2,
        linger_ms: float = 0.0,
        max_buffered_send_bytes: int = 32 << 20,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = resolve_servers(servers)
        tls = client_ssl_context(ca_file, cert_file, key_file, ssl_context)
        self.producer = ProducerOptions(
            send_batch_size, max_sends_in_flight, linger_ms, max_buffered_send_bytes
        )
        self.timeout_s = timeout_s
        self.request_timeout_s = request_timeout_s
        self._router = LeaderRouter(
            self.servers,
            timeout_s=timeout_s,
            request_timeout_s=request_timeout_s,
            probe_timeout_s=min(2.0, request_timeout_s),
            leader_check_s=leader_check_s,
            session=session,
            token=resolve_token(token),
            ssl_context=tls,
        )
        self._queues: dict[str, AsyncQueue] = {}
        self._topics: dict[str, AsyncTopic] = {}

    def __repr__(self) -> str:
        return (
            f"AsyncClient(servers={list(self.servers)!r}, leader={self.leader_url!r}, "
            f"timeout_s={self.timeout_s})"
        )

    @property
    def leader_url(self) -> str | None:
        """The leader URL currently cached (None before the first call or after a failover)."""
        return self._router.leader_url

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close connections (idempotent); sends still waiting to leave are cancelled."""
        for q in self._queues.values():
            q._sends.cancel_all()
        for t in self._topics.values():
            t._publishes.cancel_all()
        await self._router.close()

    async def request(self, method: str, path: str, **options: Unpack[CallOptions]) -> Any:
        """Low-level: one API call routed to the leader with retries; the decoded answer.

        Options: `json_body`, `params`, `timeout_s` (this call's deadline instead of the
        client's), `extra_request_s` (longer attempts, for a long poll); the router's
        `LeaderRouter.request` is the one implementation.
        """
        return await self._router.request(method, path, **options)

    def transaction(self, txn_id: str | None = None) -> transactions.AsyncTransaction:
        """Start collecting acks and sends to commit atomically (`async with` commits)."""
        return transactions.AsyncTransaction(self, txn_id)

    def queue(self, name: str) -> AsyncQueue:
        """The handle of queue `name` (not created on the server: call `create()`)."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = AsyncQueue(self, name)
        return q

    async def request_reply(
        self,
        queue: str,
        body: Any,
        *,
        timeout_s: float = 30.0,
        attributes: Mapping[str, str] | None = None,
    ) -> Message:
        """Send `body` to `queue` as a request and return its reply (`queue(name).request`;
        `request()` itself is the low-level API call, hence the name)."""
        return await self.queue(queue).request(body, timeout_s=timeout_s, attributes=attributes)

    def exchange(self, name: str) -> AsyncExchange:
        """The handle of exchange `name` (call `declare()` to create it on the server)."""
        return AsyncExchange(self, name)

    async def exchanges(self) -> list[dict[str, Any]]:
        """Every exchange with its type, binding count and totals."""
        answer = await self.request("GET", "/v1/exchanges") or {}
        return list(answer.get("exchanges") or [])

    def topic(self, name: str) -> AsyncTopic:
        """The handle of topic `name` (not created on the server: call `create()`)."""
        t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = AsyncTopic(self, name)
        return t

    async def topics(self) -> list[dict[str, Any]]:
        """Every topic the caller may see, with its partitions' offsets."""
        answer = await self.request("GET", "/v1/topics") or {}
        return list(answer.get("topics") or [])

    async def group(self, name: str) -> dict[str, Any]:
        """A consumer group: members, generation, committed offsets and lag."""
        return await self.request("GET", f"/v1/groups/{quote(name, safe='')}") or {}

    def subscriber(
        self, topic: str, group: str, handler: RecordHandler, **options: Any
    ) -> GroupSubscriber:
        """A member of `group` on `topic` that runs `handler` per record (`run()` until
        `stop()`); options: member_id, session_timeout_s, start, max_records, wait_s."""
        return GroupSubscriber(self, self.topic(topic), group, handler, **options)

    async def subscribe(
        self, topic: str, group: str, handler: RecordHandler, **options: Any
    ) -> SubscriberStats:
        """Consume `topic` as a member of `group`: the handler per record, offsets committed
        after it, until the task is cancelled (then the member leaves the group)."""
        return await self.subscriber(topic, group, handler, **options).run()

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue with its depth, in_flight and delayed counts."""
        answer = await self.request("GET", "/v1/queues") or {}
        return list(answer.get("queues") or [])

    async def cluster(self) -> dict[str, Any]:
        """The cluster as seen by the leader: members, roles, term, commit/applied index."""
        return await self.request("GET", "/v1/cluster") or {}

    async def members(self) -> dict[str, Any]:
        """The configuration in force: `voters`, `learners`, and `members` with addresses."""
        return await self.request("GET", "/v1/cluster/members") or {}

    async def add_member(
        self, node_id: int, url: str, raft_addr: str, *, voter: bool = True
    ) -> dict[str, Any]:
        """Add a node as a learner; the leader promotes it once it has caught up unless
        `voter` is False. Returns the new configuration (answered once committed)."""
        body = {"id": node_id, "url": url, "raft_addr": raft_addr, "voter": voter}
        return await self.request("POST", "/v1/cluster/members", json_body=body) or {}

    async def remove_member(self, node_id: int) -> dict[str, Any]:
        """Remove a node (the leader too: it hands over and steps down)."""
        return await self.request("DELETE", f"/v1/cluster/members/{int(node_id)}") or {}

    async def promote_member(self, node_id: int) -> dict[str, Any]:
        """Make a caught-up learner a voter."""
        return await self.request("POST", f"/v1/cluster/members/{int(node_id)}/promote") or {}

    async def transfer_leader(self, to: int | None = None) -> dict[str, Any]:
        """Hand leadership to voter `to` (default: the most caught-up other voter)."""
        body = {} if to is None else {"to": int(to)}
        return await self.request("POST", "/v1/cluster/transfer-leader", json_body=body) or {}

    # --- users (a cluster with auth: every call needs `admin` on `*` but whoami) ---------

    async def whoami(self) -> dict[str, Any]:
        """This client's user and permissions (`user` None when the cluster has auth off)."""
        return await self.request("GET", "/v1/whoami") or {}

    async def users(self) -> list[dict[str, Any]]:
        return (await self.request("GET", "/v1/users") or {}).get("users", [])

    async def add_user(
        self, name: str, permissions: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, Any], str]:
        """Add a user with `permissions` ({read, write, admin}: lists of name patterns);
        (the user, its token). The token is shown this once: only its hash is kept."""
        body = {"name": name, "permissions": {k: list(v) for k, v in permissions.items()}}
        answer = await self.request("POST", "/v1/users", json_body=body) or {}
        return answer.get("user", {}), answer.get("token", "")

    async def rotate_token(self, name: str) -> str:
        """A new token for user `name`; the old one stops working."""
        answer = await self.request("POST", f"/v1/users/{quote(name, safe='')}/token", json_body={})
        return (answer or {}).get("token", "")

    async def set_permissions(
        self, name: str, permissions: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        body = {k: list(v) for k, v in permissions.items()}
        path = f"/v1/users/{quote(name, safe='')}/permissions"
        return await self.request("PUT", path, json_body=body) or {}

    async def remove_user(self, name: str) -> dict[str, Any]:
        return await self.request("DELETE", f"/v1/users/{quote(name, safe='')}") or {}

    async def node_cluster_view(self, url: str, timeout_s: float | None = None) -> dict[str, Any]:
        """`GET /v1/cluster` of one specific node (its own term, indexes and role)."""
        return await self._router.request_node(url, "GET", "/v1/cluster", timeout_s=timeout_s)

    async def cluster_views(
        self, urls: Iterable[str] | None = None, timeout_s: float = 2.0
    ) -> dict[str, dict[str, Any] | Exception]:
        """Every node's own view, fetched in parallel: url -> answer or the exception.

        Nodes named in any answer are asked too, so a partial server list still shows the
        whole cluster.
        """
        targets = list(urls if urls is not None else self.servers)
        views: dict[str, dict[str, Any] | Exception] = {}

        async def fetch(url: str) -> None:
            try:
                views[url] = await self.node_cluster_view(url, timeout_s=timeout_s)
            except (TimeoutError, RaftqError, aiohttp.ClientError, OSError) as exc:
                views[url] = exc

        while targets:
            await asyncio.gather(*(fetch(u) for u in targets))
            known = set(views)
            targets = []
            for view in list(views.values()):
                if isinstance(view, dict):
                    for node in view.get("nodes") or []:
                        url = node.get("url") if isinstance(node, dict) else None
                        if isinstance(url, str) and url.rstrip("/") not in known:
                            targets.append(url.rstrip("/"))
                            known.add(url.rstrip("/"))
        return views

    async def health(self, url: str) -> dict[str, Any]:
        """`GET /v1/health` of one node (raises if it is down)."""
        return await self._router.request_node(url, "GET", "/v1/health")


__all__ = ["AsyncClient", "AsyncQueue", "Message", "MessageRef"]
