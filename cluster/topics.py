"""Topics and consumer groups in the asyncio client: `AsyncTopic` and `GroupSubscriber`.

    async with AsyncClient() as client:
        events = client.topic("user_events")
        await events.create(partitions=3)
        await events.publish({"clicked": "buy"}, key="alice")     # -> (partition, offset)
        page = await events.fetch(0, offset=0, max=100)           # FetchResult
        await client.subscribe("user_events", group="analytics", handler=handle, max_records=10)

Publishing goes through an idempotent producer session (POST /v1/producers once per
handle): publishes made at once from many tasks leave together, one request at a time
per topic handle, each with the session's next seq, so a request the client retries
(a timeout, a leader change) is appended once. A request that fails for good restarts
the session (a new epoch) for the next one.

Subscribing: the subscriber joins the group, fetches its partitions from their
positions, calls the handler for each record, commits after the handler (auto-commit,
per fetched batch), heartbeats, and follows rebalances: a new generation (from a
heartbeat or a refused commit) gives it new partitions and positions. Delivery is
at-least-once: a record handled but not yet committed when partitions move is handled
again by its next owner. A handler that raises stops the loop with that exception (its
batch is not committed) and the member leaves the group.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Unpack
from urllib.parse import quote

from cluster.discovery import CallOptions
from cluster.errors import BadRequest, Conflict, RaftqError, TooLarge
from cluster.grouping import GroupedCalls

#: Records per publish request at most (the API's default batch limit is 1,000).
RECORDS_PER_REQUEST = 500


class Requester(Protocol):
    """What a topic handle needs of a client: `request`, as `cluster.client.AsyncClient` has
    (declared here so that this module need not import the client, which imports it)."""

    async def request(self, method: str, path: str, **options: Unpack[CallOptions]) -> Any: ...


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record of a partition, as a fetch answers it."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timestamp_ms: int = 0

    @property
    def text(self) -> str:
        return self.value.decode("utf-8")

    @property
    def data(self) -> Any:
        """The value decoded as JSON."""
        return json.loads(self.value)


@dataclass(frozen=True, slots=True)
class FetchResult:
    records: list[TopicRecord]
    next_offset: int
    high_watermark: int
    log_start: int


def _wire_value(value: Any) -> dict[str, str]:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"value_b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, str):
        return {"value": value}
    return {"value": json.dumps(value, separators=(",", ":"))}


def wire_record(
    value: Any,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    partition: int | None = None,
) -> dict[str, Any]:
    """One record as the API takes it (the value as text, JSON, or base64 bytes)."""
    record: dict[str, Any] = _wire_value(value)
    if key is not None:
        record["key"] = key
    if headers:
        record["headers"] = dict(headers)
    if partition is not None:
        record["partition"] = partition
    return record


def _record_of(topic: str, partition: int, raw: Mapping[str, Any]) -> TopicRecord:
    if "value_b64" in raw:
        value = base64.b64decode(raw["value_b64"])
    else:
        value = raw.get("value", "")
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return TopicRecord(
        topic=topic,
        partition=partition,
        offset=int(raw["offset"]),
        value=value,
        key=raw.get("key"),
        headers=dict(raw.get("headers") or {}),
        timestamp_ms=int(raw.get("timestamp_ms") or 0),
    )


class AsyncTopic:
    """Handle on one topic. Cheap; get it from `AsyncClient.topic(name)`."""

    def __init__(self, client: Requester, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("topic name must be a non-empty string")
        self.client = client
        self.name = name
        self._path = f"/v1/topics/{quote(name, safe='')}"
        self._producer: dict[str, Any] | None = None
        self._publishes: GroupedCalls[dict[str, Any], tuple[int, int]] = GroupedCalls(
            self._publish_group,
            max_per_request=RECORDS_PER_REQUEST,
            split_on=(BadRequest, TooLarge),
            max_in_flight=1,  # one request at a time: seqs of a session go in order
        )

    def __repr__(self) -> str:
        return f"AsyncTopic(name={self.name!r})"

    async def _call(self, method: str, suffix: str = "", body: Any = None, **kw: Any) -> Any:
        return await self.client.request(method, self._path + suffix, json_body=body, **kw)

    async def create(self, **config: Any) -> dict[str, Any]:
        """Create the topic or update it (`partitions`, `retention_s`, `retention_bytes`)."""
        return await self._call("PUT", body=config) or {}

    async def info(self) -> dict[str, Any]:
        """Config and per-partition log_start / high_watermark / bytes."""
        return await self._call("GET") or {}

    async def delete(self) -> dict[str, Any]:
        return await self._call("DELETE") or {}

    # --- produce -------------------------------------------------------------------------

    async def publish(
        self,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Append one record (str, bytes, or anything JSON); returns (partition, offset).
        Concurrent publishes share requests (see the module doc)."""
        return await self._publishes.call(wire_record(value, key, headers, partition))

    async def publish_many(
        self, values: Iterable[Any], *, key: str | None = None
    ) -> list[tuple[int, int]]:
        """Append several records in one go (each as `publish` would)."""
        return list(await asyncio.gather(*(self.publish(v, key=key) for v in values)))

    async def _producer_session(self) -> dict[str, Any]:
        if self._producer is None:
            answer = await self.client.request("POST", "/v1/producers", json_body={})
            self._producer = {"id": answer["producer_id"], "epoch": answer["epoch"], "seq": 0}
        return self._producer

    async def _publish_group(self, batch: list[dict[str, Any]]) -> list[tuple[int, int]]:
        producer = await self._producer_session()
        body = {"records": batch, "producer": dict(producer)}
        try:
            answer = await self._call("POST", "/records", body)
        except RaftqError as exc:
            if exc.status in (0, 409) or exc.status >= 500:
                # outcome unknown, or the session is out of step: the next request starts
                # a new epoch (which fences this one if it is still on its way)
                await self._restart_session(producer["id"])
            raise
        producer["seq"] += 1
        return [(int(r["partition"]), int(r["offset"])) for r in answer["records"]]

    async def _restart_session(self, producer_id: str) -> None:
        self._producer = None
        try:
            answer = await self.client.request(
                "POST", "/v1/producers", json_body={"producer_id": producer_id}
            )
            self._producer = {"id": answer["producer_id"], "epoch": answer["epoch"], "seq": 0}
        except RaftqError:
            pass  # the next publish asks for a fresh producer id

    # --- fetch ---------------------------------------------------------------------------

    async def fetch(
        self, partition: int, *, offset: int = 0, max: int = 100, wait_s: float = 0.0
    ) -> FetchResult:
        """Records of `partition` from `offset` (at most `max`); with `wait_s`, waits for
        an append when there is nothing at `offset` yet."""
        params = {"offset": str(offset), "max": str(max), "wait_s": str(wait_s)}
        answer = await self._call(
            "GET",
            f"/partitions/{partition}/records",
            params=params,
            extra_request_s=wait_s,
        )
        return FetchResult(
            records=[_record_of(self.name, partition, r) for r in answer["records"]],
            next_offset=int(answer["next_offset"]),
            high_watermark=int(answer["high_watermark"]),
            log_start=int(answer["log_start"]),
        )


RecordHandler = Callable[[TopicRecord], Any] | Callable[[TopicRecord], Awaitable[Any]]


@dataclass
class SubscriberStats:
    handled: int = 0
    commits: int = 0
    rebalances: int = 0


class GroupSubscriber:
    """One member of a consumer group running a handler over its partitions."""

    def __init__(
        self,
        client: Requester,
        topic: AsyncTopic,
        group: str,
        handler: RecordHandler,
        *,
        member_id: str | None = None,
        session_timeout_s: float = 10.0,
        start: str = "earliest",
        max_records: int = 100,
        wait_s: float = 1.0,
    ) -> None:
        self.client = client
        self.topic = topic
        self.group = group
        self.handler = handler
        self.member_id = member_id
        self.session_timeout_s = session_timeout_s
        self.start = start
        self.max_records = max_records
        self.wait_s = wait_s
        self.generation = -1
        self.positions: dict[int, int] = {}
        self.stats = SubscriberStats()
        self._stop = asyncio.Event()
        self._path = f"/v1/groups/{quote(group, safe='')}"

    def stop(self) -> None:
        """Ask the loop to finish: it commits what it handled, leaves, and returns."""
        self._stop.set()

    @property
    def partitions(self) -> list[int]:
        return sorted(self.positions)

    def _take(self, answer: Mapping[str, Any]) -> None:
        if answer["generation"] != self.generation:
            self.stats.rebalances += 1
        self.member_id = answer["member_id"]
        self.generation = answer["generation"]
        self.positions = {int(p["partition"]): int(p["offset"]) for p in answer["positions"]}

    async def join(self) -> None:
        body: dict[str, Any] = {
            "topic": self.topic.name,
            "session_timeout_s": self.session_timeout_s,
            "start": self.start,
        }
        if self.member_id is not None:
            body["member_id"] = self.member_id
        self._take(await self.client.request("POST", self._path + "/join", json_body=body))

    async def heartbeat(self) -> None:
        try:
            answer = await self.client.request(
                "POST", self._path + "/heartbeat", json_body={"member_id": self.member_id}
            )
        except Conflict:  # the session ended: join again
            await self.join()
            return
        if answer["generation"] != self.generation:
            self._take(answer)

    async def leave(self) -> None:
        if self.member_id is not None:
            try:
                await self.client.request(
                    "POST", self._path + "/leave", json_body={"member_id": self.member_id}
                )
            except Conflict:
                pass
        self.positions = {}

    async def _commit(self, partition: int, offset: int) -> bool:
        """Commit; False when the generation moved on (positions are then refreshed)."""
        body = {
            "member_id": self.member_id,
            "generation": self.generation,
            "offsets": [{"topic": self.topic.name, "partition": partition, "offset": offset}],
        }
        try:
            await self.client.request("POST", self._path + "/commit", json_body=body)
        except Conflict:
            await self.heartbeat()
            return False
        self.stats.commits += 1
        return True

    async def _fetch_some(self) -> list[tuple[int, FetchResult]]:
        """One record batch per partition that has any; long-polls when none has."""
        if not self.positions:  # more members than partitions: idle until a rebalance
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.wait_s)
            return []
        out = []
        for p, offset in sorted(self.positions.items()):
            result = await self._fetch(p, offset, 0.0)
            if result is not None and result.records:
                out.append((p, result))
        if out or not self.positions:  # (a fetch may have dropped a partition meanwhile)
            return out
        # nothing anywhere: wait on every partition at once, take what comes first
        tasks = {
            asyncio.ensure_future(self._fetch(p, o, self.wait_s)): p
            for p, o in self.positions.items()
        }
        done, pending = await asyncio.wait(
            tasks, timeout=self.wait_s + 5, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            result = task.result()
            if result is not None and result.records:
                out.append((tasks[task], result))
        return out

    async def _fetch(self, partition: int, offset: int, wait_s: float) -> FetchResult | None:
        try:
            return await self.topic.fetch(
                partition, offset=offset, max=self.max_records, wait_s=wait_s
            )
        except Conflict as exc:  # offset_out_of_range: retention moved log_start past it
            err = exc.body.get("error", {}) if isinstance(exc.body, dict) else {}
            if exc.code == "offset_out_of_range" and "log_start" in err:
                if self.positions.get(partition) == offset:
                    self.positions[partition] = int(err["log_start"])
                return None
            raise

    async def run(self) -> SubscriberStats:
        """Join, then handle and commit until `stop()`; leaves the group at the end."""
        await self.join()
        heartbeat_every = self.session_timeout_s / 3
        last_beat = time.monotonic()
        try:
            while not self._stop.is_set():
                if time.monotonic() - last_beat >= heartbeat_every:
                    await self.heartbeat()
                    last_beat = time.monotonic()
                generation = self.generation
                for partition, result in await self._fetch_some():
                    if self.generation != generation or partition not in self.positions:
                        break  # a rebalance happened meanwhile: fetch again
                    for record in result.records:
                        outcome = self.handler(record)
                        if inspect.isawaitable(outcome):
                            await outcome
                        self.stats.handled += 1
                    if await self._commit(partition, result.next_offset):
                        self.positions[partition] = result.next_offset
                        last_beat = time.monotonic()  # a commit restarts the session too
                    else:
                        break
        finally:
            with contextlib.suppress(RaftqError):
                await self.leave()
        return self.stats
