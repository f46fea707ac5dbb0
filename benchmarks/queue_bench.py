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
  e2e         --rate messages per second, one per request, while one long-polling receiver
              takes and acks them: send-to-receive latency (the peer benchmark's W4)
  txn         1-ack-1-send transactions, --txn-workers in flight (needs /v1/transactions)
  txn-consumer  the same transactions shaped like the client's consume_exactly_once: one
              receive loop takes up to the free slots at once, so receives are shared
  memory      fill one queue with --messages 100-byte messages, then report each node's
              resident memory and the latency of single receives
  snapshot    fill one queue with --messages 100-byte messages; the leader writes a
              snapshot (size, time); send100 with and without the leader writing snapshots
              back to back, taking turns twice; (own cluster) a new node joins and is timed
              until it is a voter holding the leader's state
  failover    (own cluster) --trials times each: kill -9, then SIGSTOP, of the leader
              while the client library sends; the time to the first acknowledged send
  publish100  topic appends, 100 records per request to one partition, --batch-concurrency
              in flight (benchmarks/pubsub_workloads.py)
  fetch       --consumers readers each read one partition (--prefill records) from offset
              0, 1,000 records per request, over and over: served from applied state
  fanout10    100 messages per request to a fanout exchange bound to 10 queues,
              --batch-concurrency in flight (each message lands in all 10)

Beside other systems: `make compare` runs NATS JetStream, RabbitMQ and raftq through the
same workloads, taking turns (../shared/bench/peers); `python -m benchmarks.ab` compares
two node configurations of raftq in one run.

Load: 64 requests (or consumers) in flight for send1, send100 and recvack, the issue's
figure for send1, and 32 transaction workers. On 3 nodes sharing 2 cores that saturates
the cluster, so each rate is what the cluster can take, and the latencies are those at that
load (lower concurrency gives lower latency and, below saturation, a lower rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from typing import Any

import aiohttp
import structlog

from benchmarks import failover, pubsub_workloads
from benchmarks.lean_http import LeanHttp
from benchmarks.process_probe import CpuProbe, has_proc
from benchmarks.queue_workloads import SNAP_BUSY, SNAP_IDLE, Bench, Result
from cluster.launcher import LocalCluster
from common.progress import Bar

WORKLOADS = (
    "send1",
    "send100",
    "send100dd",
    "recvack",
    "consume",
    "consume-eo",
    "e2e",
    "txn",
    "txn-consumer",
    "memory",
    "snapshot",
    "failover",
    "publish100",
    "fetch",
    "fanout10",
)
PEERS_HELP = """raftq beside its peers: `make compare` (from the project root) installs NATS
JetStream 2.15 and RabbitMQ once (../shared/bench/peers/setup.sh, as root), then runs the
shared workloads W1-W4 against each, taking turns for 3 rounds, with raftq over HTTP and
through its own client (benchmarks/peer_adapter.py), and prints each system's ratio to
JetStream. PEERS="nats215-always rabbit" and BENCH_ARGS (e.g. "--n1 2000 --n2 10000
--n4 500") are passed through; see ../shared/bench/peers/README.md."""
DEFAULT_SET = ("send1", "send100", "send100dd", "recvack", "txn")


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
    probe = CpuProbe(cluster, leader_url) if cluster is not None and has_proc() else None
    bench = Bench(leader_url, http, args.duration, probe, servers)
    try:
        results = []
        with Bar(args.rounds * len(args.workloads), args.progress) as bar:
            for rnd in range(args.rounds):
                for name in args.workloads:
                    bar.step(f"round {rnd + 1}/{args.rounds} {name}")
                    if name == "failover":
                        assert cluster is not None  # main() refuses failover with --servers
                        results.extend(await failover.measure(cluster, args.trials))
                    elif name == "snapshot":
                        results.extend(
                            await bench.snapshot(args.messages, cluster, args.batch_concurrency)
                        )
                    else:
                        results.append(await _run_one(bench, args, name, cluster))
                    bar.advance()
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
    if name == "e2e":
        return await bench.e2e(args.rate)
    if name in ("consume", "consume-eo"):
        return await bench.consume(args.consumers, args.prefill, name == "consume-eo")
    if name in ("txn", "txn-consumer"):
        run = bench.txn if name == "txn" else bench.txn_consumer
        try:
            return await run(args.txn_workers, args.prefill)
        except RuntimeError as exc:
            return Result(name, 0, 0, 0, [], 1, f"unavailable: {exc}"[:80])
    if name == "publish100":
        return await pubsub_workloads.publish100(bench, args.batch_concurrency)
    if name == "fanout10":
        return await pubsub_workloads.fanout10(bench, args.batch_concurrency)
    if name == "fetch":
        return await pubsub_workloads.fetch(bench, args.consumers, args.prefill)
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
    p.add_argument("--rate", type=int, default=500, help="e2e: messages sent per second")
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
    p.add_argument("--trials", type=int, default=5, help="failover: trials of each fault")
    p.add_argument(
        "--peers",
        action="store_true",
        help="say how to run these workloads beside NATS JetStream and RabbitMQ, and exit",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal)",
    )
    return p


def logs_to_stderr() -> None:
    """Results go to stdout (`--json` must parse); the launcher's log lines to stderr.

    The stream is looked up at each log call, so a replaced sys.stderr (tests) is honoured.
    """
    if not structlog.is_configured():
        structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(sys.stderr))


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.peers:
        print(PEERS_HELP)
        return 0
    logs_to_stderr()
    args.workloads = args.workloads or list(DEFAULT_SET)
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if "failover" in args.workloads and args.servers:
        p.error("failover kills and stops nodes: it needs the bench's own cluster (no --servers)")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    cluster = None
    tmp = None
    if args.servers:
        servers = [s.strip().rstrip("/") for s in args.servers.split(",") if s.strip()]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="raftq-bench-")
        extra = ("--log-level", "warning") + (("--unsafe-no-fsync",) if args.no_fsync else ())
        if args.snapshot_trailing is not None:
            extra += ("--snapshot-trailing", str(args.snapshot_trailing))
        cluster = LocalCluster.on_free_ports(args.nodes, tmp.name, extra)
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
