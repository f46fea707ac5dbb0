"""`raftq bench`: the benchmark workloads, printing a table.

Why a command and not timed tests: throughput depends on the machine and on what else runs;
a benchmark states its setup and prints figures, a test asserts behaviour. By default it
starts its own local 3-node cluster (fsync on) in a temporary directory and stops it after;
`--servers` points it at a running cluster instead. It talks raw HTTP to the leader so the
figures measure the cluster, not client-side retry logic.

Workloads:
  send1       1 message per request, --concurrency requests in flight
  send100     100 messages per request (no dedup ids)
  send100dd   100 messages per request, each with a dedup id (time-ordered, as the client
              makes them; --random-dedup-ids for uuid4)
  recvack     receive batches of 10 and ack them (queue prefilled)
  consume     the client library's consumer loop (`queue.consume`, --consumers handlers,
              a handler that does nothing): what a worker gets, leases and acks included,
              where recvack measures the raw API (queue prefilled)
  consume-eo  the same with `queue.consume_exactly_once`: each message's ack and a copy of
              it to an output queue commit as one transaction
  txn         1-ack-1-send transactions, --txn-workers in flight (needs /v1/transactions)
  txn-consumer  the same transactions shaped like the client's consume_exactly_once: one
              receive loop takes up to the free slots at once, so receives are shared
  memory      fill one queue with --messages 100-byte messages, then report each node's
              resident memory and the latency of single receives
  snapshot    fill one queue with --messages 100-byte messages; the leader writes a
              snapshot (size, time); send100 with and without the leader writing snapshots
              back to back, taking turns twice; (own cluster) a new node joins and is timed
              until it is a voter holding the leader's state

Load: 64 requests (or consumers) in flight for send1, send100 and recvack, the issue's
figure for send1, and 32 transaction workers. On 3 nodes sharing 2 cores that saturates
the cluster, so each rate is what the cluster can take, and the latencies are those at that
load (lower concurrency gives lower latency and, below saturation, a lower rate).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from cluster.client import AsyncClient
from cluster.launcher import LocalCluster, free_ports
from cluster.message import Message
from cluster.transactions import exactly_once_consumer

WORKLOADS = (
    "send1",
    "send100",
    "send100dd",
    "recvack",
    "consume",
    "consume-eo",
    "txn",
    "txn-consumer",
    "memory",
    "snapshot",
)
SNAP_IDLE, SNAP_BUSY = "send100/idle", "send100/snap"  # the snapshot workload's pair
DEFAULT_SET = ("send1", "send100", "send100dd", "recvack", "txn")


_MASK_80 = (1 << 80) - 1


def _ordered_ids(n: int) -> list[str]:
    """`n` ids laid out as the client's `new_dedup_id` (ms time, then 80 bits), made faster.

    The load generator shares the cores with the cluster it measures: 100 calls of
    `new_dedup_id` (100 urandom calls) cost it 130 us per request, this 55 us. The server
    sees the same shape: 32 hex characters, time-ordered, unique.
    """
    ms = time.time_ns() // 1_000_000
    base = int.from_bytes(os.urandom(10), "big")
    return [f"{ms:012x}{(base + i) & _MASK_80:020x}" for i in range(n)]


def _random_ids(n: int) -> list[str]:
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


class LeanHttp:
    """A minimal HTTP/1.1 keep-alive client for the load loops.

    Why not aiohttp's client here: on a small machine the load generator shares the cores
    with the nodes it measures, and aiohttp's client costs about as much CPU per request as
    the server does. Like wrk, this sends a fixed request shape on reused connections and
    parses only the status line, Content-Length and the JSON body, so more of the machine
    is left to the cluster. It handles exactly what the bench needs (JSON in and out).
    """

    def __init__(self, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def request(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        try:
            writer.write(head + payload)
            header = await reader.readuntil(b"\r\n\r\n")
            status = int(header[9:12])
            lower = header.lower()
            at = lower.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"{path}: response without Content-Length")
            length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in lower:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, json.loads(data) if data else None

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._all.clear()
        self._idle.clear()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuProbe:
    """CPU seconds used so far by each node of a local cluster and by this process.

    Why: on a small machine the nodes and the load generator share the cores, and which
    process saturates first says what bounds a rate: the leader's per-request work, the
    replicas' apply, or the machine as a whole.
    """

    def __init__(self, cluster: LocalCluster, leader_url: str) -> None:
        self.roles = {
            ("leader" if cluster.url(i) == leader_url else f"follower {i}"): pid
            for i, pid in sorted(cluster.pids.items())
        }

    def sample(self) -> dict[str, float]:
        used = {role: cpu_seconds(pid) for role, pid in self.roles.items()}
        own = resource.getrusage(resource.RUSAGE_SELF)
        used["bench"] = own.ru_utime + own.ru_stime
        return used


class Bench:
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
        make_ids = _random_ids if random_ids else _ordered_ids

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
        requests). A message's latency runs from its handler's start to its completion.
        """
        name = "consume-eo" if exactly_once else "consume"
        source = f"bench-{name}"
        await self.put_queue(source, visibility_timeout_s=300)
        if exactly_once:
            await self.put_queue(f"{source}-out")
        await self.prefill(source, prefill)
        latencies: list[float] = []
        started_at: dict[str, float] = {}
        loop = asyncio.get_running_loop()
        async with AsyncClient(self.servers, timeout_s=30) as client:
            q = client.queue(source)

            async def handler(msg: Message) -> Any:
                started_at[msg.id] = time.perf_counter()
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
            completion = consumer._complete

            async def timed(msg: Message, result: Any) -> bool:
                done = await completion(msg, result)
                latencies.append((time.perf_counter() - started_at.pop(msg.id)) * 1000)
                return done

            consumer._complete = timed  # the loop's own completion, timed
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
            note += f"; {stats.succeeded / max(1, q._acks.requests):.1f} acks/ack request"
        if not left:
            note += "; the queue ran empty: raise --prefill"
        return Result(
            name,
            stats.succeeded,
            stats.succeeded,
            elapsed,
            latencies,
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
                f"node{i} {_rss_mb(pid):.0f} MB" for i, pid in sorted(cluster.pids.items())
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
        http_port, raft_port = free_ports(2)
        node = cluster.add_node(http_port, raft_port)
        started = time.perf_counter()
        cluster.start_node(node)
        url = cluster.url(node)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while node not in (await _get_json(session, self.url + "/v1/cluster/members")).get(
                "voters", []
            ):
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"node {node} was not a voter after 600 s")
                await asyncio.sleep(0.05)
            took = time.perf_counter() - started
            for _ in range(100):  # ticks may land between the two reads: try again
                lead = await _get_json(session, self.url + "/v1/admin/state")
                mine = await _get_json(session, url + "/v1/admin/state")
                if lead == mine:
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"node {node} holds a different state: {mine} != {lead}")
            view = await _get_json(session, url + "/v1/cluster")
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


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """GET a JSON object; a node that is still starting answers nothing: {}."""
    try:
        async with session.get(url) as resp:
            data = await resp.json()
            return data if resp.status == 200 and isinstance(data, dict) else {}
    except (aiohttp.ClientError, OSError, ValueError):
        return {}


async def _find_leader(session: aiohttp.ClientSession, servers: list[str]) -> str:
    for _ in range(100):
        for url in servers:
            try:
                async with session.get(url + "/v1/cluster") as resp:
                    view = await resp.json()
                    if view.get("leader"):
                        return view["leader"]["url"]
            except aiohttp.ClientError:
                continue
        await asyncio.sleep(0.2)
    raise RuntimeError(f"no leader among {servers}")


async def run(
    args: argparse.Namespace, servers: list[str], cluster: LocalCluster | None
) -> list[Result]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        leader_url = await _find_leader(session, servers)
    http = LeanHttp(leader_url)
    probe = CpuProbe(cluster, leader_url) if cluster is not None and _has_proc() else None
    bench = Bench(leader_url, http, args.duration, probe, servers)
    try:
        results = []
        for _round in range(args.rounds):
            for name in args.workloads:
                if name == "snapshot":
                    results.extend(
                        await bench.snapshot(args.messages, cluster, args.batch_concurrency)
                    )
                else:
                    results.append(await _run_one(bench, args, name, cluster))
        return results
    finally:
        await http.close()


async def _run_one(
    bench: Bench, args: argparse.Namespace, name: str, cluster: LocalCluster | None
) -> Result:
    if name == "send1":
        return await bench.send1(args.concurrency)
    if name == "send100":
        return await bench.send100(args.batch_concurrency, dedup=False)
    if name == "send100dd":
        return await bench.send100(
            args.batch_concurrency, dedup=True, random_ids=args.random_dedup_ids
        )
    if name == "recvack":
        return await bench.recvack(args.consumers, args.prefill)
    if name in ("consume", "consume-eo"):
        return await bench.consume(args.consumers, args.prefill, name == "consume-eo")
    if name in ("txn", "txn-consumer"):
        run = bench.txn if name == "txn" else bench.txn_consumer
        try:
            return await run(args.txn_workers, args.prefill)
        except RuntimeError as exc:
            return Result(name, 0, 0, 0, [], 1, f"unavailable: {exc}"[:80])
    assert name == "memory", name
    return await bench.memory(args.messages, cluster)


def paired_costs(results: list[Result], base: str, variant: str) -> list[float]:
    """Per turn, 1 - variant/base msgs/s: the share of throughput the variant costs.

    Paired within a turn (the two runs are seconds or minutes apart) because this machine's
    speed drifts between turns by more than the cost being measured.
    """
    plain = [r.rate for r in results if r.workload == base]
    other = [r.rate for r in results if r.workload == variant]
    return [1.0 - d / p for p, d in zip(plain, other, strict=False) if p > 0]


def dedup_costs(results: list[Result]) -> list[float]:
    """Per round, the share of batched throughput dedup ids cost (send100dd vs send100)."""
    return paired_costs(results, "send100", "send100dd")


def snapshot_costs(results: list[Result]) -> list[float]:
    """Per turn, the share of batched throughput a snapshot being written costs."""
    return paired_costs(results, SNAP_IDLE, SNAP_BUSY)


def _has_proc() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/stat")


def print_cpu(results: list[Result], out: Any = sys.stdout) -> None:
    """Per run: cores each process kept busy, and the leader's CPU per op (what req/s
    counts: a request; for txn a receive and a commit; for txn-consumer a commit)."""
    for r in results:
        if not r.cpu:
            continue
        busy = ", ".join(f"{role} {cores:.2f}" for role, cores in r.cpu.items())
        per_op = r.cpu.get("leader", 0.0) * r.seconds / r.ops * 1e6 if r.ops else 0.0
        print(f"  {r.workload}: {busy} cores; leader {per_op:,.0f} us CPU per op", file=out)


def print_table(results: list[Result], out: Any = sys.stdout) -> None:
    header = ["workload", "msgs/s", "req/s", "p50 ms", "p99 ms", "errors", "setup"]
    rows = [header] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)), file=out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raftq bench", description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="*", help=f"default: {' '.join(DEFAULT_SET)}")
    p.add_argument(
        "--servers", default=os.environ.get("RAFTQ_BENCH_SERVERS"), help="use a running cluster"
    )
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    p.add_argument(
        "--rounds", type=int, default=1, help="run the workloads this many times, in turn"
    )
    p.add_argument("--concurrency", type=int, default=64, help="send1 requests in flight")
    p.add_argument("--batch-concurrency", type=int, default=64, help="send100 requests in flight")
    p.add_argument("--consumers", type=int, default=64, help="recvack consumers, consume handlers")
    p.add_argument("--txn-workers", type=int, default=32)
    p.add_argument(
        "--prefill", type=int, default=100_000, help="messages prefilled for recvack/txn"
    )
    p.add_argument(
        "--messages",
        type=int,
        default=1_000_000,
        help="messages for the memory and snapshot workloads",
    )
    p.add_argument("--no-fsync", action="store_true", help="(own cluster) run nodes without fsync")
    p.add_argument(
        "--snapshot-trailing",
        type=int,
        help="(own cluster) log entries the nodes keep behind a snapshot (node default 5000)",
    )
    p.add_argument(
        "--random-dedup-ids",
        action="store_true",
        help="send100dd with random uuid4 ids instead of the client's time-ordered ones",
    )
    p.add_argument("--json", action="store_true")
    return p


def _logs_to_stderr() -> None:
    """Results go to stdout (`--json` must parse); the launcher's log lines to stderr.

    The stream is looked up at each log call, so a replaced sys.stderr (tests) is honoured.
    """
    if not structlog.is_configured():
        structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    _logs_to_stderr()
    args.workloads = args.workloads or list(DEFAULT_SET)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    cluster = None
    tmp = None
    if args.servers:
        servers = [s.strip().rstrip("/") for s in args.servers.split(",") if s.strip()]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="raftq-bench-")
        ports = free_ports(2 * args.nodes)
        extra = ("--log-level", "warning") + (("--unsafe-no-fsync",) if args.no_fsync else ())
        if args.snapshot_trailing is not None:
            extra += ("--snapshot-trailing", str(args.snapshot_trailing))
        cluster = LocalCluster(
            nodes=args.nodes,
            data_dir=tmp.name,
            http_port=ports[: args.nodes],
            raft_port=ports[args.nodes :],
            extra_args=extra,
        )
        cluster.start()
        cluster.wait_for_leader(timeout_s=30)
        servers = cluster.urls
    try:
        results = asyncio.run(run(args, servers, cluster))
    finally:
        if cluster is not None:
            cluster.stop_all()
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        rows = [r.__dict__ | {"row": r.row()} for r in results]
        costs = {"dedup_costs": dedup_costs(results), "snapshot_costs": snapshot_costs(results)}
        print(json.dumps({"results": rows} | costs, default=str))
    else:
        setup = f"{len(servers)} nodes, fsync {'off' if args.no_fsync else 'on'}, {os.cpu_count()} cores"
        print(f"raftq bench — {setup}, {args.duration:g}s per workload")
        print_table(results)
        if any(r.cpu for r in results):
            print("CPU during each run (1.00 = one core busy):")
            print_cpu(results)
        lat = [r.latencies_ms for r in results if r.latencies_ms]
        if lat:
            print(
                f"(median of medians {statistics.median(statistics.median(x) for x in lat):.2f} ms)"
            )
        if args.rounds > 1:
            best: dict[str, Result] = {}
            for r in results:
                if r.workload not in best or r.rate > best[r.workload].rate:
                    best[r.workload] = r
            print(f"best of {args.rounds} rounds:")
            print_table(list(best.values()))
        for label, costs in (
            ("dedup cost per round (1 - send100dd/send100)", dedup_costs(results)),
            ("snapshot cost per turn (1 - send100/snap / send100/idle)", snapshot_costs(results)),
        ):
            if costs:
                shown = ", ".join(f"{c:.0%}" for c in costs)
                print(f"{label}: {shown}; median {statistics.median(costs):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
