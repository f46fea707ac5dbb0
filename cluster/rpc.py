"""Request-reply over queues: `request()` on the caller's side, `serve()` on the responder's.

A request is an ordinary message on the service's queue with two attributes:
`reply_to` (a queue the caller made for the answer) and `correlation_id` (which request
this is). The responder runs a consumer whose handler's return value is sent to
`reply_to` with the same `correlation_id`, in ONE transaction with the ack of the request
(`POST /v1/transactions`, its id derived from the delivery): a request is answered once
even when a commit is retried after a leader change, and a responder whose lease expired
(the request went to another) cannot answer at all.

The caller makes a reply queue per request, `rpc.reply.<random>`, with `expires_s` (the
queue deletes itself once unused that long, node/state/queue_expiry.py), so a caller that
dies leaves nothing behind for good; a caller that finishes deletes it at once. Its send
carries a dedup id reused by every retry (the client's sends always do), so a request
retried across a leader change is enqueued once; replies whose correlation id is not the
awaited one (none should arrive in a private queue) are acked and ignored.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from cluster.consumer import Consumer, ConsumerStats
from cluster.errors import NotFound, RaftqError
from cluster.message import Message
from cluster.transactions import (
    AsyncTransaction,
    ExactlyOnceQueue,
    TransactionAborted,
    delivery_txn_id,
)

log = structlog.get_logger("raftq.rpc")

REPLY_TO = "reply_to"
CORRELATION_ID = "correlation_id"
REPLY_QUEUE_PREFIX = "rpc.reply."
#: A reply queue outlives its request by this much at least before it may expire.
MIN_REPLY_EXPIRES_S = 60


class RequestTimeout(RaftqError, TimeoutError):
    """No reply arrived within the request's timeout (the request may still be handled)."""

    default_code = "timeout"


def reply_queue_name() -> str:
    return REPLY_QUEUE_PREFIX + uuid.uuid4().hex[:24]


async def request(
    queue: Any,
    body: Any,
    *,
    timeout_s: float = 30.0,
    attributes: Mapping[str, str] | None = None,
) -> Message:
    """Send `body` to `queue` (a `cluster.client.AsyncQueue`: not imported, it imports
    this module) and wait for the reply with its correlation id: the reply
    `Message` (already acked). Raises `RequestTimeout` after `timeout_s`."""
    client = queue.client
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout_s
    reply = client.queue(reply_queue_name())
    expires_s = max(MIN_REPLY_EXPIRES_S, math.ceil(2 * timeout_s))
    await reply.create(expires_s=expires_s)
    correlation_id = uuid.uuid4().hex
    try:
        await queue.send(
            body,
            attributes={**(attributes or {}), REPLY_TO: reply.name, CORRELATION_ID: correlation_id},
        )
        while (left := until - loop.time()) > 0:
            msg = await reply.receive(wait_s=left)
            if msg is None:
                continue
            await reply.acknowledge(msg)
            if msg.attributes.get(CORRELATION_ID) == correlation_id:
                return msg
            log.info(
                "rpc.stray_reply",
                queue=reply.name,
                correlation_id=msg.attributes.get(CORRELATION_ID),
            )
        raise RequestTimeout(f"no reply from {queue.name!r} within {timeout_s} s")
    finally:
        try:
            await reply.delete()
        except RaftqError:  # gone already, or the cluster is away: it expires by itself
            pass


def responder(
    queue: ExactlyOnceQueue,
    handler: Callable[[Message], Awaitable[Any] | Any],
    *,
    reply_to_prefix: str | None = REPLY_QUEUE_PREFIX,
    **options: Any,
) -> Consumer:
    """A consumer of `queue` that answers each request with `handler(msg)`'s return value
    (any body `send` takes), sent to its `reply_to` with its `correlation_id` in one
    transaction with the request's ack. A message without `reply_to` is only acked; a
    handler that raises leaves the request to be retried (the consumer's backoff).

    `reply_to` comes from whoever sent the request, and the reply is written with the
    responder's permissions: so by default only queues named `rpc.reply.*` (what
    `request()` makes) get replies, and a request naming another queue is acked without
    one (logged). `reply_to_prefix=None` replies to any queue."""
    client = queue.client

    async def complete(msg: Message, result: Any) -> bool:
        reply_to = msg.attributes.get(REPLY_TO)
        try:
            if (
                reply_to
                and reply_to_prefix is not None
                and not reply_to.startswith(reply_to_prefix)
            ):
                log.warning("rpc.reply_to_refused", queue=queue.name, reply_to=reply_to)
                reply_to = None
            if not reply_to:
                return await queue.acknowledge(msg)
            txn = AsyncTransaction(client, txn_id=delivery_txn_id(queue.name, msg))
            txn.acknowledge(msg)
            reply_attributes = {CORRELATION_ID: msg.attributes.get(CORRELATION_ID, "")}
            txn.send(reply_to, result, attributes=reply_attributes)
            try:
                await txn.commit()
            except NotFound:  # the caller's reply queue is gone: nobody waits any more
                log.info("rpc.reply_queue_gone", queue=queue.name, reply_to=reply_to)
                return await queue.acknowledge(msg)
            return True
        except TransactionAborted:
            log.info("rpc.stale_request", queue=queue.name, message_id=msg.id)
            return False
        finally:
            queue._forget([msg])

    return Consumer(queue, handler, complete=complete, **options)


async def serve(
    queue: ExactlyOnceQueue, handler: Callable[[Message], Awaitable[Any] | Any], **options: Any
) -> ConsumerStats:
    """Run `responder(queue, handler, ...)` until stopped; returns its stats."""
    return await responder(queue, handler, **options).run()
