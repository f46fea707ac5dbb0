"""The queue workloads of `raftq bench`: each loads the cluster one way and times it.

`Bench` runs them against the leader: raw HTTP through `LeanHttp` for the API workloads,
the client library's consumer loops for `consume` and `consume-eo`, and the admin API
for the snapshot workload. Each returns `Result` rows (messages/s, requests/s, latency
percentiles, errors, and the cores each process kept busy when the bench started the
cluster itself).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.lean_http import LeanHttp
from benchmarks.process_probe import CpuProbe, rss_mb
from cluster.client import AsyncClient
from cluster.errors import Conflict
from cluster.launcher import LocalCluster, free_ports
from cluster.message import Message
from cluster.transactions import exactly_once_consumer

SNAP_IDLE, SNAP_BUSY = "send100/idle", "send100/snap"  # the snapshot workload's pair


_MASK_80 = (1 << 80) - 1


def ordered_ids(n: int) -> list[str]:
    """`n` ids laid out as the client's `new_dedup_id` (ms time, then 80 bits), made faster.

    The load generator shares the cores with the cluster it measures: 100 calls of
    `new_dedup_id` (100 urandom calls) cost it 130 us per request, this 55 us. The server
    sees the same shape: 32 hex characters, time-ordered, unique.
    """
    ms = time.time_ns() // 1_000_000
    base = int.from_bytes(os.urandom(10), "big")
    return [f"{ms:012x}{(base + i) & _MASK_80:020x}" for i in range(n)]


def random_ids(n: int) -> list[str]:
    """`n` random uuid4 ids (`--random-dedup-ids`)."""
    return [uuid.uuid4().hex for _ in range(n)]


@dataclass
class Result:
    workload: str
    ops: int
    msgs: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    note: str = ""
    #: cores busy during the run, per process ("leader", "follower N", "bench"); own cluster only
    cpu: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.msgs / self.seconds if self.seconds else 0.0

    def row(self) -> list[str]:
        lat = sorted(self.latencies_ms) or [0.0]
        p50 = lat[len(lat) // 2]
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return [
            self.workload,
            f"{self.rate:,.0f}",
            f"{self.ops / self.seconds:,.0f}" if self.seconds else "0",
            f"{p50:.2f}",
            f"{p99:.2f}",
            str(self.errors),
            self.note,
        ]


class CompletionTimingClient(AsyncClient):
    """The client of the consume workloads: times and counts the requests completing messages.

    Every call of the client library goes through the public `AsyncClient.request`, so
    the bench measures there, from outside the consumer loop: when an ack request
    (`POST .../ack`) or an exactly-once transaction (`POST /v1/transactions`) is answered,
    each receipt it carried whose handler start is in `started_at` gets its latency, from
    that start to the answer. A transaction refused for a stale receipt (409) ended its
    deliveries too, as stale, so it counts as well. `ack_requests` counts the ack requests
    sent (concurrent handlers' acks share requests).
    """

    def __init__(self, servers: list[str], started_at: dict[str, float], **options: Any) -> None:
        super().__init__(servers, **options)
        self.started_at = started_at
        self.latencies_ms: list[float] = []
        self.ack_requests = 0

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        body = kwargs.get("json_body")
        if method != "POST" or not isinstance(body, dict):
            return await super().request(method, path, **kwargs)
        if path.endswith("/ack"):
            self.ack_requests += 1
            receipts = list(body.get("receipts") or ())
        elif path == "/v1/transactions":
            receipts = [item["receipt"] for item in body.get("ack") or ()]
        else:
            return await super().request(method, path, **kwargs)
        try:
            answer = await super().request(method, path, **kwargs)
        except Conflict:
            if path == "/v1/transactions":
                self._completed(receipts)
            raise
        self._completed(receipts)
        return answer

    def _completed(self, receipts: list[str]) -> None:
        now = time.perf_counter()
        for receipt in receipts:
            started = self.started_at.pop(receipt, None)
            if started is not None:
                self.latencies_ms.append((now - started) * 1000)


class Bench:
    """The workloads against the leader at `leader_url`, each for `duration_s` seconds."""

    def __init__(
        self,
        leader_url: str,
        http: LeanHttp,
        duration_s: float,
        cpu_probe: CpuProbe | None = None,
        servers: list[str] | None = None,
    ) -> None:
        self.url = leader_url
        self.servers = servers or [leader_url]
        self.http = http
        self.duration_s = duration_s
        self.cpu_probe = cpu_probe

    def cpu_sample(self) -> dict[str, float] | None:
        return self.cpu_probe.sample() if self.cpu_probe is not None else None

    def cores_busy(
        self, before: dict[str, float] | None, elapsed: float
    ) -> dict[str, float] | None:
        """Cores each process kept busy since `before` (a cpu_sample) over `elapsed` seconds."""
        if self.cpu_probe is None or before is None or elapsed <= 0:
            return None
        after = self.cpu_probe.sample()
        return {k: (after[k] - before[k]) / elapsed for k in after}

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, data = await self.http.request("POST", path, body)
        if status >= 300:
            raise RuntimeError(f"{path}: {status} {data}")
        return data

    async def put_queue(self, name: str, **config: Any) -> None:
        status, data = await self.http.request("PUT", f"/v1/queues/{name}", config)
        if status >= 300:
            raise RuntimeError(f"create {name}: {status} {data}")

    async def run_loop(
        self, name: str, workers: int, op: Callable[[int], Awaitable[int]], note: str = ""
    ) -> Result:
        """Run `op` in `workers` concurrent loops for duration_s; op returns messages done.

        An op that did nothing (0: a receive found the queue empty) is counted and named in
        the note: the rate of a run that drained its queue says nothing about the cluster.
        """
        latencies: list[float] = []
        counts = {"ops": 0, "msgs": 0, "errors": 0, "empty": 0}
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + self.duration_s
        seq = itertools.count()

        async def worker() -> None:
            while loop.time() < stop_at:
                t0 = time.perf_counter()
                try:
                    n = await op(next(seq))
                except Exception:
                    counts["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                counts["ops"] += 1
                counts["msgs"] += n
                if n == 0:
                    counts["empty"] += 1

        cpu_before = self.cpu_sample()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - started
        cpu = self.cores_busy(cpu_before, elapsed)
        if counts["empty"]:
            note += f"; the queue ran empty ({counts['empty']} ops): raise --prefill"
        return Result(
            name, counts["ops"], counts["msgs"], elapsed, latencies, counts["errors"], note, cpu
        )

    async def send1(self, concurrency: int) -> Result:
        await self.put_queue("bench-send1")
        body = {"messages": [{"body": "x" * 100}]}
        return await self.run_loop(
            "send1",
            concurrency,
            lambda _i: self._send("bench-send1", body),
            f"1 msg/request, {concurrency} in flight",
        )

    async def send100(self, concurrency: int, dedup: bool, random_ids: bool = False) -> Result:
        """100 messages per request; with `dedup`, each carries an id the queue remembers.

        The ids are what the client generates (time-ordered) unless `random_ids` (uuid4).
        """
        name = "bench-send100dd" if dedup else "bench-send100"
        await self.put_queue(name)
        make_ids = random_ids if random_ids else ordered_ids

        async def op(_i: int) -> int:
            msgs = [{"body": "x" * 100} for _ in range(100)]
            if dedup:
                for m, dedup_id in zip(msgs, make_ids(100), strict=True):
                    m["dedup_id"] = dedup_id
            return await self._send(name, {"messages": msgs})

        label = "send100dd" if dedup else "send100"
        return await self.run_loop(
            label,
            concurrency,
            op,
            f"100 msgs/request{' + dedup ids' if dedup else ''}, {concurrency} in flight",
        )

    async def e2e(self, rate: int) -> Result:
        """One message per request at a steady `rate` per second while one long-polling
        receiver (up to 10 per receive) takes and acks them: the send-to-receive latency
        of each message (W4's shape in the peer benchmark), over the raw API."""
        name = "bench-e2e"
        await self.put_queue(name, visibility_timeout_s=60)
        loop = asyncio.get_running_loop()
        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        acks: set[asyncio.Task[Any]] = set()
        counts = {"sent": 0, "errors": 0}
        producing = True

        async def producer() -> None:
            nonlocal producing
            stop_at = loop.time() + self.duration_s
            next_at = loop.time()
            sends: set[asyncio.Task[None]] = set()

            async def send(key: str) -> None:
                try:
                    await self._send(name, {"messages": [{"body": key + "x" * 92}]})
                except Exception:
                    sent_at.pop(key, None)
                    counts["errors"] += 1

            while loop.time() < stop_at:  # at the rate, not waiting for each answer
                key = f"{counts['sent']:08d}"
                counts["sent"] += 1
                sent_at[key] = time.perf_counter()
                task = asyncio.ensure_future(send(key))
                sends.add(task)
                task.add_done_callback(sends.discard)
                next_at += 1.0 / rate
                await asyncio.sleep(max(0.0, next_at - loop.time()))
            await asyncio.gather(*sends)
            producing = False

        async def consumer() -> None:
            give_up = None
            while producing or (sent_at and loop.time() < (give_up or float("inf"))):
                if not producing and give_up is None:
                    give_up = loop.time() + 5.0
                data = await self.post(f"/v1/queues/{name}/receive", {"max": 10, "wait_s": 1})
                now = time.perf_counter()
                receipts = []
                for m in data.get("messages", []):
                    t0 = sent_at.pop(m["body"][:8], None)
                    if t0 is not None:
                        latencies.append((now - t0) * 1000)
                    receipts.append(m["receipt"])
                if receipts:  # acked beside the next receive, as a consumer loop does
                    task = asyncio.ensure_future(
                        self.post(f"/v1/queues/{name}/ack", {"receipts": receipts})
                    )
                    acks.add(task)
                    task.add_done_callback(acks.discard)

        cpu_before = self.cpu_sample()
        started = time.perf_counter()
        await asyncio.gather(producer(), consumer())
        await asyncio.gather(*acks)
        elapsed = time.perf_counter() - started
        return Result(
            "e2e",
            len(latencies),
            len(latencies),
            elapsed,
            latencies,
            counts["errors"] + len(sent_at),
            f"{rate} msgs/s sent one per request; latency = send start -> received",
            self.cores_busy(cpu_before, elapsed),
        )

    async def _send(self, queue: str, body: dict[str, Any]) -> int:
        data = await self.post(f"/v1/queues/{queue}/messages", body)
        return len(data["messages"])

    async def prefill(
        self, queue: str, count: int, body_bytes: int = 100, concurrency: int = 8
    ) -> None:
        chunks = [min(1000, count - i) for i in range(0, count, 1000)]
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with sem:
                await self.post(
                    f"/v1/queues/{queue}/messages",
                    {"messages": [{"body": "y" * body_bytes} for _ in range(n)]},
                )

        await asyncio.gather(*(one(n) for n in chunks))

    async def recvack(self, concurrency: int, prefill: int) -> Result:
        await self.put_queue("bench-recv", visibility_timeout_s=300)
        await self.prefill("bench-recv", prefill)

        async def op(_i: int) -> int:
            got = await self.post("/v1/queues/bench-recv/receive", {"max": 10})
            receipts = [m["receipt"] for m in got["messages"]]
            if not receipts:
                return 0
            await self.post("/v1/queues/bench-recv/ack", {"receipts": receipts})
            return len(receipts)

        return await self.run_loop(
            "recvack", concurrency, op, f"batches of 10, {concurrency} consumers"
        )

    async def consume(self, concurrency: int, prefill: int, exactly_once: bool = False) -> Result:
        """The client library's consumer loop for duration_s: `queue.consume`, or with
        `exactly_once` `queue.consume_exactly_once` writing each body to an output queue.

        The handler does nothing (returns the body), so this is the library's own cost per
        message: receive for the free handler slots, a lease keeper per message, and the
        ack or the 1-ack-1-send transaction (completions that finish together share
        requests). A message's latency runs from its handler's start to the answer of the
        ack or transaction request that completed it (`CompletionTimingClient`).
        """
        name = "consume-eo" if exactly_once else "consume"
        source = f"bench-{name}"
        await self.put_queue(source, visibility_timeout_s=300)
        if exactly_once:
            await self.put_queue(f"{source}-out")
        await self.prefill(source, prefill)
        started_at: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        async with CompletionTimingClient(self.servers, started_at, timeout_s=30) as client:
            q = client.queue(source)

            async def handler(msg: Message) -> Any:
                started_at[msg.receipt] = time.perf_counter()
                return msg.body

            stop = asyncio.Event()
            options: dict[str, Any] = {
                "concurrency": concurrency,
                "stop_event": stop,
                "handle_signals": False,
                "poll_wait_s": 1.0,
            }
            if exactly_once:
                consumer = exactly_once_consumer(q, handler, output=f"{source}-out", **options)
            else:
                consumer = q.consumer(handler, **options)
            loop.call_later(self.duration_s, stop.set)
            cpu_before = self.cpu_sample()
            t0 = time.perf_counter()
            stats = await consumer.run()
            elapsed = time.perf_counter() - t0
            left = (await q.info()).get("depth", 0)
        note = (
            f"queue.{'consume_exactly_once' if exactly_once else 'consume'}, {concurrency} handlers"
        )
        if not exactly_once:
            note += f"; {stats.succeeded / max(1, client.ack_requests):.1f} acks/ack request"
        if not left:
            note += "; the queue ran empty: raise --prefill"
        return Result(
            name,
            stats.succeeded,
            stats.succeeded,
            elapsed,
            client.latencies_ms,
            stats.failed + stats.stale,
            note,
            self.cores_busy(cpu_before, elapsed),
        )

    async def txn(self, workers: int, prefill: int) -> Result:
        await self.put_queue("bench-txn-in", visibility_timeout_s=300)
        await self.put_queue("bench-txn-out")
        await self.prefill("bench-txn-in", prefill)

        async def op(i: int) -> int:
            got = await self.post("/v1/queues/bench-txn-in/receive", {"max": 1})
            if not got["messages"]:
                return 0
            await self.move_in_txn(got["messages"][0], "bench-txn-in", "bench-txn-out")
            return 1

        return await self.run_loop(
            "txn", workers, op, f"receive + 1-ack-1-send txn, {workers} workers"
        )

    async def move_in_txn(self, m: dict[str, Any], source: str, target: str) -> None:
        """One 1-ack-1-send transaction: ack `m` on `source`, send its body to `target`."""
        await self.post(
            "/v1/transactions",
            {
                "txn_id": f"bench-{m['id']}",
                "ack": [{"queue": source, "receipt": m["receipt"]}],
                "send": [{"queue": target, "messages": [{"body": m["body"]}]}],
            },
        )

    async def txn_consumer(self, workers: int, prefill: int) -> Result:
        """The txn workload shaped like `consume_exactly_once(concurrency=workers)`.

        One receive loop takes as many messages as there are free handler slots (so one
        receive serves many transactions), and each message gets its own 1-ack-1-send
        transaction; `workers` transactions are in flight at most.
        """
        await self.put_queue("bench-txnc-in", visibility_timeout_s=300)
        await self.put_queue("bench-txnc-out")
        await self.prefill("bench-txnc-in", prefill)
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + self.duration_s
        slots = asyncio.Semaphore(workers)
        latencies: list[float] = []
        counts = {"receives": 0, "txns": 0, "errors": 0}
        tasks: set[asyncio.Task[None]] = set()

        async def commit(m: dict[str, Any], t0: float) -> None:
            try:
                await self.move_in_txn(m, "bench-txnc-in", "bench-txnc-out")
                latencies.append((time.perf_counter() - t0) * 1000)
                counts["txns"] += 1
            except Exception:
                counts["errors"] += 1
            finally:
                slots.release()

        cpu_before = self.cpu_sample()
        started = time.perf_counter()
        while loop.time() < stop_at:
            await slots.acquire()
            free = 1
            while not slots.locked() and free < workers:
                await slots.acquire()
                free += 1
            t0 = time.perf_counter()
            try:
                got = await self.post("/v1/queues/bench-txnc-in/receive", {"max": free})
            except Exception:
                got = {"messages": []}
                counts["errors"] += 1
            counts["receives"] += 1
            msgs = got["messages"]
            for _ in range(free - len(msgs)):
                slots.release()
            for m in msgs:
                task = asyncio.ensure_future(commit(m, t0))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        per_receive = counts["txns"] / max(1, counts["receives"])
        return Result(
            "txn-consumer",
            counts["txns"],
            counts["txns"],
            elapsed,
            latencies,
            counts["errors"],
            f"receive up to free slots + 1-ack-1-send txns, {workers} in flight, "
            f"{per_receive:.1f} txns/receive",
            self.cores_busy(cpu_before, elapsed),
        )

    async def memory(self, count: int, cluster: LocalCluster | None) -> Result:
        await self.put_queue("bench-memory", visibility_timeout_s=300)
        t0 = time.perf_counter()
        await self.prefill("bench-memory", count, concurrency=4)
        fill_s = time.perf_counter() - t0
        latencies = []
        for _ in range(200):
            t = time.perf_counter()
            await self.post("/v1/queues/bench-memory/receive", {"max": 1})
            latencies.append((time.perf_counter() - t) * 1000)
        rss = ""
        if cluster is not None:
            rss = ", ".join(
                f"node{i} {rss_mb(pid):.0f} MB" for i, pid in sorted(cluster.pids.items())
            )
        return Result(
            "memory",
            200,
            200,
            sum(latencies) / 1000,
            latencies,
            0,
            f"{count:,} msgs filled in {fill_s:.0f}s; RSS {rss or 'n/a (external cluster)'}",
        )

    async def snapshot(
        self, count: int, cluster: LocalCluster | None, concurrency: int
    ) -> list[Result]:
        """What snapshots cost and buy, in one run.

        Fill `count` waiting 100-byte messages; the leader writes a snapshot of that state
        (its size and time); then send100 without and with the leader writing snapshots back
        to back, taking turns twice, so the drift of the machine falls on both alike; then
        (own cluster only) a fresh node joins and is timed until it is a voter.
        """
        await self.put_queue("bench-snap", visibility_timeout_s=3600)
        t0 = time.perf_counter()
        await self.prefill("bench-snap", count, concurrency=4)
        fill_s = time.perf_counter() - t0
        snap = await self.post("/v1/admin/snapshot", {})
        took = float(snap["seconds"])
        results = [
            Result(
                "snapshot",
                1,
                count,
                took,
                [took * 1000],
                0,
                f"{count:,} waiting msgs (filled in {fill_s:.0f}s): "
                f"{snap['bytes'] / 1e6:,.1f} MB written in {took:.2f}s",
            )
        ]
        for _turn in range(2):
            idle = await self.send100(concurrency, dedup=False)
            idle.workload, idle.note = SNAP_IDLE, "send100, no snapshot being written"
            results.append(idle)
            busy, written, busy_s = await self._while_snapshotting(
                self.send100(concurrency, dedup=False)
            )
            busy.workload = SNAP_BUSY
            busy.note = (
                f"send100 while the leader wrote {written} snapshots "
                f"({min(busy_s / busy.seconds, 1.0):.0%} of the time)"
            )
            results.append(busy)
        if cluster is not None:
            # the send100 turns left millions of messages of their own: the joiner is to
            # receive the `count` waiting ones the other rows are about, so those go
            await self.post("/v1/queues/bench-send100/purge", {})
            results.append(await self._catch_up(cluster, count))
        return results

    async def _while_snapshotting(self, work: Awaitable[Result]) -> tuple[Result, int, float]:
        """Run `work` while the leader writes one snapshot after another; returns its result,
        the snapshots written and the seconds spent writing them."""
        stop = asyncio.Event()
        done = {"written": 0, "seconds": 0.0}
        timeout = aiohttp.ClientTimeout(total=600)

        async def loop() -> None:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while not stop.is_set():
                    started = time.perf_counter()
                    async with session.post(self.url + "/v1/admin/snapshot", json={}) as resp:
                        await resp.read()
                        if resp.status == 200:
                            done["written"] += 1
                    done["seconds"] += time.perf_counter() - started

        task = asyncio.ensure_future(loop())
        try:
            result = await work
        finally:
            stop.set()
            await task
        return result, done["written"], done["seconds"]

    async def _catch_up(self, cluster: LocalCluster, count: int) -> Result:
        """A fresh node joins with --join and is timed until the leader lists it as a voter
        (it is promoted only once caught up); its state hash is then checked against the
        leader's at the same applied index."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await _all_applied(session, [cluster.url(i) for i in cluster.running()])
        http_port, raft_port = free_ports(2)
        node = cluster.add_node(http_port, raft_port)
        started = time.perf_counter()
        cluster.start_node(node)
        url = cluster.url(node)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while node not in (await get_json(session, self.url + "/v1/cluster/members")).get(
                "voters", []
            ):
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"node {node} was not a voter after 600 s")
                await asyncio.sleep(0.05)
            took = time.perf_counter() - started
            for _ in range(100):  # ticks may land between the two reads: try again
                lead = await get_json(session, self.url + "/v1/admin/state")
                mine = await get_json(session, url + "/v1/admin/state")
                if lead and lead == mine:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"node {node} holds a different state: {mine} != {lead}")
            view: dict[str, Any] = {}
            while not view:
                view = await get_json(session, url + "/v1/cluster")
        by = " by snapshot" if (view.get("snapshots") or {}).get("installed") else " by log"
        return Result(
            "catch-up",
            1,
            count,
            took,
            [took * 1000],
            0,
            f"a new node joins, gets {count:,} msgs{by}, is promoted to voter: {took:.1f}s",
        )


async def _all_applied(session: aiohttp.ClientSession, urls: list[str]) -> None:
    """Wait until every node applied what its leader had committed (a big purge takes a
    while on each replica): a timing that starts then measures only what follows."""
    for url in urls:
        while True:
            view = await get_json(session, url + "/v1/cluster")
            if view and view.get("applied_index", -1) >= view.get("commit_index", 0):
                break
            await asyncio.sleep(0.1)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET a JSON object; a node that is still starting answers nothing: {}."""
    try:
        async with session.get(url) as resp:
            data = await resp.json()
            return data if resp.status == 200 and isinstance(data, dict) else {}
    except (aiohttp.ClientError, OSError, ValueError):
        return {}
