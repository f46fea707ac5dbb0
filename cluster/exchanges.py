"""Exchanges on the client side: declare, bind, publish (and their blocking twins).

    ex = client.exchange("orders")
    await ex.declare(type="topic")
    await ex.bind("payments", pattern="order.created")
    result = await ex.publish({"order_id": 7}, routing_key="order.created")
    result.routed_to   # ["payments"]

A publish is one Raft entry that enqueues a copy in every matching queue, all or nothing;
each message carries a dedup id reused by every retry, so a publish retried across a
leader change enqueues each copy once (each queue's dedup window answers the first ids).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from cluster.message import OutgoingMessage
from cluster.transactions import Requester

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where one published message went: `ids` per queue, `duplicates` the queues whose
    dedup window already held it, `unroutable` when no binding matched (it then went to
    the exchange's alternate queue, if any)."""

    routed_to: list[str]
    ids: dict[str, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    unroutable: bool = False

    @classmethod
    def from_wire(cls, item: Mapping[str, Any]) -> PublishResult:
        return cls(
            routed_to=list(item.get("routed_to") or []),
            ids=dict(item.get("ids") or {}),
            duplicates=list(item.get("duplicates") or []),
            unroutable=bool(item.get("unroutable")),
        )


@dataclass(frozen=True, slots=True)
class PublishMessage:
    """One message for `publish_many`, with its own routing key and headers."""

    body: Any
    routing_key: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, str] = field(default_factory=dict)
    dedup_id: str | None = None
    delay_s: float | None = None
    group_id: str | None = None
    priority: int | None = None

    def to_wire(self) -> dict[str, Any]:
        wire = OutgoingMessage(
            self.body, self.attributes, self.dedup_id, self.delay_s, self.group_id, self.priority
        ).to_wire()
        if self.routing_key:
            wire["routing_key"] = self.routing_key
        if self.headers:
            wire["headers"] = {str(k): str(v) for k, v in self.headers.items()}
        return wire


def _binding(
    queue: str,
    routing_key: str | None,
    pattern: str | None,
    headers: Mapping[str, str] | None,
    match: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"queue": queue}
    if routing_key is not None:
        body["routing_key"] = routing_key
    if pattern is not None:
        body["pattern"] = pattern
    if headers is not None:
        body["headers"] = {str(k): str(v) for k, v in headers.items()}
    if match is not None:
        body["match"] = match
    return body


class AsyncExchange:
    """Handle on one exchange; get it from `AsyncClient.exchange(name)`."""

    def __init__(self, client: Requester, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("exchange name must be a non-empty string")
        self.client = client
        self.name = name
        self._path = f"/v1/exchanges/{quote(name, safe='')}"

    def __repr__(self) -> str:
        return f"AsyncExchange(name={self.name!r})"

    async def _call(self, method: str, suffix: str = "", body: Any = None) -> Any:
        return await self.client.request(method, self._path + suffix, json_body=body) or {}

    async def declare(
        self, type: str = "direct", *, alternate_queue: str | None = None
    ) -> dict[str, Any]:
        """Create the exchange (direct, fanout, topic or headers) or update its alternate
        queue; its type cannot change (409)."""
        return await self._call("PUT", body={"type": type, "alternate_queue": alternate_queue})

    async def info(self) -> dict[str, Any]:
        """Type, alternate queue, bindings and the published/routed/unroutable totals."""
        return await self._call("GET")

    async def delete(self) -> dict[str, Any]:
        """Delete the exchange and its bindings (the queues stay)."""
        return await self._call("DELETE")

    async def bind(
        self,
        queue: str,
        *,
        routing_key: str | None = None,
        pattern: str | None = None,
        headers: Mapping[str, str] | None = None,
        match: str | None = None,
    ) -> dict[str, Any]:
        """Bind `queue`: `routing_key` (direct), nothing (fanout), `pattern` (topic: `*` one
        word, `#` zero or more) or `headers` with `match` all/any (headers)."""
        body = _binding(queue, routing_key, pattern, headers, match)
        return await self._call("POST", "/bindings", body)

    async def unbind(
        self,
        queue: str,
        *,
        routing_key: str | None = None,
        pattern: str | None = None,
        headers: Mapping[str, str] | None = None,
        match: str | None = None,
    ) -> dict[str, Any]:
        """Remove the binding made with the same arguments (404 if there is none)."""
        body = _binding(queue, routing_key, pattern, headers, match)
        return await self._call("POST", "/bindings/delete", body)

    async def publish(
        self,
        body: Any,
        *,
        routing_key: str = "",
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> PublishResult:
        """Publish one message (`options`: attributes, dedup_id, delay_s, group_id,
        priority, as in `queue.send`); where it went."""
        message = PublishMessage(body, routing_key, headers or {}, **options)
        [result] = await self.publish_many([message])
        return result

    async def publish_many(self, messages: Iterable[PublishMessage | Any]) -> list[PublishResult]:
        """Publish a batch in one request and one Raft entry (all or nothing); a plain body
        is a message with no routing key."""
        wire = [
            (m if isinstance(m, PublishMessage) else PublishMessage(m)).to_wire() for m in messages
        ]
        answer = await self._call("POST", "/publish", {"messages": wire})
        return [PublishResult.from_wire(m) for m in answer.get("messages") or []]


class Exchange:
    """The blocking twin of `AsyncExchange` (from `Client.exchange(name)`)."""

    def __init__(
        self, inner: AsyncExchange, run: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._async = inner
        self._run = run
        self.name = inner.name

    def __repr__(self) -> str:
        return f"Exchange(name={self.name!r})"

    def declare(
        self, type: str = "direct", *, alternate_queue: str | None = None
    ) -> dict[str, Any]:
        return self._run(self._async.declare(type, alternate_queue=alternate_queue))

    def info(self) -> dict[str, Any]:
        return self._run(self._async.info())

    def delete(self) -> dict[str, Any]:
        return self._run(self._async.delete())

    def bind(self, queue: str, **spec: Any) -> dict[str, Any]:
        return self._run(self._async.bind(queue, **spec))

    def unbind(self, queue: str, **spec: Any) -> dict[str, Any]:
        return self._run(self._async.unbind(queue, **spec))

    def publish(self, body: Any, **options: Any) -> PublishResult:
        return self._run(self._async.publish(body, **options))

    def publish_many(self, messages: Iterable[PublishMessage | Any]) -> list[PublishResult]:
        return self._run(self._async.publish_many(list(messages)))
