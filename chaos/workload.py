"""Client workloads for chaos runs, recorded op by op into a History.

Why raw aiohttp and not the raftq client: the checker must see every status code to classify
each operation exactly (CHAOS.md): `ok` = acknowledged 2xx; `fail` = definitely not applied
(400/404/409/413, `503 no_leader`, or a connection that was refused before anything was
sent); `info` = everything else (timeouts, resets, other 5xx incl. `503 leader_changed`,
`504`). The client library's transparent retries would hide exactly what we need to count.

Two workloads:
- `QueueWorkload` (at-least-once): producers send unique values `p{process}-{seq}` with the
  value as dedup id, retrying indeterminate sends with the same id; consumers receive and ack.
  Optional zombie consumers receive, "die" past the lease and ack late: that ack must be stale.
- `PipelineWorkload` (exactly-once): producers fill `in`; workers receive, transform and
  commit one transaction per message (ack `in` + send to `out`) with a txn_id derived from the
  input message id, retrying indeterminate commits with the same txn_id. Each input must
  appear exactly once in `out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from chaos.history import FAIL, INFO, OK, History
from cluster.discovery import REDIRECT_HEADERS as REDIRECT
from cluster.watch import Abandoned, await_or_abandon

log = structlog.get_logger("chaos.workload")

DEFINITE_STATUSES = frozenset({400, 404, 409, 413})
MAX_REDIRECTS = 3


@dataclass(slots=True)
class Outcome:
    """The classified result of one HTTP operation (after following leader redirects)."""

    type: str  # ok | fail | info
    status: int | None
    body: Any
    node: int | None
    error: str | None = None


def classify(status: int, body: Any) -> str:
    """ok / fail / info for a final (non-redirect) HTTP status, per docs/API.md."""
    if 200 <= status < 300:
        return OK
    if status in DEFINITE_STATUSES:
        return FAIL
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    if status == 503 and code == "no_leader":
        return FAIL
    return INFO


class Api:
    """HTTP calls through the client proxies, with leader discovery by 307 hints.

    `urls` maps node id to the URL the client uses (its client proxy); `real_urls` maps each
    node's own URL (what 307 hints carry) back to its id. `leader_hint()` may tell the
    current leader (the runner's monitor); otherwise the last redirect target is kept and a
    failure rotates to a random node. Like the raftq client's leader check, a request
    unanswered for `leader_check_s` is abandoned (recorded `info`) once the hint names
    another leader, instead of waiting out the timeout on a hung one.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: dict[int, str],
        real_urls: dict[str, int],
        rng: random.Random,
        timeout_s: float = 5.0,
        leader_hint: Callable[[], int | None] | None = None,
        leader_check_s: float = 1.0,
    ) -> None:
        self.session = session
        self.urls = urls
        self.real_urls = real_urls
        self.rng = rng
        self.timeout_s = timeout_s
        self.leader_hint = leader_hint
        self.leader_check_s = leader_check_s
        self.preferred: int = min(urls)

    def pick(self) -> int:
        if self.leader_hint is not None:
            hinted = self.leader_hint()
            if hinted in self.urls:
                return hinted
        return self.preferred

    def _node_for_hint(self, body: Any, location: str | None) -> int | None:
        if isinstance(body, dict):
            err = body.get("error") or {}
            lid = err.get("leader_id")
            if isinstance(lid, int) and lid in self.urls:
                return lid
            url = err.get("leader_url")
            if isinstance(url, str) and url.rstrip("/") in self.real_urls:
                return self.real_urls[url.rstrip("/")]
        if location:
            for real, node in self.real_urls.items():
                if location.startswith(real):
                    return node
        return None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        node: int | None = None,
        timeout_s: float | None = None,
    ) -> Outcome:
        target = self.pick() if node is None else node
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        for _ in range(MAX_REDIRECTS + 1):
            url = self.urls[target] + path
            try:
                exchange = self._exchange(method, url, body, timeout)
                status, data, location = await self._watching_leader(target, exchange)
            except Abandoned as moved:
                self.preferred = moved.reason
                error = f"abandoned after {moved.waited_s:.1f}s: node {moved.reason} leads now"
                return Outcome(INFO, None, None, target, error)
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: definitely not applied.
                self._rotate(target)
                return Outcome(FAIL, None, None, target, f"connect: {exc.__class__.__name__}")
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._rotate(target)
                return Outcome(INFO, None, None, target, f"{exc.__class__.__name__}: {exc}"[:200])
            if status == 307:
                nxt = self._node_for_hint(data, location)
                if nxt is None or nxt == target:
                    return Outcome(FAIL, status, data, target, "redirect to unknown leader")
                target = self.preferred = nxt
                continue
            kind = classify(status, data)
            if kind != OK:
                self._rotate(target)
            else:
                self.preferred = target
            err = None
            if kind != OK and isinstance(data, dict):
                err = f"{status} {(data.get('error') or {}).get('code')}"
            elif kind != OK:
                err = str(status)
            return Outcome(kind, status, data, target, err)
        return Outcome(FAIL, 307, None, target, "too many redirects")

    async def _exchange(
        self, method: str, url: str, body: Any, timeout: aiohttp.ClientTimeout
    ) -> tuple[int, Any, str | None]:
        """One HTTP request: (status, decoded JSON body or None, Location header)."""
        async with self.session.request(
            method, url, json=body, timeout=timeout, headers=REDIRECT, allow_redirects=False
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            return resp.status, data, resp.headers.get("Location")

    async def _watching_leader(
        self, target: int, exchange: Awaitable[tuple[int, Any, str | None]]
    ) -> tuple[int, Any, str | None]:
        """Await `exchange` with `target`; give it up once the hint names another leader."""
        hint = self.leader_hint
        if hint is None:
            return await exchange

        async def another_leader() -> int | None:
            hinted = hint()
            return (
                hinted if hinted is not None and hinted != target and hinted in self.urls else None
            )

        return await await_or_abandon(exchange, another_leader, self.leader_check_s, growth=1.0)

    def _rotate(self, failed: int) -> None:
        others = [n for n in self.urls if n != failed]
        if others:
            self.preferred = self.rng.choice(others)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


@dataclass
class WorkloadConfig:
    producers: int = 3
    consumers: int = 2
    visibility_timeout_s: int = 4
    op_pause_s: float = 0.02  # keeps the op rate bounded on shared CPUs
    receive_max: int = 10
    max_fail_retries: int = 3
    zombie_rate: float = 0.0  # chance a consumer/worker stalls past its lease before acking
    readers: int = 1
    fifo: bool = True  # QueueWorkload: odd values go to a FIFO queue, one group per producer
    drain_empty_polls: int = 2  # plus the queue's own stats must show it empty
    drain_timeout_s: float = 60.0


class Workload:
    """Base: producer loop, consumer helpers and the final drain; subclasses pick the queues."""

    kind = "base"
    source_queue = "q"

    def __init__(
        self, api_factory: Callable[[str], Api], history: History, cfg: WorkloadConfig
    ) -> None:
        self.api_factory = api_factory
        self.history = history
        self.cfg = cfg
        self.stop_producing = asyncio.Event()
        self.stop_consuming = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.drain_timeouts: list[str] = []  # queues not found empty: P1 may be overstated

    def queues(self) -> list[str]:
        return [self.source_queue]

    async def setup(self) -> None:
        """Create the queues (retrying: the cluster may still be settling)."""
        api = self.api_factory("setup")
        for name in self.queues():
            body: dict[str, Any] = {"visibility_timeout_s": self.cfg.visibility_timeout_s}
            if name.endswith(".fifo"):
                body["fifo"] = True
            for _ in range(100):
                res = await api.call("PUT", f"/v1/queues/{name}", body)
                if res.type == OK:
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"could not create queue {name}")

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for p in range(self.cfg.producers):
            self._tasks.append(loop.create_task(self._producer(p)))
        for r in range(self.cfg.readers):
            self._tasks.append(loop.create_task(self._reader(r)))
        self._start_consumers()

    async def _reader(self, r: int) -> None:
        """Linearizable queue stats from a random node: `sent_total` must never be below the
        number of sends acknowledged before the read began (a stale read otherwise)."""
        api = self.api_factory(f"r{r}")
        process = f"r{r}"
        while not self.stop_producing.is_set():
            queue = api.rng.choice(self.queues())
            node = api.rng.choice(sorted(api.urls))
            op = self.history.invoke(process, "read", queue, node)
            res = await api.call("GET", f"/v1/queues/{queue}", node=node)
            body = res.body if isinstance(res.body, dict) else {}
            done = self.history.complete(
                op,
                res.type,
                value=body.get("sent_total") if res.type == OK else None,
                node=res.node,
                error=res.error,
            )
            done.meta = {"queue": queue}
            await _sleep_or_stop(self.stop_producing, 0.1)

    def _start_consumers(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        self.stop_producing.set()
        self.stop_consuming.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---------------------------------------------------------------- producing

    async def _producer(self, p: int) -> None:
        api = self.api_factory(f"p{p}")
        process = f"p{p}"
        seq = 0
        while not self.stop_producing.is_set():
            seq += 1
            value = f"p{p}-{seq}"
            queue = self.queue_for(seq)
            await self.send_until_resolved(
                api, process, queue, value, group=f"g{p}" if queue.endswith(".fifo") else None
            )
            await _sleep_or_stop(self.stop_producing, self.cfg.op_pause_s)

    def queue_for(self, seq: int) -> str:
        return self.source_queue

    async def send_until_resolved(
        self, api: Api, process: str, queue: str, value: str, group: str | None = None
    ) -> None:
        """Send one value; retry indeterminate outcomes with the same dedup id until ok.

        Definite failures are retried a few times, then the value is abandoned (a value whose
        every send failed must never be observed: P3). After the stop, an unresolved value
        stays indeterminate (the drain tells whether it landed: `recovered`).
        """
        fails = 0
        message: dict[str, Any] = {"body": value, "dedup_id": value}
        if group is not None:
            message["group_id"] = group
        while True:
            op = self.history.invoke(process, "send", value, api.pick())
            res = await api.call(
                "POST",
                f"/v1/queues/{queue}/messages",
                {"messages": [message]},
            )
            meta: dict[str, Any] = {"queue": queue}
            if res.type == OK:
                msgs = (res.body or {}).get("messages") or [{}]
                meta.update(
                    id=msgs[0].get("id"), seq=msgs[0].get("seq"), dup=msgs[0].get("duplicate")
                )
            done = self.history.complete(op, res.type, node=res.node, error=res.error)
            done.meta = meta
            if res.type == OK:
                return
            if res.type == FAIL:
                fails += 1
                if fails > self.cfg.max_fail_retries:
                    return
            if self.stop_producing.is_set():
                return
            await asyncio.sleep(0.05 + api.rng.random() * 0.15)

    # ---------------------------------------------------------------- consuming

    async def receive(
        self, api: Api, process: str, queue: str, wait_s: float = 1.0
    ) -> list[dict[str, Any]]:
        """One receive op; the ok record's value is [[id, body], ...]."""
        op = self.history.invoke(process, "receive", None, api.pick())
        res = await api.call(
            "POST",
            f"/v1/queues/{queue}/receive",
            {"max": self.cfg.receive_max, "wait_s": wait_s},
            timeout_s=api.timeout_s + wait_s,
        )
        msgs: list[dict[str, Any]] = []
        if res.type == OK:
            msgs = [m for m in (res.body or {}).get("messages", []) if isinstance(m, dict)]
        done = self.history.complete(
            op,
            res.type,
            value=[[m.get("id"), m.get("body")] for m in msgs] if res.type == OK else None,
            node=res.node,
            error=res.error,
        )
        done.meta = {"queue": queue}
        return msgs

    async def ack(
        self, api: Api, process: str, queue: str, msgs: list[dict[str, Any]], f: str = "ack"
    ) -> Any:
        op = self.history.invoke(process, f, [m.get("id") for m in msgs], api.pick())
        res = await api.call(
            "POST", f"/v1/queues/{queue}/ack", {"receipts": [m["receipt"] for m in msgs]}
        )
        done = self.history.complete(op, res.type, node=res.node, error=res.error)
        body = res.body if isinstance(res.body, dict) else {}
        done.meta = {"queue": queue, "acked": body.get("acked"), "stale": body.get("stale")}
        return res

    async def _consumer(self, c: int, queue: str) -> None:
        api = self.api_factory(f"c{c}")
        process = f"c{c}"
        rng = api.rng
        while not self.stop_consuming.is_set():
            msgs = await self.receive(api, process, queue)
            if msgs:
                if self.cfg.zombie_rate and rng.random() < self.cfg.zombie_rate:
                    # Die after receive: outlive the lease, then ack late (must be stale).
                    await asyncio.sleep(self.cfg.visibility_timeout_s + 1.5)
                    await self.ack(api, process, queue, msgs, f="late_ack")
                else:
                    await self.ack(api, process, queue, msgs)
            await _sleep_or_stop(self.stop_consuming, self.cfg.op_pause_s)

    # ---------------------------------------------------------------- draining

    async def queue_stats(self, api: Api, queue: str) -> dict[str, Any] | None:
        res = await api.call("GET", f"/v1/queues/{queue}")
        return res.body if res.type == OK and isinstance(res.body, dict) else None

    async def drain_queue(self, queue: str, process: str = "drain") -> None:
        """Receive and ack until several empty polls in a row and the queue reports empty."""
        api = self.api_factory(process)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.drain_timeout_s
        empty = 0
        while loop.time() < deadline:
            msgs = await self.receive(api, process, queue, wait_s=1.0)
            if msgs:
                empty = 0
                await self.ack(api, process, queue, msgs)
                continue
            empty += 1
            if empty >= self.cfg.drain_empty_polls:
                stats = await self.queue_stats(api, queue)
                if stats is not None and not any(
                    stats.get(k) for k in ("depth", "in_flight", "delayed")
                ):
                    return
        log.warning("workload.drain_timeout", queue=queue)
        self.drain_timeouts.append(queue)

    async def drain(self) -> None:
        raise NotImplementedError


class QueueWorkload(Workload):
    """At-least-once: send with dedup ids, receive, ack."""

    kind = "queue"
    fifo_queue = "f.fifo"

    def queues(self) -> list[str]:
        return [self.source_queue, self.fifo_queue] if self.cfg.fifo else [self.source_queue]

    def queue_for(self, seq: int) -> str:
        return self.fifo_queue if self.cfg.fifo and seq % 2 == 1 else self.source_queue

    def _start_consumers(self) -> None:
        loop = asyncio.get_running_loop()
        queues = self.queues()
        for c in range(self.cfg.consumers * len(queues)):
            queue = queues[c % len(queues)]
            self._tasks.append(loop.create_task(self._consumer(c, queue)))

    async def drain(self) -> None:
        self.stop_consuming.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for queue in self.queues():
            await self.drain_queue(queue)


class PipelineWorkload(Workload):
    """Exactly-once: in → (receive, transform, txn{ack in, send out}) → out."""

    kind = "pipeline"
    source_queue = "in"

    def queues(self) -> list[str]:
        return ["in", "out"]

    def _start_consumers(self) -> None:
        loop = asyncio.get_running_loop()
        for w in range(self.cfg.consumers):
            self._tasks.append(loop.create_task(self._worker(w)))

    async def _worker(self, w: int) -> None:
        api = self.api_factory(f"w{w}")
        process = f"w{w}"
        while not self.stop_consuming.is_set():
            msgs = await self.receive(api, process, "in")
            if msgs and self.cfg.zombie_rate and api.rng.random() < self.cfg.zombie_rate:
                # A stalled worker: its leases expire and others take over; its commits
                # must then be refused (409 stale receipt), never applied twice.
                await asyncio.sleep(self.cfg.visibility_timeout_s + 1.5)
            for m in msgs:
                await self.commit(api, process, m)
            await _sleep_or_stop(self.stop_consuming, self.cfg.op_pause_s)

    async def commit(self, api: Api, process: str, msg: dict[str, Any]) -> None:
        """One transaction per input; indeterminate outcomes retry with the same txn_id."""
        value = msg.get("body")
        txn = {
            "txn_id": f"txn-in-{msg.get('id')}",
            "ack": [{"queue": "in", "receipt": msg["receipt"]}],
            "send": [{"queue": "out", "messages": [{"body": f"out:{value}"}]}],
        }
        for _attempt in range(20):
            op = self.history.invoke(process, "txn", value, api.pick())
            res = await api.call("POST", "/v1/transactions", txn)
            done = self.history.complete(op, res.type, node=res.node, error=res.error)
            done.meta = {"txn_id": txn["txn_id"], "in_id": msg.get("id")}
            if res.type == OK or (res.type == FAIL and res.status in DEFINITE_STATUSES):
                return  # committed, or refused for good (e.g. 409 stale: lease expired)
            await asyncio.sleep(0.05 + api.rng.random() * 0.15)

    async def drain(self) -> None:
        # Workers finish `in` (they keep running until it is empty), then `out` is read.
        api = self.api_factory("drain")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.drain_timeout_s
        quiet = 0
        while loop.time() < deadline and quiet < 3:
            stats = await self.queue_stats(api, "in")
            busy = stats is None or any(stats.get(k) for k in ("depth", "in_flight", "delayed"))
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.5)
        if quiet < 3:
            log.warning("workload.pipeline_in_not_empty")
            self.drain_timeouts.append("in")
        self.stop_consuming.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.drain_queue("out")


WORKLOADS: dict[str, type[Workload]] = {"queue": QueueWorkload, "pipeline": PipelineWorkload}
